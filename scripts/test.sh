#!/usr/bin/env bash
# Runs every test. Installs what the tests need when it is missing: openssl, curl and g++ (Debian
# packages), and the py-consul client in .venv (PyPI), so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# libfuzzer-sys (fuzz/) builds libFuzzer from C++ source.
command -v c++ >/dev/null 2>&1 || missing+=(g++)
if ! command -v python3 >/dev/null 2>&1; then
  missing+=(python3 python3-venv)
elif [ ! -x .venv/bin/python ] && ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  # Debian ships venv's pip bootstrap separately; without it `python3 -m venv` fails.
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}"
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq "${missing[@]}"
  fi
fi

if ! .venv/bin/python -c 'import consul' >/dev/null 2>&1; then
  echo "installing py-consul into .venv" >&2
  python3 -m venv .venv || { rm -rf .venv; python3 -m pip install -q --user virtualenv && python3 -m virtualenv -q .venv; }
  .venv/bin/python -m pip install -q --disable-pip-version-check 'py-consul==1.8.0'
fi
export PY_CONSUL_PYTHON="$PWD/.venv/bin/python"

cargo test --workspace --all-targets "$@"
cargo test --workspace --doc "$@"
# The cargo-fuzz targets are a workspace of their own (fuzz/README.md runs them); keep them
# compiling. Their findings are replayed by tests/fuzz_regressions.rs above.
cargo check --manifest-path fuzz/Cargo.toml --all-targets
