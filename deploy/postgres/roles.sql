-- seedq's PostgreSQL roles: run ONCE, as an administrator (a superuser), before the first
-- `seedq db upgrade`. Neither role is a superuser:
--   seedq         the service (workers, submit, status, results, db upgrade): owns the
--                 database and seedq's tables, nothing else.
--   seedq_reader  `seedq query` (SEEDQ_QUERY_DATABASE_URL): SELECT on seedq's tables only,
--                 granted by every `seedq db upgrade`. No server files, no programs, no other
--                 sessions, no replication, no configuration.
-- psql -v app_password="..." -v reader_password="..." -f deploy/postgres/roles.sql
\set ON_ERROR_STOP on
SELECT format('CREATE ROLE seedq LOGIN PASSWORD %L NOSUPERUSER NOCREATEDB NOCREATEROLE '
              'NOREPLICATION NOBYPASSRLS', :'app_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'seedq') \gexec
SELECT format('CREATE ROLE seedq_reader LOGIN PASSWORD %L NOSUPERUSER NOCREATEDB '
              'NOCREATEROLE NOREPLICATION NOBYPASSRLS', :'reader_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'seedq_reader') \gexec
SELECT 'CREATE DATABASE seedq OWNER seedq'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'seedq') \gexec
\connect seedq
-- PostgreSQL 15+: the database owner (seedq) owns schema public through pg_database_owner.
-- Older servers: hand it over explicitly.
ALTER SCHEMA public OWNER TO seedq;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT CONNECT ON DATABASE seedq TO seedq_reader;
