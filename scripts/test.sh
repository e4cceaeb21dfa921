#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit tests, and the
# end-to-end tests against the local Postgres and RabbitMQ (each test makes
# its own database and vhost). Installs or starts the services when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-services.sh

if [ ! -f ../shared/specs/twilio_api_v2010.json ]; then
  echo "tests check provider requests against ../shared/specs: check out shared/ beside this repository" >&2
  exit 1
fi

if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
else
  echo "==> rustfmt is not installed (rustup component add rustfmt): skipping the format check" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --locked --all-targets -- -D warnings
else
  echo "==> clippy is not installed (rustup component add clippy): skipping lints" >&2
fi
# Build every test binary once, then run them all from that build.
cargo test --locked --all-targets --no-run
cargo test --locked --all-targets
