"""Record the experiment's measurements in a forgetguard run history: one run per measured candidate.

    python experiments/rl_razor/to_history.py --base SmolLM2-135M-Instruct.Q4_1.gguf --history history.sqlite \
        [--task arith|json|all] [--seed 0 --seed 1 ... | --all-seeds]

Each results/<candidate>.json (measured by evaluate.py with forgetguard's API) becomes one run whose
checks carry the measured numbers under the names and series the example suites use:

- ``arith-kl``: forward KL on the 64 held-out chat prompts (data/kl_prompts.jsonl), sampled from the
  base, 32 new tokens, seed 1234 (evaluate.py's settings); the second task's candidates (``--task
  json``) carry ``json-kl`` instead, on its own KL prompts (data/json_kl_prompts.jsonl): another
  series, so the plugin calibrates each task apart;
- ``code-perplexity`` and ``prose-perplexity``: the bits-per-byte drop on fg_code_ppl and fg_prose_ppl;
- ``facts``: fg_capitals and fg_elements pooled (302 right/wrong items: the pooled drop is exactly
  (lost - gained) / 302 from each probe's paired counts).

By default only the first task's seed-0 candidates are recorded (the demo's history); ``--task`` and
``--seed``/``--all-seeds`` add the others (transfer.py's history). Every number is a measurement;
nothing here is estimated or made up. The series are computed the way the plugin computes them (from the prompts' token ids, the tasks' configurations and data, and the
base's content), so a suite run on the same base with the same checks lands in the same series and
its forecasts are calibrated on these candidates. A candidate whose adapter is committed
(adapters/sft, adapters/rl) is recorded under that adapter's content fingerprint, so a forecast for it
leaves its own measurement out. Run ids are derived from the results files: recording twice adds
nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SEED = 1234  # evaluate.py's Forgetguard(seed=1234)
RUN_NAMESPACE = uuid.UUID("5f0c1f5e-6c2a-4d49-9a39-1d7f0c5e0b2a")


KL_CHECK = {"arith": "arith-kl", "json": "json-kl"}  # each task's KL check, by task


def _series(base: Any) -> dict[str, str]:
    """The series of the checks (both tasks' KL checks), computed by the plugin's own functions for this base."""
    from pytest_forgetguard.checks.kl import kl_series
    from pytest_forgetguard.lmeval import series_key
    from pytest_forgetguard.models import embedding_rows
    from pytest_forgetguard.prompts import encode_prompt, load_prompts

    tok = base.tokenizer
    settings = {"dtype": base.dtype, "device": base.device_class}

    def kl(task: str) -> str:
        prompt_ids = [encode_prompt(tok, r) for r in load_prompts(common.task_module(task).KL_PROMPTS)]
        return kl_series(
            base, prompt_ids, None, "forward", "base", common.MAX_NEW_TOKENS, 1.0, SEED, embedding_rows(base)
        )

    def retention(tasks: list[str], metric: str) -> str:
        return series_key(base, tasks, None, None, None, SEED, False, "hf", settings, metric, None)

    return {
        **{check: kl(task) for task, check in KL_CHECK.items()},
        "code-perplexity": retention(["fg_code_ppl"], "bits_per_byte"),
        "prose-perplexity": retention(["fg_prose_ppl"], "bits_per_byte"),
        "facts": retention(["fg_capitals", "fg_elements"], "acc"),
    }


def _allowances() -> dict[str, Any]:
    """Each retention check's allowance as the example suites declare it (a function of the base's score)."""
    from pytest_forgetguard.evidence.verdicts import allowance_for
    from pytest_forgetguard.suite import load_suite

    out = {}
    for path in sorted((common.REPO / "example_suites").glob("forgetguard_*.yaml")):
        for check in load_suite(path).checks:
            if check.kind == "retention":
                o = check.options
                out[check.name] = lambda b, o=o: allowance_for(b, o.get("max_drop"), o.get("max_drop_relative"))
    return out


def _records(
    row: dict[str, Any],
    series: dict[str, str],
    base_info: dict[str, Any],
    cand_info: dict[str, Any],
    source: str,
    allowances: dict[str, Any],
) -> list[Any]:
    from pytest_forgetguard.records import CheckRecord

    spec = cand_info["spec"]

    def rec(**kw: Any) -> CheckRecord:
        details = kw.pop("details")
        details.update(series=series[kw["name"]], source=source)
        # A retention verdict is the suite's gate applied to the measured drop; under the "significant"
        # gate (facts) a drop within the allowance passes whatever its CI, and no drop here exceeds it.
        # The experiment declared no KL budget: its KL rows are measurements without a verdict.
        passed = kw.get("budget") is None or details["drop"] <= kw["budget"]
        if not passed and details.get("gate") == "significant":
            raise SystemExit(f"{spec} {kw['name']}: a drop beyond the allowance needs its CI for the significant gate")
        return CheckRecord(candidate=spec, passed=passed, base_info=base_info, candidate_info=cand_info,
                           details=details, **kw)  # fmt: skip

    kl = row["kl_forward"]
    out = [
        rec(
            name=KL_CHECK[row.get("task", "arith")],
            kind="kl",
            metric="kl_forward_mean",
            value=kl["per_token"],
            ci_low=kl["ci"][0],
            ci_high=kl["ci"][1],
            n=kl["n_prompts"],
            details={
                "n_tokens": kl["n_tokens"],
                "sample_from": "base",
                "kl_forward_mean": kl["forward_per_token"],
                "kl_reverse_mean": kl["reverse_per_token"],
                "top1_agreement": kl["top1_agreement"],
            },
        )  # fmt: skip
    ]
    for name, task in (("code-perplexity", "fg_code_ppl"), ("prose-perplexity", "fg_prose_ppl")):
        p = row["probes"][task]
        out.append(
            rec(
                name=name,
                kind="retention",
                metric=p["metric"],
                value=p["candidate"],
                base_value=p["base"],
                candidate_value=p["candidate"],
                delta=p["candidate"] - p["base"],
                n=p["n"],
                budget=allowances[name](p["base"]),
                details={
                    "tasks": [task],
                    "gate": "observed",
                    "drop": p["drop"],
                    "drop_ci": p["drop_ci"],
                    "higher_is_better": False,
                    "decided_by": "measurement",
                },
            )  # fmt: skip
        )
    cap, ele = row["probes"]["fg_capitals"], row["probes"]["fg_elements"]
    n = cap["n"] + ele["n"]
    drop = ((cap["lost"] - cap["gained"]) + (ele["lost"] - ele["gained"])) / n  # paired right/wrong items
    base_value = (cap["base"] * cap["n"] + ele["base"] * ele["n"]) / n
    out.append(
        rec(
            name="facts",
            kind="retention",
            metric="acc",
            value=base_value - drop,
            base_value=base_value,
            candidate_value=base_value - drop,
            delta=-drop,
            n=n,
            budget=allowances["facts"](base_value),
            details={
                "tasks": ["fg_capitals", "fg_elements"],
                "gate": "significant",
                "drop": drop,
                "lost": cap["lost"] + ele["lost"],
                "gained": cap["gained"] + ele["gained"],
                "higher_is_better": True,
                "decided_by": "measurement",
            },
        )  # fmt: skip
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the base model SPEC the experiment measured against")
    ap.add_argument("--history", required=True, type=Path, help="the run history to add the runs to")
    ap.add_argument("--cache-dir", type=Path, default=None, help="forgetguard's cache (converted GGUF files)")
    ap.add_argument("--task", default="arith", choices=[*common.TASKS, "all"], help="whose candidates (default arith)")
    ap.add_argument("--seed", type=int, action="append", help="training seeds to record (repeatable; default 0)")
    ap.add_argument("--all-seeds", action="store_true", help="every seed measured")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pytest_forgetguard.history import History, Run
    from pytest_forgetguard.models import ModelStore
    from pytest_forgetguard.settings import default_cache_dir

    store = ModelStore(device="cpu", dtype="float32", cache_dir=args.cache_dir or default_cache_dir())
    base = store.get(args.base, role="base")
    series = _series(base)
    allowances = _allowances()
    base_info = {"spec": base.label, "fingerprint": base.fingerprint}
    committed = {name: common.HERE / "adapters" / kind for kind, name in common.DEMO.items()}
    history = History(args.history)
    added = 0
    # By default the first task's candidates, seed 0: the measurements the example suites' checks and the
    # demo's budget come from.
    seeds = None if args.all_seeds else tuple(args.seed or [0])
    tasks = list(common.TASKS) if args.task == "all" else [args.task]
    results = [p for t in tasks for p in common.measured(task=t, seeds=seeds)]
    for path in results:
        row = json.loads(path.read_text())
        name = row["candidate"]
        if name in committed:
            handle = store.get(str(committed[name]), base=base)
            cand_info = {"spec": str(committed[name].relative_to(common.REPO)), "fingerprint": handle.fingerprint}
        else:
            cand_info = {"spec": f"rl_razor:{name}", "fingerprint": None}  # the adapter is not committed
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        source = str(path.relative_to(common.REPO))
        run = Run(str(uuid.uuid5(RUN_NAMESPACE, f"{name}:{digest}")), path.stat().st_mtime, "", None, source)
        added += history.add_run(run, _records(row, series, base_info, cand_info, source, allowances))
    print(
        f"recorded {added} of {len(results)} measured candidates in {args.history} ({len(results) - added} already there)"
    )


if __name__ == "__main__":
    main()
