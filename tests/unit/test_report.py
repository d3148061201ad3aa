"""Records and rendering: a NaN or an error never passes; the JSON schema is exact."""

from __future__ import annotations

import json

from pytest_forgetguard.records import CheckRecord
from pytest_forgetguard.report import json_report, markdown_report, terminal_table, write_json


def rec(**kw):
    base = dict(
        name="task-kl",
        kind="kl",
        candidate="cand",
        metric="kl_forward_mean",
        value=0.03,
        budget=0.05,
        ci_low=0.02,
        ci_high=0.04,
        n=8,
        passed=True,
    )
    base.update(kw)
    return CheckRecord(**base)


def test_nan_error_or_missing_value_never_passes():
    assert rec().passed
    assert not rec(value=float("nan")).passed
    assert not rec(value=float("inf")).passed
    assert not rec(value=None).passed
    assert not rec(error="boom").passed
    assert rec(error="boom").verdict == "ERROR"


def test_json_schema(tmp_path):
    data = json_report(
        [rec(), rec(name="w", kind="drift", value=float("nan"))],
        base={"spec": "b", "fingerprint": "f"},
        candidates=[{"spec": "cand", "fingerprint": "g"}],
    )
    path = tmp_path / "r.json"
    write_json(path, data)
    loaded = json.loads(path.read_text())
    assert loaded["schema"] == 1 and loaded["base"] == {"spec": "b", "fingerprint": "f"}
    check = loaded["checks"][0]
    for key in (
        "name",
        "kind",
        "candidate",
        "metric",
        "value",
        "base_value",
        "candidate_value",
        "delta",
        "budget",
        "ci_low",
        "ci_high",
        "n",
        "passed",
        "error",
    ):
        assert key in check
    assert check["passed"] is True and check["base_value"] is None
    assert loaded["checks"][1]["passed"] is False and loaded["checks"][1]["value"] == "nan"


def test_table_and_markdown():
    records = [rec(), rec(name="bad", value=0.2, passed=False, details={"message": "KL budget exceeded"})]
    table = terminal_table(records)
    assert "task-kl" in table and "PASS" in table and "FAIL" in table and "0.02..0.04" in table
    md = markdown_report(records, {"spec": "b", "fingerprint": "f"})
    assert md.startswith("## ❌ forgetguard: 1 of 2 checks failed")
    assert "| task-kl |" in md and "KL budget exceeded" in md
    assert markdown_report([rec()], None).startswith("## ✅")


def test_records_survive_the_trip_to_the_xdist_controller():
    original = rec(value=float("nan"), details={"kl_quantiles": [0.0, 0.5]}, order=(3, 1))
    original.base_info = {"spec": "b", "fingerprint": "f"}
    copy = CheckRecord.from_payload(json.loads(json.dumps(original.to_payload())))
    assert copy.to_json() == original.to_json() and copy.order == (3, 1) and copy.base_info == original.base_info
    assert not copy.passed  # NaN stays a failure on the controller too


def test_side_by_side_columns_are_short_ids_unless_they_collide():
    from pytest_forgetguard.records import column_labels

    assert column_labels(["runs/a/ckpt-1", "runs/a/ckpt-2/"]) == ["ckpt-1", "ckpt-2"]
    assert column_labels(["x/ckpt", "y/ckpt"]) == ["x/ckpt", "y/ckpt"]  # ambiguous: full SPECs


def test_side_by_side_needs_two_candidates():
    from pytest_forgetguard.report import side_by_side

    one = [rec(), rec(name="w", kind="drift")]
    assert side_by_side(one) is None
    two = one + [rec(candidate="other", value=0.5, passed=False)]
    headers, body, verdicts = side_by_side(two)
    assert headers == ["check", "budget", "cand", "other"]
    assert body[0] == ["task-kl", "0.05", "0.03 PASS", "0.5 FAIL"]
    assert body[1] == ["w", "0.05", "0.03 PASS", "-"]  # not run for "other": not a pass
    assert verdicts == ["FAIL", "FAIL", "FAIL"] and body[-1] == ["all checks", "", "2/2 passed", "0/1 passed"]


def retention_rec(candidate, drop, lo, hi, gate, passed, allowance=0.05, verdict=None, needed=None):
    """A retention record as assert_retained writes it (acc: delta = -drop)."""
    return CheckRecord(
        name="facts", kind="retention", candidate=candidate, metric="acc", value=0.7 - drop, base_value=0.7,
        candidate_value=0.7 - drop, delta=-drop, budget=allowance, ci_low=-hi, ci_high=-lo, n=302, passed=passed,
        details={"drop": drop, "drop_ci": [lo, hi], "gate": gate, "verdict": verdict, "alpha": 0.05,
                 "items_needed": needed},
    )  # fmt: skip


def test_retention_rows_put_the_drop_next_to_the_allowed_drop_and_say_when_it_was_inconclusive():
    from pytest_forgetguard.report import gate_notes, side_by_side

    records = [
        retention_rec("runs/a/ckpt-1", 0.08, 0.02, 0.14, "significant", True, verdict="inconclusive", needed=900),
        retention_rec("runs/b/ckpt-2", 0.01, -0.02, 0.07, "strict", False, verdict="inconclusive", needed=1200),
        retention_rec("runs/c/ckpt-3", 0.01, -0.01, 0.03, "strict", passed=True, verdict="pass"),
    ]
    headers, body, _ = side_by_side(records)
    assert headers == ["check", "budget", "ckpt-1", "ckpt-2", "ckpt-3"]
    assert body[0] == ["facts", "drop ≤ 0.05", "+0.08 PASS*", "+0.01 INCONCLUSIVE*", "+0.01 PASS"]
    assert gate_notes(records) == [
        "* facts [ckpt-1]: inconclusive at alpha 0.05 (about 900 items would decide it): passed by gate: significant",
        "* facts [ckpt-2]: inconclusive at alpha 0.05 (about 1200 items would decide it): not shown to be within "
        "the allowance",
    ]
    text = terminal_table(records)
    assert "ckpt-1" in text and "runs/a/ckpt-1" not in text  # short ids in the full table too
    md = markdown_report(records, {"spec": "models/base.gguf", "fingerprint": "f"}, candidates=[
        {"spec": "runs/a/ckpt-1", "fingerprint": "a"}])  # fmt: skip
    assert "| base `base.gguf` | `models/base.gguf` | `f` |" in md  # the full SPEC once, in the models table
    assert "\\* facts [ckpt-1]: inconclusive at alpha 0.05" in md


def test_an_infinite_number_inside_nested_details_is_written_as_text(tmp_path):
    """A forecast from too few points for its coverage has an infinite interval: the JSON report shows it as
    "-inf"/"inf" (found by a gate whose forecast decided on an upper bound at alpha with such an interval)."""
    forecast = {"drop": 0.004, "low": float("-inf"), "high": float("inf"), "upper": 0.0155, "n": 19}
    r = rec(kind="retention", details={"forecast": forecast, "looks": [1.0, float("nan")]})
    path = tmp_path / "r.json"
    write_json(path, json_report([r], {}, []))
    row = json.loads(path.read_text())["checks"][0]
    assert row["details"]["forecast"]["low"] == "-inf" and row["details"]["forecast"]["high"] == "inf"
    assert row["details"]["looks"] == [1.0, "nan"]
