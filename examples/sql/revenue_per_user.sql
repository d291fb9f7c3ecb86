-- revenue_per_user: mean purchase amount per active user, zeros included: a mean over users
-- (DuckDB and PostgreSQL). stddev is taken across users, the unit of randomisation.
WITH per_unit AS (
  SELECT x.flag, x.variant, x.unit_id,
         SUM(CASE WHEN e.name = 'purchase' THEN e.value ELSE 0 END) AS revenue
  FROM exposures x
  JOIN events e ON e.unit_id = x.unit_id AND e.ts >= x.exposed_at
  WHERE e.ts >= :start AND e.ts < :end
    AND e.name IN ('request', 'purchase')
  GROUP BY x.flag, x.variant, x.unit_id
)
SELECT flag, variant,
       AVG(revenue) AS value,
       COUNT(*) AS count,
       STDDEV_SAMP(revenue) AS stddev,
       COUNT(*) AS units,
       SUM(revenue) AS unit_sum,
       SUM(revenue * revenue) AS unit_sum_sq
FROM per_unit
GROUP BY flag, variant
