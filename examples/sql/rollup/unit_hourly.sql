-- A per-unit rollup for large tables (DuckDB and PostgreSQL): one row per (flag, variant, unit, hour).
-- Guardrail queries then read hours instead of raw events: a 14-day since-start window over 10 M events
-- becomes a scan of the units' hourly rows. Rebuild or append the last hours from cron, before guardrail
-- runs (docs/sql.md shows both); windows read from it must be whole hours.
CREATE TABLE unit_hourly AS
SELECT x.flag, x.variant, x.unit_id,
       date_trunc('hour', e.ts) AS hour,
       SUM(CASE WHEN e.name = 'request' THEN 1 ELSE 0 END) AS requests,
       SUM(CASE WHEN e.name = 'error' THEN 1 ELSE 0 END) AS errors,
       SUM(CASE WHEN e.name = 'purchase' THEN 1 ELSE 0 END) AS purchases,
       SUM(CASE WHEN e.name = 'purchase' THEN e.value ELSE 0 END) AS revenue
FROM exposures x
JOIN events e ON e.unit_id = x.unit_id AND e.ts >= x.exposed_at
WHERE e.name IN ('request', 'error', 'purchase')
GROUP BY x.flag, x.variant, x.unit_id, date_trunc('hour', e.ts)
