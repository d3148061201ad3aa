"""Plots drawn from check records: the plotted numbers are the records' numbers.

KL records come from the real ``assert_kl_budget`` on tiny models, and their
per-token quantiles are checked against an independent float64 reference.
Retention records come from the real ``assert_retained`` fed a known
``RetentionResult`` (lm-eval itself is covered in test_retention.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from reference import reference_kl

from pytest_forgetguard.comparison import Forgetguard
from pytest_forgetguard.errors import CapabilityForgotten, ForgetguardWarning, MissingDependencyError
from pytest_forgetguard.models import ModelStore
from pytest_forgetguard.plots import kl_figure, plots_available, retention_figure, write_plots
from pytest_forgetguard.prompts import encode_prompt, encode_response, parse_prompts
from pytest_forgetguard.records import CheckRecord
from pytest_forgetguard.retention import RetentionError, RetentionResult, TaskDelta

ITEMS = [
    {"prompt": "The for statement", "response": " executes the suite once for each item."},
    {"prompt": "A class definition", "response": " defines a class object."},
    {"prompt": "Exceptions are raised", "response": " by the raise statement and handled by try."},
    {"messages": [{"role": "user", "content": "What does pass do?"}], "response": "Nothing at all."},
]
LEVELS = np.linspace(0.0, 1.0, 101)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def kl_run(tiny):
    """Real KL records for two candidates (the noisy one and an identical twin), with their results."""
    store = ModelStore(device="cpu", dtype="float32", cache_dir=None)
    base = store.get(str(tiny["base"]), role="base")
    records: list[CheckRecord] = []
    results = {}
    for which in ("candidate", "twin"):
        fg = Forgetguard(base, store.get(str(tiny[which]), base=base), record=records.append)
        with warnings.catch_warnings():  # the twin is identical to the base on purpose (its KL is exactly 0)
            warnings.filterwarnings("ignore", "candidate .* is identical to the base", ForgetguardWarning)
            results[which] = fg.assert_kl_budget(ITEMS, budget=50.0, name="task-kl", sample_from="dataset")
    pairs = [(encode_prompt(base.tokenizer, r), encode_response(base.tokenizer, r)) for r in parse_prompts(ITEMS)]
    return records, results, pairs


def artists(fig, role, candidate=None):
    """The artists plots.py tagged with ``role`` (and ``candidate``), in drawing order."""
    gid = role if candidate is None else f"{role}|{candidate}"
    return [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == gid]


def legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def kl_rec(candidate, quantiles, value, budget=0.05, name="task-kl", **kw):
    return CheckRecord(
        name=name,
        kind="kl",
        candidate=candidate,
        metric="kl_forward_mean",
        value=value,
        budget=budget,
        passed=value <= budget,
        details={"kl_quantiles": [float(q) for q in quantiles]},
        **kw,
    )


# -- the quantiles a KL record carries ------------------------------------------------


def test_kl_record_carries_the_per_token_quantiles(tiny, kl_run):
    records, results, pairs = kl_run
    rec, result = records[0], results["candidate"]
    q = rec.details["kl_quantiles"]
    ref_forward, _ = reference_kl(tiny["base"], tiny["candidate"], pairs)
    tokens = np.concatenate(ref_forward)
    assert len(q) == 101 and result.n_tokens == tokens.size
    np.testing.assert_allclose(q, np.quantile(tokens, LEVELS), rtol=1e-4, atol=1e-7)
    assert q[0] == pytest.approx(tokens.min(), rel=1e-4, abs=1e-7)
    assert q[-1] == pytest.approx(tokens.max(), rel=1e-4)
    assert q == sorted(q) and q[-1] > 0.05, "the noisy candidate differs measurably"
    # Rounded to 6 significant digits, so the JSON stays short.
    assert all(float(f"{v:.6g}") == v for v in q)
    np.testing.assert_allclose(q, result.quantiles(), rtol=5e-6, atol=0)
    json.dumps(rec.to_json(), allow_nan=False)


@pytest.mark.parametrize("direction", ["forward", "reverse", "symmetric"])
def test_quantiles_follow_the_gated_direction(tiny, kl_run, direction):
    _, _, pairs = kl_run
    store = ModelStore(device="cpu", dtype="float32", cache_dir=None)
    base = store.get(str(tiny["base"]), role="base")
    fg = Forgetguard(base, store.get(str(tiny["candidate"]), base=base))
    result = fg.kl(ITEMS, direction=direction, sample_from="dataset")
    fwd, rev = (np.concatenate(x) for x in reference_kl(tiny["base"], tiny["candidate"], pairs))
    tokens = {"forward": fwd, "reverse": rev, "symmetric": (fwd + rev) / 2}[direction]
    levels = [0.0, 0.25, 0.5, 0.75, 1.0]
    np.testing.assert_allclose(result.quantiles(5), np.quantile(tokens, levels), rtol=1e-4, atol=1e-7)
    assert result.quantiles(101)[50] == pytest.approx(result.median, rel=1e-12)
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        result.quantiles(1)


# -- the KL figure ----------------------------------------------------------------------


def test_kl_figure_plots_the_records_numbers(mpl, kl_run):
    records, _, _ = kl_run
    fig = kl_figure(records)
    assert fig is not None and len(fig.axes) == 1
    for rec in records:
        (line,) = artists(fig, "kl-quantiles", rec.candidate)
        np.testing.assert_array_equal(line.get_xdata(), np.linspace(0, 100, 101))
        np.testing.assert_array_equal(line.get_ydata(), rec.details["kl_quantiles"])
        (mean,) = artists(fig, "kl-mean", rec.candidate)
        assert list(mean.get_ydata()) == [rec.value, rec.value]
    (budget,) = artists(fig, "kl-budget")
    assert list(budget.get_ydata()) == [50.0, 50.0]
    # The identical twin's KL is 0 at every token: drawn (symlog keeps zeros), not dropped.
    twin = artists(fig, "kl-quantiles", records[1].candidate)[0]
    assert max(twin.get_ydata()) == pytest.approx(0.0, abs=1e-6)
    assert fig.axes[0].get_yscale() == "symlog" and fig.axes[0].get_ylim()[0] == 0.0


def test_kl_figure_one_series_per_candidate_named_in_the_legend(mpl):
    rng = np.random.default_rng(0)
    a = np.sort(rng.exponential(0.02, 101))
    b = np.sort(rng.exponential(0.2, 101))
    records = [
        kl_rec("ft-a", a, 0.021),
        kl_rec("ft-b", b, 0.19),
        kl_rec("ft-a", a / 2, 0.01, budget=0.02, name="general-kl"),
    ]
    fig = kl_figure(records)
    assert fig is not None
    task_ax, general_ax = fig.axes
    assert "task-kl" in task_ax.get_title() and "general-kl" in general_ax.get_title()
    texts = legend_texts(task_ax)
    assert any(t.startswith("ft-a (PASS)") for t in texts)
    assert any(t.startswith("ft-b (FAIL)") for t in texts)
    assert "budget 0.05" in texts and "budget 0.02" in legend_texts(general_ax)
    assert len([ln for ln in task_ax.get_lines() if ln.get_gid().startswith("kl-quantiles|")]) == 2
    np.testing.assert_allclose(artists(fig, "kl-quantiles", "ft-a")[1].get_ydata(), a / 2)
    # One candidate, one colour, in every panel.
    colours = [ln.get_color() for ln in artists(fig, "kl-quantiles", "ft-a")]
    assert colours[0] == colours[1] != artists(fig, "kl-quantiles", "ft-b")[0].get_color()


def test_errored_nan_and_incomplete_kl_records_are_left_out(mpl):
    good = np.linspace(0.0, 0.3, 101)
    nan_q = list(good)
    nan_q[7] = float("nan")
    left_out = [
        kl_rec("errored", good, 0.01, error="PromptFileError: empty"),
        kl_rec("nan-value", good, float("nan")),
        kl_rec("inf-value", good, float("inf")),
        kl_rec("nan-quantile", nan_q, 0.01),
        kl_rec("one-quantile", good[:1], 0.01),
        CheckRecord(name="task-kl", kind="kl", candidate="no-quantiles", metric="kl_forward_mean", value=0.01),
        CheckRecord(name="w", kind="drift", candidate="drift", metric="relative_l2", value=0.01, budget=0.1),
    ]
    # NaN comes back from a JSON report as the string "nan".
    from_json = CheckRecord.from_payload(json.loads(json.dumps(kl_rec("json-nan", good, float("nan")).to_json())))
    assert from_json.value == "nan"
    left_out.append(from_json)
    assert kl_figure(left_out) is None
    fig = kl_figure([*left_out, kl_rec("kept", good, 0.05)])
    assert fig is not None
    assert [ln.get_gid() for ln in fig.axes[0].get_lines() if "quantiles" in ln.get_gid()] == ["kl-quantiles|kept"]
    assert kl_figure([]) is None


def test_records_that_travelled_as_payload_plot_the_same(mpl, kl_run):
    records, _, _ = kl_run
    travelled = [CheckRecord.from_payload(json.loads(json.dumps(r.to_payload()))) for r in records]
    a, b = kl_figure(records), kl_figure(travelled)
    for rec in records:
        np.testing.assert_array_equal(
            artists(a, "kl-quantiles", rec.candidate)[0].get_ydata(),
            artists(b, "kl-quantiles", rec.candidate)[0].get_ydata(),
        )


# -- the retention figure ---------------------------------------------------------------


def result_of(base_value, candidate_value, ci_low, ci_high, higher_is_better=True, per_task=()):
    """A retention result; ``ci_low``/``ci_high`` bound the delta (candidate - base), as lm-eval's units."""
    return RetentionResult(
        tasks=tuple(t.task for t in per_task) or ("t",),
        metric="acc" if higher_is_better else "word_perplexity",
        filter="none",
        higher_is_better=higher_is_better,
        base_value=base_value,
        candidate_value=candidate_value,
        ci_low=ci_low,
        ci_high=ci_high,
        n=200,
        p_value=None,
        lost=None,
        gained=None,
        per_task=list(per_task),
    )


