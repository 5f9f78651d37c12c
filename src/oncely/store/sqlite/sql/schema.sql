-- Bookkeeping of applied migrations (the tables themselves live in store/sqlite/migrations).

-- name: migrations_check_table
SELECT COUNT(*) > 0 AS present FROM sqlite_master
WHERE type = 'table' AND name = 'oncely_schema_migrations';

-- name: migrations_create_table
CREATE TABLE IF NOT EXISTS oncely_schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at REAL NOT NULL
);

-- name: migrations_get_version
SELECT COALESCE(MAX(version), 0) AS version FROM oncely_schema_migrations;

-- name: migrations_delete
DELETE FROM oncely_schema_migrations WHERE version = :version;

-- name: migrations_record
INSERT INTO oncely_schema_migrations (version, name, applied_at)
VALUES (:version, :name, :applied_at);
