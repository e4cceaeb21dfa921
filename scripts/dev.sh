#!/usr/bin/env bash
# Starts switchboard (worker + HTTP) on this machine with no provider account:
# the simulation provider is the fallback, and a development encryption key is
# kept in .dev/. Ctrl-C stops it gracefully.
#
# DATABASE_URL and AMQP_URL are honoured: point them at servers you already
# run and nothing is installed. Without them, a local Postgres and RabbitMQ
# are used (installed with apt and started when nothing answers on their
# ports; that part needs root) and the database `switchboard` (or
# $SWITCHBOARD_DEV_DB) is created in the local Postgres.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-services.sh

if [ -z "${DATABASE_URL:-}" ]; then
  db=${SWITCHBOARD_DEV_DB:-switchboard}
  admin=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -d postgres -v "db=$db")
  # The name travels as a psql variable, quoted by psql (:'db' as a literal,
  # :"db" as an identifier), so no name can inject SQL. psql only
  # interpolates variables in scripts, not in -c, hence the here-documents.
  exists=$("${admin[@]}" -tA <<'SQL'
SELECT 1 FROM pg_database WHERE datname = :'db';
SQL
)
  if [ "$exists" != 1 ]; then
    echo "==> creating database $db" >&2
    "${admin[@]}" <<'SQL'
CREATE DATABASE :"db";
SQL
  fi
  # libpq URLs need the name percent-encoded.
  db_in_url=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$db")
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db_in_url
  psql_hint="psql -h 127.0.0.1 -U postgres -d '$db'"
else
  psql_hint="psql \"\$DATABASE_URL\""
fi

if [ -z "${SWITCHBOARD_ENCRYPTION_KEY:-}" ]; then
  # The key decrypts every stored provider secret: the folder and the file
  # are created private (umask) before a byte is written, and the key is
  # written to a temporary name and moved into place, so a half-written key
  # is never used.
  (
    umask 077
    mkdir -p .dev
    chmod 700 .dev
    if [ ! -s .dev/encryption-key ]; then
      head -c 32 /dev/urandom | base64 >.dev/encryption-key.new
      mv .dev/encryption-key.new .dev/encryption-key
    fi
    chmod 600 .dev/encryption-key
  )
  SWITCHBOARD_ENCRYPTION_KEY=$(cat .dev/encryption-key)
fi

export SWITCHBOARD_ENCRYPTION_KEY DATABASE_URL
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export SWITCHBOARD_SIMULATE=${SWITCHBOARD_SIMULATE:-true}
export SWITCHBOARD_HTTP_ADDR=${SWITCHBOARD_HTTP_ADDR:-127.0.0.1:8080}

cargo build --locked --bin switchboard
cat >&2 <<TXT
==> switchboard on http://$SWITCHBOARD_HTTP_ADDR (metrics: /metrics, health: /healthz, /readyz)
    send a job from another terminal (same DATABASE_URL / AMQP_URL):
      echo '{"agent_id":"demo","channel":"sms","to":"+14155550123","text":"hello","category":"transactional"}' | target/debug/switchboard enqueue -
    or with Python / Node: examples/publish.py, examples/publish.js
    then: $psql_hint -c 'SELECT id, status, route, provider FROM outbound_messages'
TXT
exec target/debug/switchboard run