@pytest.fixture
def retained(tiny, store):
    """Run the real ``assert_retained`` for a candidate on a given result; return its record."""
    base = store.get(str(tiny["base"]), role="base")

    def run(which, result, name="retain-qa", **limits):
        records: list[CheckRecord] = []
        fg = Forgetguard(base, store.get(str(tiny[which]), base=base), record=records.append, warn=lambda m: None)

        def measured(task, **options):
            if isinstance(result, Exception):
                raise result
            return result

        fg.retention = measured  # the instance attribute shadows the method: no lm-eval run
        limits.setdefault("gate", "observed")  # these results carry no per-item values to decide on
        try:
            fg.assert_retained("t", name=name, **limits)
        except (CapabilityForgotten, RetentionError):
            pass
        (rec,) = records
        return rec

    return run


def test_retention_figure_plots_drop_ci_allowance_and_zero(mpl, tiny, retained):
    tasks = (TaskDelta("qa_easy", 100, 0.9, 0.86), TaskDelta("qa_hard", 100, 0.5, 0.52))
    ok = retained("candidate", result_of(0.70, 0.69, -0.04, 0.02, per_task=tasks), max_drop=0.03)
    bad = retained("twin", result_of(0.70, 0.62, -0.11, -0.05), max_drop_relative=0.05)
    assert (ok.verdict, bad.verdict) == ("PASS", "FAIL")
    fig = retention_figure([ok, bad])
    assert fig is not None and len(fig.axes) == 1
    ax = fig.axes[0]
    # Higher is better: drop = base - candidate, its CI the delta's CI negated.
    for y, (rec, drop, lo, hi, allowance) in enumerate(
        [(ok, 0.01, -0.02, 0.04, 0.03), (bad, 0.08, 0.05, 0.11, 0.05 * 0.70)]
    ):
        (marker,) = artists(fig, "retention-drop", rec.candidate)
        assert marker.get_xdata()[0] == pytest.approx(drop) and marker.get_ydata()[0] == y
        (ci,) = artists(fig, "retention-ci", rec.candidate)
        np.testing.assert_allclose(ci.get_segments()[0], [[lo, y], [hi, y]])
        (limit,) = artists(fig, "retention-allowance", rec.candidate)
        (x0, y0), (x1, y1) = limit.get_segments()[0]
        assert x0 == x1 == pytest.approx(allowance) and y0 < y < y1
    assert artists(fig, "retention-drop", ok.candidate)[0].get_marker() == "o"
    assert artists(fig, "retention-drop", bad.candidate)[0].get_marker() == "X"
    (zero,) = artists(fig, "retention-zero")
    assert list(zero.get_xdata()) == [0.0, 0.0]
    # Per-task drops of a pooled check, in the same positive-is-worse units.
    (per_task,) = artists(fig, "retention-task-drops", ok.candidate)
    np.testing.assert_allclose(per_task.get_xdata(), [0.04, -0.02])
    assert not artists(fig, "retention-task-drops", bad.candidate)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0].endswith("candidate (PASS)") and labels[1].endswith("twin (FAIL)")
    assert "higher is better" in ax.get_title()
    assert {"allowance 0.03", "allowance 0.035"} <= set(legend_texts(ax))


