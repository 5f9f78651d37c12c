-- Schema bookkeeping and wake-ups. The tables live in the schema the connection's search_path
-- names; store/postgres/migrations holds their definitions.

-- name: migrate_lock
-- Serialises migrators of the same schema for the rest of the transaction.
SELECT pg_advisory_xact_lock(hashtextextended('oncely.migrate.' || %(schema)s, 0));

-- name: schema_check_exists
SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %(schema)s) AS present;

-- name: schema_create
CREATE SCHEMA IF NOT EXISTS {schema};

-- name: migrations_check_table
SELECT to_regclass('oncely_schema_migrations') IS NOT NULL AS present;

-- name: migrations_create_table
CREATE TABLE IF NOT EXISTS oncely_schema_migrations (
    version    INTEGER     PRIMARY KEY,
    name       TEXT        NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL
);

-- name: migrations_get_version
SELECT COALESCE(MAX(version), 0) AS version FROM oncely_schema_migrations;

-- name: migrations_delete
DELETE FROM oncely_schema_migrations WHERE version = %(version)s;

-- name: migrations_record
INSERT INTO oncely_schema_migrations (version, name, applied_at)
VALUES (%(version)s, %(name)s, %(applied_at)s);

-- name: listen
LISTEN oncely_jobs;

-- name: notify_work
-- Delivered at commit. The payload names the schema: the channel is shared by the database.
SELECT pg_notify('oncely_jobs', current_schema() || ':' || %(queue)s);
