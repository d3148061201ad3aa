"""``forgetguard compare`` on lm-eval --log_samples files: verdicts, exit codes, and every bad input."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from pytest_forgetguard.cli import main

DATE = "2026-12-03T10-11-12.123456"


def sample_line(doc_id: int, metrics: dict, filter_: str = "none", text: str | None = None) -> dict:
    """One line as lm-eval's EvaluationTracker writes it (the fields forgetguard reads, and the rest)."""
    doc = {"question": text or f"question {doc_id}", "answer": "A"}
    return {
        "doc_id": doc_id,
        "doc": doc,
        "target": "A",
        "arguments": {"gen_args_0": {"arg_0": doc["question"], "arg_1": " A"}},
        "resps": [[["-1.5", "False"]]],
        "filtered_resps": [["-1.5", "False"]],
        "filter": filter_,
        "metrics": list(metrics),
        "doc_hash": hashlib.sha256(json.dumps(doc, indent=2).encode()).hexdigest(),
        "prompt_hash": "p",
        "target_hash": "t",
        **metrics,
    }


def write_samples(folder: Path, task: str, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"samples_{task}_{DATE}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def acc_rows(values) -> list[dict]:
    return [sample_line(i, {"acc": float(v)}) for i, v in enumerate(values)]


def paired_acc(tmp_path: Path, n: int, lost: int, gained: int, base_right: int, task: str = "qa") -> tuple[Path, Path]:
    base = np.zeros(n)
    base[:base_right] = 1
    cand = base.copy()
    cand[:lost] = 0
    cand[base_right : base_right + gained] = 1
    return (
        write_samples(tmp_path / "base", task, acc_rows(base)),
        write_samples(tmp_path / "cand", task, acc_rows(cand)),
    )


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_pass_fail_and_inconclusive_have_their_exit_codes(tmp_path, capsys):
    b, c = paired_acc(tmp_path / "p", 400, 3, 4, 280)
    code, out, _ = run(capsys, "compare", b, c, "--max-drop", "0.05")
    assert code == 0 and "PASS" in out
    b, c = paired_acc(tmp_path / "f", 400, 60, 2, 280)
    code, out, _ = run(capsys, "compare", b, c, "--max-drop", "0.05")
    assert code == 1 and "FAIL" in out
    b, c = paired_acc(tmp_path / "i", 60, 9, 2, 40)
    code, out, _ = run(capsys, "compare", b, c, "--max-drop", "0.05")
    assert code == 3 and "INCONCLUSIVE" in out and "items would decide it" in out
    code, _, err = run(capsys, "compare", b, c, "--max-drop", "0.05", "--on-inconclusive", "pass")
    assert code == 0 and "passed by --on-inconclusive pass" in err


def test_json_rows_carry_the_contract_keys(tmp_path, capsys):
    b, c = paired_acc(tmp_path, 400, 3, 4, 280)
    code, out, _ = run(capsys, "compare", b.parent, c.parent, "--max-drop", "0.05", "--json")
    (row,) = json.loads(out)
    keys = {"task", "metric", "verdict", "drop", "low", "high", "n", "alpha", "allowance", "items_needed"}
    assert code == 0 and keys <= set(row)
    assert (row["task"], row["metric"], row["n"], row["verdict"], row["items_needed"]) == (
        "qa",
        "acc",
        400,
        "pass",
        None,
    )
    assert row["drop"] == pytest.approx(-1 / 400)


def test_directories_are_matched_by_task(tmp_path, capsys):
    for task, lost in (("easy", 0), ("hard", 80)):
        paired_acc(tmp_path, 400, lost, 0, 300, task=task)
    code, out, _ = run(capsys, "compare", tmp_path / "base", tmp_path / "cand", "--max-drop", "0.05", "--json")
    rows = {r["task"]: r["verdict"] for r in json.loads(out)}
    assert code == 1 and rows == {"easy": "pass", "hard": "fail"}


def test_bits_per_byte_pairs_are_a_ratio_of_sums(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 164
    nbytes = rng.integers(100, 2000, n)
    base_ll = -0.73 * math.log(2) * nbytes * rng.uniform(0.8, 1.2, n)
    cand_ll = base_ll * 1.001

    def rows(ll):
        return [sample_line(i, {"bits_per_byte": [float(x), int(y)], "word_perplexity": [float(x), 10]})
                for i, (x, y) in enumerate(zip(ll, nbytes))]  # fmt: skip

    b, c = write_samples(tmp_path / "b", "code", rows(base_ll)), write_samples(tmp_path / "c", "code", rows(cand_ll))
    code, out, _ = run(capsys, "compare", b, c, "--max-drop-relative", "0.03", "--json")
    (row,) = json.loads(out)
    expected = -(cand_ll.sum() - base_ll.sum()) / nbytes.sum() / math.log(2)
    assert code == 0 and row["metric"] == "bits_per_byte" and row["higher_is_better"] is False
    assert row["drop"] == pytest.approx(expected, rel=1e-9)
    assert row["allowance"] == pytest.approx(0.03 * -base_ll.sum() / nbytes.sum() / math.log(2))


BAD = {
    "empty": (lambda p: p.write_text(""), "empty"),
    "truncated": (lambda p: p.write_text(p.read_text()[:-30]), "truncated?"),
    "not json": (lambda p: p.write_text("{not json}\n"), ":1: not JSON"),
    "nan": (lambda p: p.write_text(json.dumps(sample_line(0, {"acc": float("nan")})) + "\n"), "must be finite"),
    "infinity": (lambda p: p.write_text(json.dumps(sample_line(0, {"acc": float("inf")})) + "\n"), "must be finite"),
    "duplicate": (lambda p: p.write_text(p.read_text() + p.read_text().splitlines(True)[0]), "appears twice"),
    "string value": (lambda p: p.write_text(json.dumps(sample_line(0, {"acc": "1"})) + "\n"), "not a number"),
    "no doc_hash": (lambda p: p.write_text(json.dumps({"doc_id": 0, "acc": 1.0}) + "\n"), "no 'doc_hash'"),
    "not utf-8": (lambda p: p.write_bytes(b'{"doc_id": 0, "x": "\xe9"}\n'), "not UTF-8"),
    "other document": (
        lambda p: p.write_text(
            "".join(
                json.dumps(sample_line(i, {"acc": 1.0}, text="changed" if i == 3 else None)) + "\n" for i in range(200)
            )  # fmt: skip
        ),
        "doc_id 3 is a different document",
    ),
    "missing items": (lambda p: p.write_text("".join(p.read_text().splitlines(True)[:150])), "on one side only"),
    "metrics not a list": (
        lambda p: p.write_text(json.dumps({**sample_line(0, {"acc": 1.0}), "metrics": 5}) + "\n"),
        "'metrics' must list the metric names",
    ),
    "huge integer": (
        lambda p: p.write_text(
            json.dumps(sample_line(0, {"acc": 1.0})).replace('"acc": 1.0', '"acc": ' + "9" * 400) + "\n"
        ),
        "an integer of 400 digits",
    ),
    "corpus metric": (
        lambda p: p.write_text(json.dumps(sample_line(0, {"acc": ["a", "b", "c"]})) + "\n"),
        "list of 3 values",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_exit_2_naming_file_and_line(tmp_path, capsys, case):
    b, c = paired_acc(tmp_path, 200, 2, 2, 150)
    damage, message = BAD[case]
    damage(c)
    code, out, err = run(capsys, "compare", b, c, "--max-drop", "0.05")
    assert code == 2, (case, out, err)
    assert message in err and "Traceback" not in err
    assert err.count("\n") <= 2, err


def test_values_no_aggregation_can_take_are_bad_input_not_a_traceback(tmp_path, capsys):
    rows = [sample_line(i, {"perplexity": -1000.0 - i}) for i in range(40)]
    b, c = write_samples(tmp_path / "b", "ppl", rows), write_samples(tmp_path / "c", "ppl", rows)
    code, _, err = run(capsys, "compare", b, c, "--max-drop", "1")
    assert code == 2 and "cannot be compared (OverflowError" in err and "Traceback" not in err


def test_missing_metric_tasks_on_one_side_and_paths(tmp_path, capsys):
    b, c = paired_acc(tmp_path, 200, 2, 2, 150)
    code, _, err = run(capsys, "compare", b, c, "--max-drop", "0.05", "--metric", "acc_norm")
    assert code == 2 and "no metric 'acc_norm' (this task logs acc); pick one with --metric" in err
    write_samples(tmp_path / "base", "extra", acc_rows([1.0] * 10))
    code, _, err = run(capsys, "compare", tmp_path / "base", tmp_path / "cand", "--max-drop", "0.05")
    assert code == 2 and "tasks on one side only: extra (base)" in err
    code, _, err = run(capsys, "compare", tmp_path / "nope", c, "--max-drop", "0.05")
    assert code == 2 and "no such file or directory" in err
    code, _, err = run(capsys, "compare", b, c)
    assert code == 2 and "--max-drop" in err  # argparse: one of the allowances is required
    code, _, err = run(capsys, "compare", b, c, "--max-drop", "-1")
    assert code == 2 and "--max-drop must be a finite number >= 0" in err
    other = tmp_path / "results.jsonl"
    other.write_text("{}\n")
    code, _, err = run(capsys, "compare", other, c, "--max-drop", "0.05")
    assert code == 2 and "not an lm-eval samples file name" in err


@pytest.mark.slow
def test_a_held_out_simulation_through_compare_keeps_alpha_and_power(tmp_path, capsys):
    """Candidates whose true drop is the allowance pass at most alpha (+ Monte Carlo slack); unchanged ones
    flipping 10% of items pass with the power `forgetguard plan` promised for these items."""
    rng = np.random.default_rng(2026)
    n, base_rate, allowance, flip = 300, 0.7, 0.05, 0.10

    def candidate_passes(drop: float, i: int) -> bool:
        p_lost, p_gained = flip / 2 + drop / 2, flip / 2 - drop / 2
        cells = rng.choice(4, size=n, p=[base_rate - p_lost, p_lost, p_gained, 1 - base_rate - p_gained])
        base = np.isin(cells, (0, 1)).astype(float)
        cand = np.isin(cells, (0, 2)).astype(float)
        folder = tmp_path / f"run{i}"
        b, c = write_samples(folder / "b", "qa", acc_rows(base)), write_samples(folder / "c", "qa", acc_rows(cand))
        code = main(["compare", str(b), str(c), "--max-drop", str(allowance), "--json"])
        capsys.readouterr()
        return code == 0

    reps = 400
    boundary = np.mean([candidate_passes(allowance, i) for i in range(reps)])
    assert boundary <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / reps), boundary
    code = main(["plan", "--max-drop", str(allowance), "--flip-rate", str(flip), "--items", str(n), "--json"])
    promised = json.loads(capsys.readouterr().out)
    assert code == 0 and promised["items_needed"] <= n
    power = np.mean([candidate_passes(0.0, reps + i) for i in range(200)])
    assert power >= 0.8 - 3 * math.sqrt(0.8 * 0.2 / 200), power


def test_plan_prints_the_minimum_and_the_items(capsys):
    code, out, _ = run(capsys, "plan", "--max-drop", "0.02", "--items", "500")
    assert code == 0 and "at least 180 items to pass at all" in out and "500 items prove an allowance of" in out
    code, _, err = run(capsys, "plan", "--max-drop-relative", "0.05")
    assert code == 2 and "--base-score" in err
    code, out, _ = run(capsys, "plan", "--max-drop", "0.03", "--drop", "0.05")
    assert "no number of items passes it" in out
