"""Plots of check records, written as PNG next to the reports (the ``plots`` extra).

Two figures, each drawn only when some record has data for it:

* ``<prefix>-kl.png``: one panel per KL check. Per candidate, the per-token
  KL distribution (its quantile function: the 0th..100th percentile of the
  response tokens, on a symmetric-log axis so zeros and heavy tails both
  show), the pooled mean the check gates on (dotted, same colour) and the
  budget (dashed).
* ``<prefix>-retention.png``: one panel per retention check, one row per
  candidate: the drop with its 95% confidence interval, the allowance and
  zero. A positive drop is always a loss, whichever way the metric points;
  with several tasks, each task's own drop is marked too.

Plots are drawn from :class:`~pytest_forgetguard.records.CheckRecord` only
(records are plain data that travel from xdist workers to the controller),
never from live model objects. Records that errored, or whose number is not
finite, are left out: the tables already say what went wrong.

matplotlib is imported lazily and only through its object-oriented API
(``Figure`` + ``FigureCanvasAgg``): no pyplot, no backend switch, no change
to the user's global matplotlib state.

Example::

    from pathlib import Path
    from pytest_forgetguard.plots import plots_available, write_plots

    if plots_available():
        for path in write_plots(records, Path("reports"), prefix="forgetguard"):
            print("wrote", path)   # reports/forgetguard-kl.png, reports/forgetguard-retention.png

    fig = kl_figure(records)       # or inspect a figure (None when there is nothing to draw)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

from .deps import available, require
from .files import write_atomic
from .records import CheckRecord, column_labels

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


# matplotlib's "tab10", spelled out: the "C0".."C9" shorthands follow the user's rcParams,
# and one candidate must keep one colour across both figures whatever the user's style.
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
LIMIT_COLOR = "#b00020"
FAIL_COLOR = "#e8000b"  # a failed check's marker and label, whatever its candidate's colour
LABEL_WIDTH = 40
DPI = 110


def plots_available() -> bool:
    """True when matplotlib can be imported (``pip install "pytest-forgetguard[plots]"``)."""
    return available("matplotlib")


def _new_figure(width: float, height: float) -> "Figure":
    require("matplotlib", "plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    # Attaching an Agg canvas to this one figure renders it without touching pyplot's backend.
    FigureCanvasAgg(fig)
    return fig


# -- reading records ---------------------------------------------------------------


def _finite(x: Any) -> TypeGuard[float]:
    """A real, finite number; records that came back from JSON may hold "nan" strings."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _measured(rec: CheckRecord, kind: str) -> bool:
    return rec.kind == kind and rec.error is None and _finite(rec.value)


@dataclass(frozen=True)
class _KLSeries:
    """What the KL plot shows for one record."""

    quantiles: tuple[float, ...]  # per-token KL at evenly spaced levels, 0th..100th percentile
    mean: float  # the pooled mean the check gates on


def _kl_series(rec: CheckRecord) -> _KLSeries | None:
    """The record's per-token KL distribution, or None when it has none to plot."""
    value, q = rec.value, rec.details.get("kl_quantiles")
    if rec.kind != "kl" or rec.error is not None or not _finite(value):
        return None
    if not isinstance(q, (list, tuple)) or len(q) < 2 or not all(_finite(v) for v in q):
        return None
    return _KLSeries(quantiles=tuple(float(v) for v in q), mean=float(value))


@dataclass(frozen=True)
class _Drop:
    """What the retention plot shows for one record, in "positive = worse" units."""

    drop: float
    low: float
    high: float
    allowance: float | None
    per_task: tuple[tuple[str, float], ...]


def _retention_drop(rec: CheckRecord) -> _Drop | None:
    if not _measured(rec, "retention"):
        return None
    d = rec.details
    drop, ci = d.get("drop"), d.get("drop_ci")
    if not _finite(drop) or not isinstance(ci, (list, tuple)) or len(ci) != 2 or not all(_finite(v) for v in ci):
        return None
    higher_is_better = bool(d.get("higher_is_better", True))
    per_task: list[tuple[str, float]] = []
    tasks = d.get("per_task") or []
    # A single task's drop is the overall drop: only a breakdown of several says something new.
    if len(tasks) > 1:
        for t in tasks:
            if isinstance(t, dict) and _finite(t.get("base_value")) and _finite(t.get("candidate_value")):
                delta = t["candidate_value"] - t["base_value"]
                per_task.append((str(t.get("task", "?")), -delta if higher_is_better else delta))
    return _Drop(
        drop=float(drop),
        low=float(min(ci)),
        high=float(max(ci)),
        allowance=float(rec.budget) if _finite(rec.budget) else None,
        per_task=tuple(per_task),
    )


