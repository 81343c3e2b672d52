#!/bin/sh
# docker-entrypoint-initdb.d hook of the postgres image (deploy/docker-compose.yml): creates
# seedq's non-superuser roles from deploy/postgres/roles.sql on the first start.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v app_password="$SEEDQ_DB_PASSWORD" -v reader_password="$SEEDQ_READER_PASSWORD" \
    -f /seedq/roles.sql
