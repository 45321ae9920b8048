#!/bin/sh
# Runs once, when the postgres container initialises an empty data volume (docker-entrypoint-initdb.d).
# The server serves requests as msm_app, a login that is neither the tables' owner nor a superuser, so
# PostgreSQL's row-level security applies to every request; the owner (POSTGRES_USER) applies the
# migrations, which grant msm_app its privileges. On a volume initialised before this file existed, run
# the same statement once by hand (ALTER ROLE instead of CREATE ROLE if the migration created it already).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v app_password="$MSM_POSTGRES_APP_PASSWORD" <<'SQL'
CREATE ROLE msm_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD :'app_password';
SQL