K = TypeVar("K", bound=Hashable)


def _group(records: Iterable[CheckRecord], key: Callable[[CheckRecord], K]) -> dict[K, list[CheckRecord]]:
    """Records by panel, panels and rows in the order the checks ran (dicts keep insertion order)."""
    panels: dict[K, list[CheckRecord]] = {}
    for rec in records:
        panels.setdefault(key(rec), []).append(rec)
    return panels


def _colors(records: Sequence[CheckRecord]) -> dict[str, str]:
    """One colour per candidate, by first appearance in all records (so both figures agree)."""
    out: dict[str, str] = {}
    for rec in records:
        if rec.candidate not in out:
            out[rec.candidate] = PALETTE[len(out) % len(PALETTE)]
    return out


def _names(records: Sequence[CheckRecord]) -> dict[str, str]:
    """Each candidate's label: its short id, as in the test ids and the side-by-side table."""
    cands = list(dict.fromkeys(r.candidate for r in records))
    return dict(zip(cands, column_labels(cands)))


def _text(s: str, width: int | None = None) -> str:
    """Text safe for matplotlib: ``$`` would start mathtext; long SPECs keep their informative tail."""
    if width is not None and len(s) > width:
        s = "…" + s[-(width - 1) :]
    return s.replace("$", r"\$")


def _gid(role: str, candidate: str | None = None) -> str:
    """Artist ids ("kl-quantiles|cand") name what each artist shows, for tests and SVG readers."""
    return role if candidate is None else f"{role}|{candidate}"


def _legend(ax: "Axes", extra: Sequence[tuple[str, dict[str, Any]]], first: bool = False) -> None:
    """The axes' labelled artists plus generic entries (``extra``: label and line style).

    Placed outside the axes: the data fill the panel, and ``loc="best"`` can
    be slow on many points.
    """
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    proxies = [Line2D([], [], **style) for _, style in extra]
    names = [text for text, _ in extra]
    if first:
        handles, labels = [*proxies, *handles], [*names, *labels]
    else:
        handles, labels = [*handles, *proxies], [*labels, *names]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")


# -- KL ---------------------------------------------------------------------------


def _linthresh(values: Iterable[float]) -> float:
    """Where the symmetric-log axis turns linear: a power of ten below the interesting values.

    A plain log axis would drop tokens whose KL is exactly 0 (identical
    predictions are common); symlog keeps them at the bottom.
    """
    positive = [v for v in values if v > 0]
    if not positive:
        return 1e-3
    return float(10 ** math.floor(math.log10(max(min(positive), 1e-6))))


