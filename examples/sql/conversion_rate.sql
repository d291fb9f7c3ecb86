-- conversion_rate: the share of active users (a request in the window) who bought, a proportion of users
-- (DuckDB and PostgreSQL). count is the number of users: each user is one trial.
WITH per_unit AS (
  SELECT x.flag, x.variant, x.unit_id,
         MAX(CASE WHEN e.name = 'purchase' THEN 1 ELSE 0 END) AS converted
  FROM exposures x
  JOIN events e ON e.unit_id = x.unit_id AND e.ts >= x.exposed_at
  WHERE e.ts >= :start AND e.ts < :end
    AND e.name IN ('request', 'purchase')
  GROUP BY x.flag, x.variant, x.unit_id
  HAVING SUM(CASE WHEN e.name = 'request' THEN 1 ELSE 0 END) > 0
)
SELECT flag, variant,
       AVG(CAST(converted AS DOUBLE PRECISION)) AS value,
       COUNT(*) AS count,
       COUNT(*) AS units,
       SUM(converted) AS unit_sum,
       SUM(converted * converted) AS unit_sum_sq
FROM per_unit
GROUP BY flag, variant
