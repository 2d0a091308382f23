-- Bodycam database bootstrap. Mounted into /docker-entrypoint-initdb.d/ of the postgres
-- service; runs ONCE, as the superuser, when the data volume is empty. Later password
-- changes are ALTER ROLE ... PASSWORD, plus the matching edit of infra/.env.
--
-- Roles:
--   bodycam_owner  owns the database and every table; `bodycam migrate` connects as it
--                  (MIGRATE_DATABASE_URL). Not a superuser.
--   bodycam_app    what api connects as (BODYCAM_DATABASE_URL): reads and writes rows, runs
--                  no DDL, and can never UPDATE, DELETE or TRUNCATE audit_log.
--   bodycam_worker what the workers and beat connect as (WORKER_DATABASE_URL): the same,
--                  less the account tables and functions, and read-only on what the server
--                  alone decides (`bodycam migrate` grants both roles: bodycam.db).
-- Passwords come from the container environment (\getenv needs psql 15+; pg17 has it).

\set ON_ERROR_STOP on

\getenv owner_password POSTGRES_OWNER_PASSWORD
\getenv app_password POSTGRES_APP_PASSWORD
\getenv worker_password POSTGRES_WORKER_PASSWORD
\if :{?owner_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'POSTGRES_OWNER_PASSWORD is not set in the postgres container'; END $$;
\endif
\if :{?app_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'POSTGRES_APP_PASSWORD is not set in the postgres container'; END $$;
\endif
\if :{?worker_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'POSTGRES_WORKER_PASSWORD is not set in the postgres container'; END $$;
\endif

CREATE ROLE bodycam_owner LOGIN PASSWORD :'owner_password';
CREATE ROLE bodycam_app LOGIN PASSWORD :'app_password';
CREATE ROLE bodycam_worker LOGIN PASSWORD :'worker_password';

CREATE DATABASE bodycam OWNER bodycam_owner;
REVOKE ALL ON DATABASE bodycam FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE bodycam TO bodycam_app;
GRANT CONNECT, TEMPORARY ON DATABASE bodycam TO bodycam_worker;

\connect bodycam

-- The extension needs a superuser; migrations may still say CREATE EXTENSION IF NOT EXISTS.
CREATE EXTENSION IF NOT EXISTS vector;

-- Only the owner creates objects (PostgreSQL 15+ already revokes CREATE on public from PUBLIC).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO bodycam_app, bodycam_worker;

-- Whatever the owner creates later (tables, sequences, schemas) is usable by the app role.
-- (bodycam_worker has no default privileges: `bodycam migrate` grants it table by table.)
ALTER DEFAULT PRIVILEGES FOR ROLE bodycam_owner
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO bodycam_app;
ALTER DEFAULT PRIVILEGES FOR ROLE bodycam_owner
    GRANT USAGE, SELECT ON SEQUENCES TO bodycam_app;
ALTER DEFAULT PRIVILEGES FOR ROLE bodycam_owner
    GRANT USAGE ON SCHEMAS TO bodycam_app;

-- audit_log is append-only for the app role. The default privileges above would grant it
-- UPDATE and DELETE, so after any DDL or GRANT that could touch audit_log, take them back.
-- The REVOKE runs as the role that ran the DDL: bodycam_owner, which owns the table.
CREATE FUNCTION public.bodycam_audit_log_append_only() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    rel regclass;
BEGIN
    FOR rel IN
        SELECT c.oid::regclass
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relname = 'audit_log'
          AND c.relkind IN ('r', 'p')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
    LOOP
        EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON %s FROM bodycam_app, bodycam_worker',
                       rel);
    END LOOP;
END;
$$;

CREATE EVENT TRIGGER bodycam_audit_log_append_only ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'ALTER TABLE', 'GRANT')
    EXECUTE FUNCTION public.bodycam_audit_log_append_only();
