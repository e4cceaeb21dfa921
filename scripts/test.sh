#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit tests, and the
# end-to-end tests against the local Postgres and RabbitMQ (each test makes
# its own database and vhost), including the Python and Node publishing
# examples and the deploy-file checks. CI (.ci/run) runs exactly this.
#
# Installs what is missing and nothing else: Postgres and RabbitMQ when
# nothing answers on their ports (apt, needs root; see ensure-services.sh),
# the rustfmt and clippy components (rustup), pika and kubernetes-validate in
# a virtualenv under target/pyenv (PyPI) and amqplib in examples/node_modules
# (npm).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'test.sh: %s\n' "$*" >&2
  exit 1
}

bash scripts/ensure-services.sh --tests

# --- lint: never skipped --------------------------------------------------------
for component in rustfmt clippy; do
  probe=$([ "$component" = rustfmt ] && echo fmt || echo clippy)
  if ! cargo "$probe" --version >/dev/null 2>&1; then
    command -v rustup >/dev/null 2>&1 ||
      die "cargo $probe is missing and there is no rustup to add it: install the $component component"
    log "rustup component add $component"
    rustup component add "$component"
  fi
done
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings

# --- the publishing examples' client libraries -------------------------------------
# tests/deploy.rs runs examples/publish.py with target/pyenv/bin/python and
# examples/publish.js with node; SWITCHBOARD_REQUIRE_EXAMPLES makes those
# tests fail, not skip, when either is missing.
command -v python3 >/dev/null 2>&1 || die "python3 is missing (apt-get install python3 python3-venv)"
if ! target/pyenv/bin/python -c 'import pika' >/dev/null 2>&1; then
  log "installing pika into target/pyenv"
  rm -rf target/pyenv
  python3 -m venv target/pyenv ||
    die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
  target/pyenv/bin/pip install --quiet --disable-pip-version-check 'pika>=1.3,<2'
fi
# tests/deploy.rs validates deploy/kubernetes with it (the Kubernetes schemas
# ship inside the package: no network at test time) and fails without it.
if ! target/pyenv/bin/kubernetes-validate --version >/dev/null 2>&1; then
  log "installing kubernetes-validate into target/pyenv"
  target/pyenv/bin/pip install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0'
fi
command -v node >/dev/null 2>&1 || die "node is missing (apt-get install nodejs npm)"
if ! (cd examples && node -e 'require("amqplib")') >/dev/null 2>&1; then
  log "installing amqplib into examples/node_modules"
  (cd examples && npm install --no-audit --no-fund --no-package-lock --loglevel=error)
fi
export SWITCHBOARD_REQUIRE_EXAMPLES=1

# promtool (Debian's prometheus package) checks deploy/prometheus/*.yml; the
# package's service is not started. Installed when apt and root are at hand,
# otherwise tests/deploy.rs skips that one check and says so.
if ! command -v promtool >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    log "installing promtool (apt package prometheus)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null ||
      log "could not install prometheus: promtool checks are skipped"
  else
    log "promtool is not installed (apt-get install prometheus, as root): promtool checks are skipped"
  fi
fi

# Build every test binary once, then run them all from that build.
cargo test --locked --all-targets --no-run
cargo test --locked --all-targets
