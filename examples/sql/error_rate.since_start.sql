-- error_rate over each flag's own window (since its experiment started, for the sequential test), every flag
-- in ONE statement. guardrail puts `guardrail_windows(flag, start_ts, end_ts)` in front of this query: one row
-- per flag, naive UTC timestamps, built from bound parameters. :start is the earliest start_ts and :end the
-- run's end; the `e.ts` bounds on them only let the database skip old events early (an index or partition).
-- Same columns as error_rate.sql; runs on DuckDB and PostgreSQL.
WITH per_unit AS (
  SELECT x.flag, x.variant, x.unit_id,
         SUM(CASE WHEN e.name = 'request' THEN 1 ELSE 0 END) AS requests,
         SUM(CASE WHEN e.name = 'error' THEN 1 ELSE 0 END) AS errors
  FROM guardrail_windows w
  JOIN exposures x ON x.flag = w.flag
  JOIN events e ON e.unit_id = x.unit_id AND e.ts >= x.exposed_at
  WHERE e.ts >= w.start_ts AND e.ts < w.end_ts
    AND e.ts >= :start AND e.ts < :end
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
