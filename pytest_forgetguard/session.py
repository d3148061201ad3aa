"""The state of one forgetguard run: settings, model handles, check records, reports.

Hooks and fixtures in :mod:`.plugin` are thin: they hand over to this object.
It never imports pytest, and loads nothing until a check needs a model.

Example::

    session = ForgetguardSession(settings)
    fg = session.forgetguard("models/candidate", name="my-check")
    fg.assert_kl_budget("prompts.jsonl", budget=0.05)
    session.write_reports()
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import context
from .errors import ForgetguardError, ModelLoadError
from .files import write_atomic
from .records import CheckRecord
from .report import json_report, markdown_report, write_json
from .settings import Settings

if TYPE_CHECKING:
    from .base_states import BaseStates
    from .cache import ResultCache
    from .comparison import Forgetguard
    from .distributed import DataParallel
    from .models import CustomLoader, ModelHandle, ModelStore
    from .suite import CheckSpec


# How a check says the history could not be read mid-run (its details.warnings): the writer then heals it.
HISTORY_UNREADABLE = "forgetguard could not read the run history"


class ForgetguardSession:
    def __init__(
        self,
        settings: Settings,
        custom_loader: "CustomLoader | None" = None,
        warn: Callable[[str], None] | None = None,
        parallel: "DataParallel | None" = None,
    ) -> None:
        self.settings = settings
        # Set under torchrun / accelerate launch: KL checks share their prompts between the ranks.
        self.parallel = parallel
        self.records: list[CheckRecord] = []  # checks run in this process
        self.reported: list[CheckRecord] = []  # checks of the whole run, from test reports
        self._taken = 0
        self._seq: dict[int, int] = {}
        self._custom_loader = custom_loader
        self._warn = warn
        # One store per (device, dtype): a suite file may ask for other ones than the run's.
        self._stores: dict[tuple[str, str], ModelStore] = {}
        self._cache: ResultCache | None = None
        self._base_states: BaseStates | None = None
        self.forecasts = RunForecasts(self)
        # Why the run did not finish (None: it did): set at session finish, said by every report.
        self.incomplete_reason: str | None = None
        # Whether this run reached the history: {"path", "written", "reason"} (the JSON report's "history").
        self.history_status: dict[str, Any] = {
            "path": None,
            "written": False,
            "reason": "not written yet",
            "moved_aside": None,
        }
        self.history_notice: str | None = None  # an unreadable history was moved aside (said on every surface)
        self.history_unusable: str | None = None  # why this run neither reads nor writes the history
        self.history_damaged: str | None = None  # a read failed mid-run: the writer heals it at the end
        self.history_unavailable = False  # the history's server could not be reached: the verdicts decide the exit

    @property
    def store(self) -> "ModelStore":
        """The model store of the run's own device and dtype (what the fixtures use)."""
        return self.store_for()

    def store_for(self, suite_device: str | None = None, suite_dtype: str | None = None) -> "ModelStore":
        """The model store for a suite's device and dtype (options win over the suite's), created lazily.

        Example::

            session.store_for("cpu", "float32").get("models/base", role="base")
        """
        device = self.settings.resolved_device(suite_device)
        if self.parallel is not None:
            device = self.parallel.launch.device_for(device)  # one GPU per rank: cuda -> cuda:LOCAL_RANK
        dtype = self.settings.resolved_dtype(device, suite_dtype)
        store = self._stores.get((device, dtype))
        if store is None:
            from .models import ModelStore

            store = self._stores[device, dtype] = ModelStore(
                device=device,
                dtype=dtype,
                device_map=self.settings.device_map(suite_device),
                cache_dir=self.settings.cache_dir,
                trust_remote_code=self.settings.trust_remote_code,
                custom_loader=self._custom_loader,
                warn=self._warn,
            )
        return store

    @property
    def cache(self) -> "ResultCache":
        """Base-model results shared by every check of the session (on disk unless --fg-no-cache)."""
        if self._cache is None:
            from .cache import ResultCache

            root = None if self.settings.cache_dir is None else self.settings.cache_dir / "results"
            self._cache = ResultCache(root, warn=self._warn)
        return self._cache

    @property
    def base_states(self) -> "BaseStates":
        """The base's KL passes, computed once for every candidate of the session (and cached on disk)."""
        if self._base_states is None:
            from .base_states import BaseStates

            self._base_states = BaseStates(self.cache)
        return self._base_states

    def base_spec(self, suite_base: str | None = None) -> str:
        spec = self.settings.base or suite_base
        if not spec:
            raise ModelLoadError(
                "no base model: pass --fg-base SPEC, set FORGETGUARD_BASE, set forgetguard_base "
                "in the ini file, or give models.base in the suite"
            )
        return spec

    def candidate_specs(self, suite_candidates: tuple[str, ...] = ()) -> tuple[str, ...]:
        return self.settings.candidates or suite_candidates

    def base_handle(
        self, suite_base: str | None = None, suite_device: str | None = None, suite_dtype: str | None = None
    ) -> "ModelHandle":
        """The base model's handle (nothing loads yet); ``suite_*`` are a suite file's values."""
        return self.store_for(suite_device, suite_dtype).get(self.base_spec(suite_base), role="base")

    def candidate_handle(
        self,
        spec: str | None,
        suite_base: str | None = None,
        suite_device: str | None = None,
        suite_dtype: str | None = None,
    ) -> "ModelHandle":
        """The handle of candidate ``spec``, compared with the base on the same device and dtype."""
        if not spec:
            raise ModelLoadError(
                "no candidate model: pass --fg-candidate SPEC, set FORGETGUARD_CANDIDATE, set "
                "forgetguard_candidate in the ini file, or give models.candidate in the suite"
            )
        base = self.base_handle(suite_base, suite_device, suite_dtype)
        return self.store_for(suite_device, suite_dtype).get(spec, role="candidate", base=base)

    def forgetguard(
        self,
        candidate_spec: str | None,
        name: str,
        suite_base: str | None = None,
        suite_device: str | None = None,
        suite_dtype: str | None = None,
        suite_seed: int | None = None,
    ) -> "Forgetguard":
        """The comparison object every check runs on (suite items and the ``forgetguard`` fixture alike);
        options win over a suite's values.

        Example::

            fg = session.forgetguard("models/cand", name="task-kl", suite_device="cpu", suite_seed=7)
        """
        from .comparison import Forgetguard

        base = self.base_handle(suite_base, suite_device, suite_dtype)
        cand = self.candidate_handle(candidate_spec, suite_base, suite_device, suite_dtype)
        return Forgetguard(
            base,
            cand,
            seed=self.settings.resolved_seed(suite_seed),
            record=self.records.append,
            default_name=name,
            cache=self.cache,
            warn=self._warn,
            parallel=self.parallel,
            forecasts=self.forecasts,
            base_states=self.base_states,
            alpha=self.settings.alpha,
            early_stop=not self.settings.no_early_stop,
        )

    def record_error(self, name: str, kind: str, candidate: str, exc: BaseException) -> None:
        """Record a check that failed before it could measure anything."""
        self.records.append(
            CheckRecord(name=name, kind=kind, candidate=candidate, metric="-", error=f"{type(exc).__name__}: {exc}")
        )

    # -- records -----------------------------------------------------------------
    #
    # ``records`` are the checks this process ran. They reach the reports only
    # through pytest's test reports (``take_new_records`` attaches them,
    # ``add_reported`` collects them), the same path under pytest-xdist, where
    # the controller that writes the reports never runs a check itself.

    def take_new_records(self, index: int) -> list[CheckRecord]:
        """Records added since the last call, stamped with their place in the run's order."""
        new = self.records[self._taken :]
        self._taken = len(self.records)
        for rec in new:
            seq = self._seq.get(index, 0)
            self._seq[index] = seq + 1
            rec.order = (index, seq)
        return new

    def add_reported(self, payloads: list[dict[str, Any]]) -> None:
        self.reported.extend(CheckRecord.from_payload(p) for p in payloads)

    @property
    def results(self) -> list[CheckRecord]:
        """Every check of the run in collection order (whichever process ran it)."""
        return sorted(self.reported, key=lambda r: r.order)

    # -- reports -----------------------------------------------------------------

    @property
    def writes_reports(self) -> bool:
        """Whether this process prints the summary and writes the reports: rank 0 of a launch, or the only process.

        Every rank reaches the same verdicts (KL checks share their results), so one set of reports is complete.
        """
        return self.parallel is None or self.parallel.rank == 0

    def close(self) -> None:
        """End of the run: release the process group this session created (under torchrun)."""
        if self.parallel is not None:
            self.parallel.close()

    def model_info(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The base and the candidates (SPEC and fingerprint) that the recorded checks compared."""
        base: dict[str, Any] | None = None
        cands: dict[str, dict[str, Any]] = {}
        for rec in self.results:
            base = base or rec.base_info
            info = rec.candidate_info or {"spec": rec.candidate, "fingerprint": None}
            if info["spec"] not in cands or cands[info["spec"]]["fingerprint"] is None:
                cands[info["spec"]] = info
        return base, list(cands.values())

    def report_paths(self) -> list[Path]:
        """Every file this run's reports may write: the JSON and Markdown reports and the plots beside them."""
        from .plots import FIGURES

        targets = [p for p in (self.settings.report_json, self.settings.report_md) if p is not None]
        plots = [targets[0].parent / f"{targets[0].stem}-{suffix}.png" for suffix, _ in FIGURES] if targets else []
        return targets + plots

    def remove_old_reports(self) -> None:
        """Delete the report files of an earlier run at the start of this one.

        Reports are written atomically at the end; a run killed in between
        then leaves no report at all, never the last run's verdict in its place.
        """
        for path in self.report_paths():
            try:
                path.unlink(missing_ok=True)
            except IsADirectoryError:
                pass  # settings refuse a directory report path; a plot name taken by a directory is left alone
            except OSError as exc:
                raise ModelLoadError(f"cannot remove the old report {path}: {exc.strerror or exc}") from None

    def _history(self) -> Any:
        """The run history of this run (scoped to its project), or None when it is off."""
        from .history import History

        where = self.settings.history_location
        return None if where is None else History(where, project=self.settings.project)

    def check_history(self) -> None:
        """At the start of the run (by the process that writes the history): a file that cannot be read is
        moved aside, never deleted, and a fresh one starts; one of another schema, or a server that cannot be
        reached, is left alone, unused.

        Either way the gate runs: retention checks measure instead of forecasting, and every report says so.
        """
        from .history import HistoryError, HistoryUnavailable, HistoryUnreadable

        history = self._history()
        if history is None or (history.path is not None and not history.path.exists()):
            return
        try:
            history.verify()
        except HistoryUnreadable as exc:
            self.heal_history(str(exc))
        except HistoryUnavailable as exc:
            self.history_unusable = f"{exc}; this run neither reads nor records it"
            self.history_unavailable = True
        except (HistoryError, OSError) as exc:
            self.history_unusable = f"{exc}; it is left as it is, and this run neither reads nor writes it"

    def notices(self) -> list[str]:
        """The run's own problems, for every surface (terminal, JSON, Markdown)."""
        unusable = None if self.history_unusable is None else f"the run history is not used: {self.history_unusable}"
        return [n for n in (self.history_notice, unusable) if n is not None]

    def heal_history(self, why: str) -> None:
        """Move the unreadable history aside (once) and say so on every surface."""
        history = self._history()
        if history is None or history.path is None or self.history_notice is not None:
            return
        if self.history_unusable is not None:
            return
        path = history.path
        try:
            aside = history.move_aside()
        except OSError as exc:
            self.history_unusable = f"{why}; it could not be moved aside ({exc.strerror or exc})"
            return
        self.history_status["moved_aside"] = str(aside)  # the JSON report's history.moved_aside
        self.history_notice = (
            f"the run history could not be read ({why}): moved aside to {aside}, and a fresh one started at {path}; "
            "retention checks measure instead of forecasting until it has runs again"
        )

    def history_rows(self, series: Sequence[str], base_fingerprint: str | None) -> list[Any]:
        """The history's rows of these series and this base (empty when there is none, it is off, or it cannot
        be read: a check then measures instead of forecasting, with a warning)."""
        from .history import HistoryError, HistoryUnreadable

        history = self._history()
        if history is None or self.history_unusable is not None:
            return []
        try:
            if not history.exists():
                return []
            rows: list[Any] = history.rows(series=series, base_fingerprint=base_fingerprint, records=False)
            return rows
        except HistoryUnreadable as exc:  # damage: the writer moves the file aside at the end of the run
            context.warn(f"{HISTORY_UNREADABLE} ({exc}); this check is measured")
            self.history_damaged = str(exc)
            return []
        except HistoryError as exc:  # a lock, a server gone away: left alone
            context.warn(f"forgetguard could not use the run history ({exc}); this check is measured")
            return []

    def mark_incomplete(self, reason: str) -> None:
        """The run did not finish (interrupted, stopped early): its reports and history row say so."""
        self.incomplete_reason = reason

    def write_history(self, rootdir: Path) -> str | None:
        """Add this run's records to the run history, in one transaction; returns where (None: nothing written).

        An unfinished run is kept, marked incomplete: shown by ``forgetguard history``, never calibrated on.
        """
        from .history import HistoryError, HistoryUnavailable, HistoryUnreadable, Run, git_commit

        history = self._history()
        path = None if history is None else history.location
        records = self.results
        if history is None:
            self.history_status.update(path=None, written=False, reason="no history (--fg-no-history or --fg-no-cache)")
            return None
        if not records:
            self.history_status.update(path=str(path), written=False, reason="no forgetguard checks ran")
            return None
        if self.history_unusable is not None:
            self.history_status.update(path=str(path), written=False, reason=self.history_unusable)
            raise (HistoryUnavailable if self.history_unavailable else HistoryError)(self.history_unusable)
        damaged = self.history_damaged or next(  # found by this process, or by an xdist worker's check
            (w for r in records for w in r.details.get("warnings", []) if str(w).startswith(HISTORY_UNREADABLE)), None
        )
        if damaged is not None:
            self.heal_history(str(damaged))
        run = Run.now(
            git_commit=git_commit(rootdir), complete=self.incomplete_reason is None, reason=self.incomplete_reason
        )
        try:
            history.add_run(run, records)
        except HistoryUnreadable as exc:  # damaged where this run's reads did not look: heal, write afresh
            self.heal_history(str(exc))
            history.add_run(run, records)
        self.history_status.update(path=str(path), written=True, reason=None)
        return str(path)

    def write_reports(self) -> tuple[list[str], list[str]]:
        """Write the requested reports, and plots next to them; returns (what was written, what could not be
        written and why). A report that fails does not stop the others."""
        written: list[str] = []
        problems: list[str] = []
        records = self.results
        base, cands = self.model_info()

        def attempt(path: Path, write: Callable[[], Any], what: str) -> bool:
            try:
                write()
            except (OSError, ForgetguardError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                problems.append(f"the {what} {path} could not be written: {why}")
                return False
            written.append(str(path))
            return True

        targets = [p for p in (self.settings.report_json, self.settings.report_md) if p is not None]
        plots: list[str] = []
        if targets and records:
            from .plots import plots_available, write_plots

            if plots_available():
                folder, found = targets[0].parent, []
                if attempt(
                    folder, lambda: found.extend(write_plots(records, folder, prefix=targets[0].stem)), "plots in"
                ):
                    written.pop()  # the folder: the plots themselves are listed
                    plots = [str(p) for p in found]
        json_path, md_path = self.settings.report_json, self.settings.report_md
        if json_path is not None:
            data = json_report(records, base, cands, self.incomplete_reason, self.history_status, self.notices())
            attempt(json_path, lambda: write_json(json_path, data), "JSON report")
        if md_path is not None:
            text = markdown_report(records, base, plots=[os.path.basename(p) for p in plots], candidates=cands,
                                   incomplete_reason=self.incomplete_reason, notices=self.notices())  # fmt: skip
            attempt(md_path, lambda: write_atomic(md_path, text), "Markdown report")
        return written + plots, problems


class RunForecasts:
    """What a retention check's forecast needs from the run: its KL checks so far, and the run history.

    The history is read once, at the first forecast, and never written during the run (a run's
    records are added at its end, in one transaction).
    """

    def __init__(self, session: ForgetguardSession) -> None:
        self.session = session
        self._rows: dict[Any, list[Any]] = {}  # per pair of series, read at its first forecast
        # The KL checks of the suite whose item runs now (set by the item, emptied for fixture tests).
        self.suite_kl: dict[str, dict[str, Any]] = {}
        self._measured_kl: list[CheckRecord] = []  # KL records retention checks measured for forecasts

    @property
    def skip_allowed(self) -> bool:
        return not self.session.settings.no_forecast_skip

    def kl_record(self, check: str, candidate: str) -> CheckRecord | None:
        for rec in [*reversed(self.session.records), *reversed(self._measured_kl)]:
            if rec.kind == "kl" and rec.name == check and rec.candidate == candidate:
                return rec
        return None

    def keep_kl_record(self, rec: CheckRecord) -> None:
        self._measured_kl.append(rec)

    def kl_options(self, check: str) -> dict[str, Any] | None:
        options = self.suite_kl.get(check)
        return None if options is None else dict(options)

    def points(
        self, kl_series: str, retention_series: str, base_fingerprint: str | None, exclude_candidate: str | None
    ) -> list[tuple[float, float]]:
        from .calibration import PairKey, points

        key = PairKey(kl_series, retention_series, base_fingerprint)
        if key not in self._rows:  # only this pair's rows: the gate's memory does not grow with the history
            self._rows[key] = self.session.history_rows([kl_series, retention_series], base_fingerprint)
        return [(p.kl, p.drop) for p in points(self._rows[key], key, exclude_candidate)]


def run_check(fg: "Forgetguard", check: "CheckSpec") -> Any:
    """Run a suite check through the same gate the fixtures use (the runner of its kind)."""
    __tracebackhide__ = True
    from .checks import SUITE_RUNNERS

    return SUITE_RUNNERS[check.kind](fg, check.name, check.options)
