#!/usr/bin/env bash
# Makes sure the Postgres and RabbitMQ that switchboard will talk to answer,
# installing (apt) and starting local ones only when nothing answers.
#
#   bash scripts/ensure-services.sh           # for `switchboard` itself (dev.sh)
#   bash scripts/ensure-services.sh --tests   # for the test suite (test.sh)
#
# Without --tests, DATABASE_URL and AMQP_URL are honoured: when they point at
# a server that answers, nothing is installed or started; when they point at
# another machine that does not answer, this fails instead of installing a
# local server nobody asked for.
#
# With --tests, the services are the ones the end-to-end tests use, whatever
# DATABASE_URL says: Postgres on 127.0.0.1:5432 as `postgres` without a
# password (each test creates and drops its own database) and RabbitMQ on
# 127.0.0.1:5672 as guest/guest with `rabbitmqctl` on this machine (each test
# creates and deletes its own vhost).
#
# Services are detected by their port, not by whether a command is installed.
# A service that answers is never restarted or reconfigured; in particular
# pg_hba.conf is never touched here. Installing packages and starting
# services needs root: as root it just runs; otherwise it says which command
# needs root and uses sudo when there is one, or stops and says so.
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'ensure-services: %s\n' "$*" >&2
  exit 1
}

mode=run
case "${1:-}" in
  --tests) mode=tests ;;
  "") ;;
  *) die "unknown argument $1 (only --tests)" ;;
esac

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    log "needs root, running with sudo: $*"
    sudo "$@"
  else
    die "needs root to run \`$*\`, and sudo is not installed: run this script as root, or do that step yourself and run it again"
  fi
}

apt_updated=""
apt_install() {
  command -v apt-get >/dev/null 2>&1 ||
    die "$* is missing and this is not a Debian-like system (no apt-get): install it yourself and run this again"
  if [ -z "$apt_updated" ]; then
    log "apt-get update (needs root)"
    as_root apt-get update -qq
    apt_updated=1
  fi
  log "installing $* (needs root)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# port_open HOST PORT: something accepts TCP connections there.
port_open() { timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

wait_for_port() {
  local host=$1 port=$2 what=$3
  for _ in $(seq 1 60); do
    port_open "$host" "$port" && return 0
    sleep 1
  done
  die "$what did not start listening on $host:$port within 60 s"
}

is_local() { case "$1" in 127.* | localhost | ::1 | "") return 0 ;; *) return 1 ;; esac }

