-- error_rate from the hourly per-unit rollup (unit_hourly.sql): the same columns as ../error_rate.sql.
-- Units are summed over the window's hours first, so the per-unit sums and squares stay per unit.
WITH per_unit AS (
  SELECT flag, variant, unit_id,
         SUM(requests) AS requests,
         SUM(errors) AS errors
  FROM unit_hourly
  WHERE hour >= :start AND hour < :end
  GROUP BY flag, variant, unit_id
  HAVING SUM(requests) + SUM(errors) > 0
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
