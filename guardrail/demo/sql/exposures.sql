-- exposures: randomisation units first exposed per (flag, variant) in the window: the unit counts the
-- sample-ratio check tests against the flag's split (guardrail.srm.metric, default `exposures`).
-- One row per (flag, variant) for every flag at once (DuckDB and PostgreSQL).
SELECT flag, variant,
       CAST(COUNT(DISTINCT unit_id) AS DOUBLE PRECISION) AS value,
       COUNT(DISTINCT unit_id) AS count
FROM exposures
WHERE exposed_at >= :start AND exposed_at < :end
GROUP BY flag, variant