# url_host_port URL DEFAULT_PORT: prints "host port" of a postgres:// or
# amqp:// URL (user info, path and query dropped; [v6] brackets removed).
url_host_port() {
  local rest=${1#*://} hostport host port
  rest=${rest%%/*}
  rest=${rest%%\?*}
  hostport=${rest##*@}
  if [[ $hostport == \[* ]]; then
    host=${hostport%%]*}
    host=${host#[}
    port=${hostport##*]}
    port=${port#:}
  else
    host=${hostport%%:*}
    port=${hostport#"$host"}
    port=${port#:}
  fi
  printf '%s %s\n' "${host:-127.0.0.1}" "${port:-$2}"
}

# --- Rust toolchain and C compiler ---------------------------------------------
command -v cargo >/dev/null 2>&1 ||
  die "cargo is not installed. switchboard needs Rust 1.92 or newer (edition 2024): install it with rustup (https://rustup.rs) and run this again"
command -v cc >/dev/null 2>&1 || apt_install build-essential

# --- Postgres ---------------------------------------------------------------------
if [ "$mode" = tests ] || [ -z "${DATABASE_URL:-}" ]; then
  pg_url=postgres://postgres@127.0.0.1:5432/postgres
  pg_host=127.0.0.1 pg_port=5432
else
  pg_url=$DATABASE_URL
  read -r pg_host pg_port < <(url_host_port "$DATABASE_URL" 5432)
fi
# The tests drop their databases with psql, and dev.sh creates one with it.
command -v psql >/dev/null 2>&1 || apt_install postgresql-client

pg_installed_now=""
if port_open "$pg_host" "$pg_port"; then
  log "Postgres answers on $pg_host:$pg_port"
elif ! is_local "$pg_host"; then
  die "DATABASE_URL points at $pg_host:$pg_port, which does not answer. Start that server (or unset DATABASE_URL for a local one); nothing was installed"
else
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql
    pg_installed_now=1
  fi
  log "starting Postgres (needs root)"
  for version in $(ls /etc/postgresql); do
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
  wait_for_port "$pg_host" "$pg_port" Postgres
  [ "$pg_port" = 5432 ] ||
    die "a local Postgres was started, but DATABASE_URL asks for port $pg_port: configure that cluster's port yourself"
fi

if ! psql "$pg_url" -tAc 'SELECT 1' >/dev/null 2>&1; then
  if [ "$mode" = tests ] && [ -n "$pg_installed_now" ] && [ "${SWITCHBOARD_TEST_PG_TRUST:-}" = 1 ]; then
    # Only on a cluster this run installed, and only when asked: the tests
    # connect as `postgres` without a password, which TCP can only allow
    # with `trust`. Scoped to that role from 127.0.0.1 over IPv4; it still
    # lets any local user act as the superuser, so it is for disposable
    # CI and development machines only.
    hba=$(as_root su postgres -c "psql -tAc 'SHOW hba_file'" | tr -d '[:space:]')
    log "SWITCHBOARD_TEST_PG_TRUST=1: adding 'host all postgres 127.0.0.1/32 trust' to the new cluster's $hba"
    as_root sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
    as_root su postgres -c "psql -tAc 'SELECT pg_reload_conf()'" >/dev/null
    sleep 1
    psql "$pg_url" -tAc 'SELECT 1' >/dev/null || die "Postgres still refuses $pg_url"
  elif [ "$mode" = tests ]; then
    die "Postgres on 127.0.0.1:5432 refuses 'postgres' without a password, which the tests use (they create and drop a database each).
  This script never changes the authentication of an existing Postgres. On a disposable machine, add
      host all postgres 127.0.0.1/32 trust
  at the top of pg_hba.conf (psql -tAc 'SHOW hba_file' as the postgres user) and reload; note that it lets every
  local user connect as the superuser. On a Postgres this script has just installed, SWITCHBOARD_TEST_PG_TRUST=1 does that for you."
  else
    psql "$pg_url" -tAc 'SELECT 1' 2>&1 | head -3 >&2 || true
    die "Postgres answers on $pg_host:$pg_port but refuses the login $([ -n "${DATABASE_URL:-}" ] && echo "in DATABASE_URL" || echo "as postgres without a password"): set DATABASE_URL to a role that can log in (postgres://user:password@host/db). This script never changes Postgres authentication"
  fi
fi

# --- RabbitMQ ---------------------------------------------------------------------
if [ "$mode" = tests ] || [ -z "${AMQP_URL:-}" ]; then
  mq_host=127.0.0.1 mq_port=5672
else
  read -r mq_host mq_port < <(url_host_port "$AMQP_URL" 5672)
fi

if port_open "$mq_host" "$mq_port"; then
  log "RabbitMQ answers on $mq_host:$mq_port"
elif ! is_local "$mq_host"; then
  die "AMQP_URL points at $mq_host:$mq_port, which does not answer. Start that broker (or unset AMQP_URL for a local one); nothing was installed"
else
  command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || apt_install rabbitmq-server
  log "starting RabbitMQ (needs root)"
  as_root rabbitmq-server -detached || as_root service rabbitmq-server start ||
    die "RabbitMQ could not be started: see /var/log/rabbitmq/"
  wait_for_port "$mq_host" "$mq_port" RabbitMQ
fi

if is_local "$mq_host"; then
  # The tests make a vhost each with rabbitmqctl, which must be on this machine.
  if ! command -v rabbitmqctl >/dev/null 2>&1; then
    [ "$mode" = tests ] && die "RabbitMQ answers on $mq_host:$mq_port but rabbitmqctl is not installed here; the tests need it (package rabbitmq-server)"
  else
    # The port opens before the broker accepts work: wait until it says it
    # has booted, and fail if it never does. rabbitmqctl needs the node's
    # Erlang cookie (root or the rabbitmq user), as the tests do.
    if ! rabbitmqctl -q await_startup --timeout 60 >/dev/null 2>&1 &&
      ! rabbitmqctl -q status >/dev/null 2>&1; then
      die "RabbitMQ listens on $mq_host:$mq_port but \`rabbitmqctl status\` fails after 60 s: the broker is not ready (see /var/log/rabbitmq/), or this user cannot read its Erlang cookie (run as root)"
    fi
  fi
fi

log "Postgres ($pg_host:$pg_port) and RabbitMQ ($mq_host:$mq_port) are up"
