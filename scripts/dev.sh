#!/usr/bin/env bash
# Starts switchboard (worker + HTTP) on this machine with no accounts needed:
# local Postgres and RabbitMQ (installed and started when missing), the
# simulation provider as the fallback, and a development encryption key kept
# in .dev/. Ctrl-C stops it gracefully.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-services.sh

db=${SWITCHBOARD_DEV_DB:-switchboard}
if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
  echo "==> creating database $db" >&2
  psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"$db\""
fi

mkdir -p .dev
if [ -z "${SWITCHBOARD_ENCRYPTION_KEY:-}" ]; then
  [ -s .dev/encryption-key ] || head -c 32 /dev/urandom | base64 > .dev/encryption-key
  chmod 600 .dev/encryption-key
  SWITCHBOARD_ENCRYPTION_KEY=$(cat .dev/encryption-key)
fi

export SWITCHBOARD_ENCRYPTION_KEY
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/$db}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export SWITCHBOARD_SIMULATE=${SWITCHBOARD_SIMULATE:-true}
export SWITCHBOARD_HTTP_ADDR=${SWITCHBOARD_HTTP_ADDR:-127.0.0.1:8080}

cargo build --locked --bin switchboard
cat >&2 <<TXT
==> switchboard on http://$SWITCHBOARD_HTTP_ADDR (metrics: /metrics, health: /healthz, /readyz)
    send a job from another terminal:
      echo '{"agent_id":"demo","channel":"sms","to":"+14155550123","text":"hello","category":"transactional"}' | target/debug/switchboard enqueue -
    then: psql -h 127.0.0.1 -U postgres $db -c 'SELECT id, status, route, provider FROM outbound_messages'
TXT
exec target/debug/switchboard run
