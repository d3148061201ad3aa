"""The state of one forgetguard run: settings, model handles, check records, reports.

Hooks and fixtures in :mod:`.plugin` are thin: they hand over to this object.
It never imports pytest, and loads nothing until a check needs a model.

Example::

    session = ForgetguardSession(settings)
    fg = session.forgetguard(base_spec=None, candidate_spec=None, name="my-check")
    fg.assert_kl_budget("prompts.jsonl", budget=0.05)
    session.write_reports()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import ForgetguardError, ModelLoadError
from .records import CheckRecord
from .report import json_report, markdown_report, write_atomic, write_json
from .settings import Settings

if TYPE_CHECKING:
    from .cache import ResultCache
    from .comparison import Forgetguard
    from .models import CustomLoader, ModelHandle, ModelStore
    from .suite import CheckSpec


class ForgetguardSession:
    def __init__(
        self,
        settings: Settings,
        custom_loader: "CustomLoader | None" = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.records: list[CheckRecord] = []
        self._custom_loader = custom_loader
        self._warn = warn
        self._store: ModelStore | None = None
        self._cache: ResultCache | None = None

    @property
    def store(self) -> "ModelStore":
        if self._store is None:
            from .models import ModelStore

            device = self.settings.resolved_device()
            self._store = ModelStore(
                device=device,
                dtype=self.settings.resolved_dtype(device),
                cache_dir=self.settings.cache_dir,
                trust_remote_code=self.settings.trust_remote_code,
                custom_loader=self._custom_loader,
                warn=self._warn,
            )
        return self._store

    @property
    def cache(self) -> "ResultCache":
        """Base-model results shared by every check of the session (on disk unless --fg-no-cache)."""
        if self._cache is None:
            from .cache import ResultCache

            root = None if self.settings.cache_dir is None else self.settings.cache_dir / "results"
            self._cache = ResultCache(root, warn=self._warn)
        return self._cache

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

    def base_handle(self, suite_base: str | None = None) -> "ModelHandle":
        return self.store.get(self.base_spec(suite_base), role="base")

    def candidate_handle(self, spec: str | None, suite_base: str | None = None) -> "ModelHandle":
        if not spec:
            raise ModelLoadError(
                "no candidate model: pass --fg-candidate SPEC, set FORGETGUARD_CANDIDATE, set "
                "forgetguard_candidate in the ini file, or give models.candidate in the suite"
            )
        base = self.base_handle(suite_base)
        return self.store.get(spec, role="candidate", base=base)

    def forgetguard(self, candidate_spec: str | None, name: str, suite_base: str | None = None) -> "Forgetguard":
        from .comparison import Forgetguard

        base = self.base_handle(suite_base)
        cand = self.candidate_handle(candidate_spec, suite_base)
        return Forgetguard(
            base,
            cand,
            seed=self.settings.seed,
            record=self.records.append,
            default_name=name,
            cache=self.cache,
            warn=self._warn,
        )

    def record_error(self, name: str, kind: str, candidate: str, exc: BaseException) -> None:
        """Record a check that failed before it could measure anything."""
        self.records.append(
            CheckRecord(name=name, kind=kind, candidate=candidate, metric="-", error=f"{type(exc).__name__}: {exc}")
        )

    # -- reports -----------------------------------------------------------------

    def _model_info(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        if self._store is None:
            return None, []
        base, cands = None, []
        for (role, *_), handle in self.store._handles.items():
            try:
                fp: str | None = handle.fingerprint
            except ForgetguardError:
                fp = None
            info = {"spec": handle.label, "fingerprint": fp}
            if role == "base":
                base = info
            elif role == "candidate":
                cands.append(info)
        return base, cands

    def write_reports(self) -> list[str]:
        written = []
        base, cands = self._model_info()
        if self.settings.report_json is not None:
            write_json(self.settings.report_json, json_report(self.records, base, cands))
            written.append(str(self.settings.report_json))
        if self.settings.report_md is not None:
            write_atomic(self.settings.report_md, markdown_report(self.records, base))
            written.append(str(self.settings.report_md))
        return written


def run_check(fg: "Forgetguard", check: "CheckSpec") -> Any:
    """Run a suite check through the same API the fixtures use."""
    __tracebackhide__ = True
    opts = dict(check.options)
    if check.kind == "kl":
        prompts, budget = opts.pop("prompts"), opts.pop("budget")
        return fg.assert_kl_budget(prompts, budget, name=check.name, **opts)
    if check.kind == "drift":
        return fg.assert_drift(name=check.name, **opts)
    task = opts.pop("task")
    return fg.assert_retained(task, name=check.name, **opts)
