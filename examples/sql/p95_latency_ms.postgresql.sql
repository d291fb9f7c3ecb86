-- p95_latency_ms (PostgreSQL): 95th percentile of request latency. PostgreSQL has no approximate
-- quantile built in; percentile_cont sorts each group and spills to disk past work_mem, so its
-- memory stays bounded. Over long windows read it from a rollup (docs/sql.md).
SELECT x.flag, x.variant,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY e.value) AS value,
       COUNT(*) AS count
FROM exposures x
JOIN events e ON e.unit_id = x.unit_id AND e.ts >= x.exposed_at
WHERE e.ts >= :start AND e.ts < :end
  AND e.name = 'request'
GROUP BY x.flag, x.variant