def test_retention_drop_is_positive_when_worse_for_lower_is_better_metrics(mpl, retained):
    # Perplexity 10 -> 12 is worse: the drop is +2 although the delta is +2 in the "wrong" direction.
    rec = retained("candidate", result_of(10.0, 12.0, 1.5, 2.6, higher_is_better=False), max_drop=1.0)
    assert rec.details["max_drop"] == 1.0 and rec.details["max_drop_relative"] is None
    fig = retention_figure([rec])
    (marker,) = artists(fig, "retention-drop", rec.candidate)
    assert marker.get_xdata()[0] == pytest.approx(2.0)
    np.testing.assert_allclose(artists(fig, "retention-ci", rec.candidate)[0].get_segments()[0], [[1.5, 0], [2.6, 0]])
    assert "lower is better" in fig.axes[0].get_title()


def test_errored_retention_records_are_left_out(mpl, retained):
    errored = retained("candidate", RetentionError("unknown lm-eval task 't'"), max_drop=0.02)
    assert errored.verdict == "ERROR"
    assert retention_figure([errored]) is None
    kept = retained("twin", result_of(0.7, 0.7, -0.01, 0.01), max_drop=0.02)
    fig = retention_figure([errored, kept])
    assert fig is not None
    (label,) = fig.axes[0].get_yticklabels()
    assert label.get_text().endswith("twin (PASS)")
    assert not artists(fig, "retention-drop", errored.candidate)


