#!/usr/bin/env bash
# The project's tests: sets up .venv if needed, then runs pytest (unit + integration, real model included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
