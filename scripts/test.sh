#!/usr/bin/env bash
# The project's test command (README.md, and .ci/run calls exactly this): installs the
# third-party clients the tests drive, checks formatting, lints, the crypto provider
# rule (ring only, no aws-lc), then runs every test. Tests that need root (network
# namespaces, port 67) run too: run this as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== no aws-lc in the dependency tree"
if cargo tree --workspace --locked -i aws-lc-rs >/dev/null 2>&1; then
  echo "aws-lc-rs is in the dependency tree: turn off the default features that pull it in" >&2
  exit 1
fi
echo "== tests"
cargo nextest run --workspace --locked --no-fail-fast --profile ci "$@"
