#!/usr/bin/env bash
# Makes sure what switchboard needs on this machine is installed and running:
# a C toolchain, Postgres on 127.0.0.1:5432 reachable as `postgres` without a
# password, and RabbitMQ on 127.0.0.1:5672 with guest/guest. Installs Debian
# packages and starts services only when they are missing; never restarts or
# reconfigures a service that already works.
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    as_root apt-get update -qq
    apt_updated=1
  fi
  log "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
  local port=$1 what=$2
  for _ in $(seq 1 120); do
    port_open "$port" && return 0
    sleep 1
  done
  log "$what did not start listening on 127.0.0.1:$port"
  exit 1
}

# --- Rust toolchain and C compiler -------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
  log "cargo is not installed. switchboard needs Rust 1.92 or newer (edition 2024);"
  log "install it with rustup (https://rustup.rs) and run this again."
  exit 1
fi
command -v cc >/dev/null 2>&1 || apt_install build-essential
command -v pkg-config >/dev/null 2>&1 || apt_install pkg-config

# --- Postgres ------------------------------------------------------------------
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  apt_install postgresql postgresql-client
fi
if ! port_open 5432; then
  log "starting Postgres"
  for version in $(ls /etc/postgresql 2>/dev/null); do
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
  wait_for_port 5432 Postgres
fi
if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
  # A fresh Debian install asks for a password on TCP. This is a local
  # development and test database: let `postgres` in from localhost only.
  hba=$(as_root su postgres -c "psql -tAc 'SHOW hba_file'" | tr -d '[:space:]')
  log "allowing password-less local TCP logins for postgres in $hba"
  as_root sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
  as_root su postgres -c "psql -tAc 'SELECT pg_reload_conf()'" >/dev/null
  psql -h 127.0.0.1 -U postgres -d postgres -tAc 'SELECT 1' >/dev/null
fi

# --- RabbitMQ ------------------------------------------------------------------
if ! command -v rabbitmqctl >/dev/null 2>&1; then
  apt_install rabbitmq-server
fi
if ! port_open 5672; then
  log "starting RabbitMQ"
  as_root rabbitmq-server -detached || as_root service rabbitmq-server start || true
  wait_for_port 5672 RabbitMQ
fi
# The port opens before the broker accepts work; wait until it answers.
for _ in $(seq 1 60); do
  as_root rabbitmqctl -q status >/dev/null 2>&1 && break
  sleep 1
done

log "Postgres and RabbitMQ are up"