def kl_figure(records: Sequence[CheckRecord]) -> "Figure | None":
    """The per-token KL distribution of each KL check and candidate; None without KL data.

    One panel per (check name, metric, budget). Per candidate: the quantile
    line (x: percentile 0..100 of response tokens, y: KL in nats) labelled
    with the candidate and verdict, a dotted line at the pooled mean (the
    gated value), and one dashed budget line per panel.
    """
    usable = [(r, k) for r in records if (k := _kl_series(r)) is not None]
    panels = _group((r for r, _ in usable), key=lambda r: (r.name, r.metric, r.budget))
    if not panels:
        return None
    series = {id(r): k for r, k in usable}
    colors, names = _colors(records), _names(records)
    fig = _new_figure(9.0, 3.8 * len(panels))
    axes: list[Axes] = list(fig.subplots(len(panels), 1, squeeze=False)[:, 0])
    for ax, ((name, metric, budget), recs) in zip(axes, panels.items()):
        lows: list[float] = []
        for rec in recs:
            k = series[id(rec)]
            n = len(k.quantiles)
            label = _text(names[rec.candidate], LABEL_WIDTH)
            color = colors[rec.candidate]
            ax.plot(
                [100.0 * i / (n - 1) for i in range(n)],
                k.quantiles,
                color=color,
                linewidth=1.8,
                label=f"{label} ({rec.verdict}): mean {k.mean:.4g}",
                gid=_gid("kl-quantiles", rec.candidate),
            )
            ax.axhline(
                k.mean,
                color=color,
                linestyle=":",
                linewidth=1.4,
                label="_nolegend_",  # one generic legend entry below, not one per candidate
                gid=_gid("kl-mean", rec.candidate),
            )
            # The 10th percentile, not the minimum: a few near-zero tokens must not stretch the axis.
            lows += [k.quantiles[round(0.1 * (n - 1))], k.mean]
        if _finite(budget):
            ax.axhline(
                float(budget),
                color=LIMIT_COLOR,
                linestyle="--",
                linewidth=1.4,
                label=f"budget {budget:g}",
                gid=_gid("kl-budget"),
            )
            lows.append(float(budget))
        ax.set_yscale("symlog", linthresh=_linthresh(lows))
        ax.set_ylim(bottom=0.0)  # KL is never negative: no empty mirrored half
        ax.set_xlim(0.0, 100.0)
        ax.set_title(_text(f"{name}: {metric}"))
        ax.set_xlabel("percentile of response tokens")
        ax.set_ylabel("per-token KL (nats)")
        ax.grid(True, which="major", alpha=0.3)
        _legend(ax, [("pooled mean (dotted)", {"color": "#666666", "linestyle": ":", "linewidth": 1.4})])
    return fig


# -- retention --------------------------------------------------------------------


def retention_figure(records: Sequence[CheckRecord]) -> "Figure | None":
    """Each retention check's drop per candidate, with its 95% CI; None without retention data.

    One panel per (check name, metric), one row per candidate: a marker at
    the drop (round when the check passed, a cross when it failed), a
    horizontal segment over the CI, a dashed segment at the allowance, and a
    vertical line at 0. Several tasks add a small marker per task.
    """
    usable = [(r, d) for r in records if (d := _retention_drop(r)) is not None]
    panels = _group((r for r, _ in usable), key=lambda r: (r.name, r.metric))
    if not panels:
        return None
    drops = {id(r): d for r, d in usable}
    colors, names = _colors(records), _names(records)
    heights = [len(recs) + 1.5 for recs in panels.values()]
    fig = _new_figure(9.0, 0.45 * sum(heights) + 1.2 * len(panels))
    axes: list[Axes] = list(fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0])
    for ax, ((name, metric), recs) in zip(axes, panels.items()):
        allowances_labelled: set[float] = set()
        task_labelled = False
        for y, rec in enumerate(recs):
            d = drops[id(rec)]
            _retention_row(ax, y, rec, d, colors[rec.candidate], allowances_labelled)
            if d.per_task:
                _task_drops(ax, y, rec, d, colors[rec.candidate], labelled=task_labelled)
                task_labelled = True
        _retention_panel(ax, name, metric, recs, names)
    return fig


def _retention_row(ax: "Axes", y: int, rec: CheckRecord, d: _Drop, color: str, allowances_labelled: set[float]) -> None:
    """One candidate's row: the CI, the drop (a cross when failed) and its allowance.

    The legend names each allowance once (``allowances_labelled``, shared by the panel's rows).
    """
    ax.hlines(y, d.low, d.high, color=color, linewidth=2.5, gid=_gid("retention-ci", rec.candidate))
    ax.plot(
        [d.drop],
        [y],
        linestyle="none",
        marker="o" if rec.passed else "X",
        markersize=8 if rec.passed else 11,
        color=color if rec.passed else FAIL_COLOR,
        label="_nolegend_",  # the row's tick label names the candidate
        gid=_gid("retention-drop", rec.candidate),
    )
    if d.allowance is not None:
        first = d.allowance not in allowances_labelled
        allowances_labelled.add(d.allowance)
        # A segment per row, not one line: a relative allowance may differ between rows.
        ax.vlines(
            d.allowance,
            y - 0.38,
            y + 0.38,
            color=LIMIT_COLOR,
            linestyle="--",
            linewidth=1.6,
            label=f"allowance {d.allowance:.4g}" if first else "_nolegend_",
            gid=_gid("retention-allowance", rec.candidate),
        )


