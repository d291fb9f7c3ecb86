-- error_rate: errors / requests, a ratio metric analysed per user (DuckDB and PostgreSQL).
-- One row per (flag, variant) for every flag at once. The per-unit sums let the statistics take the
-- variance across users (the delta method), which holds when one user's errors come in bursts.
WITH per_unit AS (
  SELECT x.flag, x.variant, x.unit_id,
         SUM(CASE WHEN e.name = 'request' THEN 1 ELSE 0 END) AS requests,
         SUM(CASE WHEN e.name = 'error' THEN 1 ELSE 0 END) AS errors
  FROM exposures x
  JOIN events e ON e.unit_id = x.unit_id AND e.ts >= x.exposed_at
  WHERE e.ts >= :start AND e.ts < :end
    AND e.name IN ('request', 'error')
  GROUP BY x.flag, x.variant, x.unit_id
)
SELECT flag, variant,
       CAST(SUM(errors) AS DOUBLE PRECISION) / NULLIF(SUM(requests), 0) AS value,
       SUM(requests) AS count,
       COUNT(*) AS units,
       SUM(errors) AS num_sum,
       SUM(errors * errors) AS num_sum_sq,
       SUM(requests) AS den_sum,
       SUM(requests * requests) AS den_sum_sq,
       SUM(errors * requests) AS num_den_sum
FROM per_unit
GROUP BY flag, variant
