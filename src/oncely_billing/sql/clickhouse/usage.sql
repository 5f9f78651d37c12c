-- Usage-source queries, ClickHouse dialect: the same text runs on a server (clickhouse-connect)
-- and in-process (chdb). Parameters use ClickHouse's {name:Type} binding.

-- name: schema
CREATE TABLE IF NOT EXISTS traces (
    id         Int64,
    project_id Int64,
    timestamp  DateTime64(3, 'UTC'),
    name       LowCardinality(String)
) ENGINE = MergeTree ORDER BY (project_id, timestamp);
CREATE TABLE IF NOT EXISTS observations (
    id         Int64,
    trace_id   Nullable(Int64),
    project_id Int64,
    start_time DateTime64(3, 'UTC'),
    type       LowCardinality(String)
) ENGINE = MergeTree ORDER BY (project_id, start_time);
CREATE TABLE IF NOT EXISTS scores (
    id         Int64,
    trace_id   Nullable(Int64),
    project_id Int64,
    timestamp  DateTime64(3, 'UTC'),
    name       LowCardinality(String),
    value      Float64
) ENGINE = MergeTree ORDER BY (project_id, timestamp)

-- name: usage_by_project_day
SELECT project_id, toUnixTimestamp(bucket) AS bucket_start,
       toInt64(sum(t)) AS traces, toInt64(sum(o)) AS observations, toInt64(sum(s)) AS scores
FROM (
    SELECT project_id, toStartOfDay(timestamp) AS bucket, count() AS t, 0 AS o, 0 AS s
    FROM traces
    WHERE timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}
    GROUP BY project_id, bucket
    UNION ALL
    SELECT project_id, toStartOfDay(start_time) AS bucket, 0 AS t, count() AS o, 0 AS s
    FROM observations
    WHERE start_time >= {start:DateTime64(3, 'UTC')} AND start_time < {end:DateTime64(3, 'UTC')}
    GROUP BY project_id, bucket
    UNION ALL
    SELECT project_id, toStartOfDay(timestamp) AS bucket, 0 AS t, 0 AS o, count() AS s
    FROM scores
    WHERE timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}
    GROUP BY project_id, bucket
)
GROUP BY project_id, bucket

-- name: usage_by_project_hour
SELECT project_id, toUnixTimestamp(bucket) AS bucket_start,
       toInt64(sum(t)) AS traces, toInt64(sum(o)) AS observations, toInt64(sum(s)) AS scores
FROM (
    SELECT project_id, toStartOfHour(timestamp) AS bucket, count() AS t, 0 AS o, 0 AS s
    FROM traces
    WHERE timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}
    GROUP BY project_id, bucket
    UNION ALL
    SELECT project_id, toStartOfHour(start_time) AS bucket, 0 AS t, count() AS o, 0 AS s
    FROM observations
    WHERE start_time >= {start:DateTime64(3, 'UTC')} AND start_time < {end:DateTime64(3, 'UTC')}
    GROUP BY project_id, bucket
    UNION ALL
    SELECT project_id, toStartOfHour(timestamp) AS bucket, 0 AS t, 0 AS o, count() AS s
    FROM scores
    WHERE timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}
    GROUP BY project_id, bucket
)
GROUP BY project_id, bucket

-- name: insert_parquet
INSERT INTO {table} SELECT * FROM file('{path}', Parquet)
