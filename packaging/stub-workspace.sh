#!/bin/sh
# Gives every workspace member an empty stand-in source, so that the Dockerfile's first
# build step compiles only the dependencies (from Cargo.toml and Cargo.lock) into a
# layer of their own, reused until a manifest or the lock file changes. Run from the
# workspace root, where the members' Cargo.toml files (and nothing else) were copied.
set -eu
members=$(sed -n 's/^members *= *\[\(.*\)\]/\1/p' Cargo.toml | tr -d '" ' | tr ',' ' ')
[ -n "$members" ] || { echo "stub-workspace.sh: no members = [...] in ./Cargo.toml" >&2; exit 1; }
for m in $members; do
  [ -f "$m/Cargo.toml" ] || { echo "stub-workspace.sh: $m/Cargo.toml is missing" >&2; exit 1; }
  mkdir -p "$m/src"
  [ -e "$m/src/lib.rs" ] || : > "$m/src/lib.rs"
  if grep -q '^\[\[bin\]\]' "$m/Cargo.toml" && [ ! -e "$m/src/main.rs" ]; then
    echo 'fn main() {}' > "$m/src/main.rs"
  fi
done