def test_candidates_are_named_by_their_short_ids(mpl, retained):
    # As in the test ids and the side-by-side table: long paths would crowd out the panel.
    recs = [retained(c, result_of(0.7, 0.7, -0.01, 0.01), max_drop=0.02) for c in ("twin", "candidate")]
    assert all("/" in r.candidate for r in recs)  # the records keep the full paths
    labels = [t.get_text() for t in retention_figure(recs).axes[0].get_yticklabels()]
    assert labels == ["twin (PASS)", "candidate (PASS)"]


# -- writing PNGs ----------------------------------------------------------------------


def test_write_plots_writes_valid_pngs_only_for_figures_with_data(mpl, kl_run, retained, tmp_path):
    records, _, _ = kl_run
    assert plots_available()
    out = tmp_path / "reports" / "nested"
    written = write_plots(records, out, prefix="run1")
    assert written == [out / "run1-kl.png"]
    data = written[0].read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert not (out / "run1-retention.png").exists()
    assert sorted(p.name for p in out.iterdir()) == ["run1-kl.png"], "no temporary files left behind"

    ret = retained("candidate", result_of(0.7, 0.65, -0.08, -0.02), max_drop=0.02)
    # Unescaped, "$...$" would be parsed as mathtext, and this one would not parse.
    weird = kl_rec(r"models/$\undefined$ name", np.linspace(0, 1, 101), 0.5)
    written = write_plots([*records, ret, weird], out, prefix="run1")
    assert written == [out / "run1-kl.png", out / "run1-retention.png"]
    for path in written:
        assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 10_000

    # A later run without retention data removes the stale retention plot next to its reports.
    assert write_plots(records, out, prefix="run1") == [out / "run1-kl.png"]
    assert not (out / "run1-retention.png").exists()
    drift = CheckRecord(name="w", kind="drift", candidate="c", metric="relative_l2", value=0.1, budget=0.2)
    assert write_plots([drift], out, prefix="run1") == []
    assert list(out.iterdir()) == []


