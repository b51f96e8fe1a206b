#!/usr/bin/env bash
# One command: set up everything the tests need on a fresh Debian machine and run them.
# Lint (ruff), types (mypy), then the unit and integration tests (pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/bootstrap.sh test
say "ruff"; .venv/bin/ruff check router tests
.venv/bin/ruff format --check router tests
say "mypy"; .venv/bin/mypy
say "pytest"
exec .venv/bin/python -m pytest -q "$@"
