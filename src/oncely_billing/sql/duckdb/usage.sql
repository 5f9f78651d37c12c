-- Usage-source queries, DuckDB dialect. Events are stored with naive UTC timestamps.

-- name: schema
CREATE TABLE IF NOT EXISTS traces (
    id         BIGINT,
    project_id BIGINT    NOT NULL,
    timestamp  TIMESTAMP NOT NULL,
    name       VARCHAR
);
CREATE TABLE IF NOT EXISTS observations (
    id         BIGINT,
    trace_id   BIGINT,
    project_id BIGINT    NOT NULL,
    start_time TIMESTAMP NOT NULL,
    type       VARCHAR
);
CREATE TABLE IF NOT EXISTS scores (
    id         BIGINT,
    trace_id   BIGINT,
    project_id BIGINT    NOT NULL,
    timestamp  TIMESTAMP NOT NULL,
    name       VARCHAR,
    value      DOUBLE
);

-- name: usage_by_project_day
SELECT project_id, CAST(epoch(CAST(day AS TIMESTAMP)) AS BIGINT) AS bucket,
       CAST(SUM(t) AS BIGINT) AS traces, CAST(SUM(o) AS BIGINT) AS observations,
       CAST(SUM(s) AS BIGINT) AS scores
FROM (
    SELECT project_id, CAST(timestamp AS DATE) AS day, count(*) AS t, 0 AS o, 0 AS s
    FROM traces WHERE timestamp >= $start AND timestamp < $end GROUP BY 1, 2
    UNION ALL
    SELECT project_id, CAST(start_time AS DATE), 0, count(*), 0
    FROM observations WHERE start_time >= $start AND start_time < $end GROUP BY 1, 2
    UNION ALL
    SELECT project_id, CAST(timestamp AS DATE), 0, 0, count(*)
    FROM scores WHERE timestamp >= $start AND timestamp < $end GROUP BY 1, 2
) GROUP BY 1, 2

-- name: usage_by_project_hour
SELECT project_id, CAST(epoch(hour) AS BIGINT) AS bucket,
       CAST(SUM(t) AS BIGINT) AS traces, CAST(SUM(o) AS BIGINT) AS observations,
       CAST(SUM(s) AS BIGINT) AS scores
FROM (
    SELECT project_id, date_trunc('hour', timestamp) AS hour, count(*) AS t, 0 AS o, 0 AS s
    FROM traces WHERE timestamp >= $start AND timestamp < $end GROUP BY 1, 2
    UNION ALL
    SELECT project_id, date_trunc('hour', start_time), 0, count(*), 0
    FROM observations WHERE start_time >= $start AND start_time < $end GROUP BY 1, 2
    UNION ALL
    SELECT project_id, date_trunc('hour', timestamp), 0, 0, count(*)
    FROM scores WHERE timestamp >= $start AND timestamp < $end GROUP BY 1, 2
) GROUP BY 1, 2

-- name: session_setup
SET enable_progress_bar = false