def test_missing_matplotlib_is_a_clear_error(monkeypatch, tmp_path):
    # A None entry in sys.modules makes "import matplotlib" raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert plots_available() is False
    with pytest.raises(MissingDependencyError, match=r'pip install "pytest-forgetguard\[plots\]"'):
        write_plots([kl_rec("a", np.linspace(0, 1, 101), 0.01)], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_import_is_light_and_user_matplotlib_state_is_untouched(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        import pytest_forgetguard.plots as plots
        assert "matplotlib" not in sys.modules, "importing plots must not import matplotlib"
        if plots.plots_available():
            from pytest_forgetguard.records import CheckRecord
            rec = CheckRecord(name="k", kind="kl", candidate="c", metric="kl_forward_mean", value=0.1,
                              budget=0.2, passed=True, details={{"kl_quantiles": [0.0, 0.1, 0.2]}})
            assert [p.name for p in plots.write_plots([rec], {str(tmp_path)!r})] == ["forgetguard-kl.png"]
            # pyplot owns the global backend and figure registry: never touched.
            assert "matplotlib.pyplot" not in sys.modules
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_failed_retention_check_stands_out_and_the_gate_is_named(mpl):
    from pytest_forgetguard.plots import FAIL_COLOR

    def rec(candidate, drop, passed, verdict, gate="significant"):
        return CheckRecord(
            name="facts", kind="retention", candidate=candidate, metric="acc", value=0.6, base_value=0.7,
            budget=0.05, ci_low=-drop - 0.02, ci_high=-drop + 0.06, n=302, passed=passed,
            details={"drop": drop, "drop_ci": [drop - 0.06, drop + 0.02], "gate": gate, "higher_is_better": True,
                     "verdict": verdict, "alpha": 0.05},
        )  # fmt: skip

    fig = retention_figure(
        [rec("ok", 0.0, True, "pass"), rec("over", 0.08, True, "inconclusive"), rec("bad", 0.2, False, "fail")]
    )
    [ax] = fig.axes
    assert "gate: significant" in ax.get_title()
    bad = artists(fig, "retention-drop", "bad")[0]
    assert bad.get_marker() == "X" and bad.get_color() == FAIL_COLOR
    assert artists(fig, "retention-drop", "ok")[0].get_color() != FAIL_COLOR
    ticks = {t.get_text(): t for t in ax.get_yticklabels()}
    assert ticks["bad (FAIL)"].get_color() == FAIL_COLOR
    assert "over (PASS) — inconclusive" in ticks