def _task_drops(ax: "Axes", y: int, rec: CheckRecord, d: _Drop, color: str, labelled: bool) -> None:
    """Each task's own drop, marked and named just above the row (in the legend once per panel)."""
    ax.plot(
        [v for _, v in d.per_task],
        [y + 0.22] * len(d.per_task),
        linestyle="none",
        marker="|",
        markersize=9,
        color=color,
        alpha=0.8,
        label="_nolegend_" if labelled else "drop per task",
        gid=_gid("retention-task-drops", rec.candidate),
    )
    for task, v in d.per_task:
        ax.annotate(
            _text(task, 24),
            (v, y + 0.22),
            xytext=(0, 4),
            textcoords="offset points",
            fontsize="x-small",
            ha="center",
            va="bottom",
            color=color,
        )


def _retention_panel(ax: "Axes", name: str, metric: str, recs: list[CheckRecord], names: dict[str, str]) -> None:
    """The panel around the rows: zero, the candidates (failed ones in red, first on top), title and legend."""
    ax.axvline(0.0, color="#444444", linewidth=1.0, gid=_gid("retention-zero"))
    ax.set_yticks(range(len(recs)), [_row_label(names[r.candidate], r) for r in recs])
    for tick, rec in zip(ax.get_yticklabels(), recs):
        if not rec.passed:
            tick.set_color(FAIL_COLOR)
            tick.set_fontweight("bold")
    ax.set_ylim(len(recs) - 0.5, -0.5)  # first candidate on top, as in the tables
    hib = recs[0].details.get("higher_is_better", True)
    gate = recs[0].details.get("gate")
    ax.set_title(_text(f"{name}: {metric} ({'higher' if hib else 'lower'} is better; gate: {gate})"))
    ax.set_xlabel(f"drop in {_text(metric)} vs base (positive = worse), 95% CI")
    ax.grid(True, axis="x", alpha=0.3)
    markers = {"o": "drop, 95% CI (pass)", "X": "drop, 95% CI (fail)"}
    shown = {"o" if r.passed else "X" for r in recs}
    _legend(
        ax,
        [(text, {"color": "#666666", "marker": m, "linewidth": 2.5}) for m, text in markers.items() if m in shown],
        first=True,
    )


def _row_label(name: str, rec: CheckRecord) -> str:
    """A retention row's tick label: the candidate and its verdict, marked when the items could not decide."""
    why = " — inconclusive" if rec.gate_note and rec.verdict == "PASS" else ""
    if rec.stopped_early:  # "decided after 180 of 1,200 items": the interval is the one at the stop
        why += f" — {rec.n} of {rec.details['items_total']} items"
    return f"{_text(name, LABEL_WIDTH)} ({rec.verdict}){why}"


# -- writing ----------------------------------------------------------------------


def _save_png(fig: "Figure", path: Path) -> None:
    """Write atomically: a report reader never sees half a PNG."""
    write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=DPI))


FIGURES: tuple[tuple[str, Callable[[Sequence[CheckRecord]], "Figure | None"]], ...] = (
    ("kl", kl_figure),
    ("retention", retention_figure),
)


def write_plots(records: Sequence[CheckRecord], directory: Path, prefix: str = "forgetguard") -> list[Path]:
    """Write ``<prefix>-kl.png`` and ``<prefix>-retention.png`` into ``directory``; return those written.

    A figure without data is not written, and an older file of that name is
    removed so that a stale plot never sits next to fresh reports. Raises
    :class:`~pytest_forgetguard.errors.MissingDependencyError` naming
    ``pip install "pytest-forgetguard[plots]"`` when matplotlib is missing.
    """
    require("matplotlib", "plots")
    directory = Path(directory)
    written: list[Path] = []
    for suffix, build in FIGURES:
        path = directory / f"{prefix}-{suffix}.png"
        fig = build(records)
        if fig is None:
            path.unlink(missing_ok=True)
            continue
        _save_png(fig, path)
        written.append(path)
    return written
