"""The engine every kind of check shares: a base and a candidate, and how one check runs and is recorded.

A kind of check (:mod:`.kl`, :mod:`.retention`, :mod:`.drift`) is a mixin of
:class:`PairChecks` with its measurement (``kl()``) and its gate
(``assert_kl_budget()``). Every gate runs inside :meth:`PairChecks._running`,
which gives it

- a name, so an error of a model it finds broken says which check found it;
- its warnings, collected into its record (JSON and Markdown reports);
- both models usable: a model that failed an earlier check fails this one
  with the same error;
- a record in every outcome: a measurement that raises is recorded as an
  error before the exception goes on; a result is recorded as a pass or a
  failure by :meth:`CheckRun.finish`.

Example (a new kind of check, in its own module)::

    class PerplexityChecks(PairChecks):
        def assert_perplexity(self, texts, max_ratio, name=None):
            __tracebackhide__ = True
            with self._running(name, kind="perplexity", metric="ratio", budget=max_ratio) as run:
                result = measure_perplexity(self.base, self.candidate, texts)
                run.finish(result.to_record(run.name, run.candidate), passed=result.ratio <= max_ratio)
                ...
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .. import context
from ..errors import ForgetguardError, TokenizerMismatchError
from ..records import CheckRecord
from ..settings import DEFAULT_SEED


class ForecastSource(Protocol):
    """Where a retention check finds what a forecast needs: this run's KL checks and the run history.

    The session provides one (:class:`~pytest_forgetguard.session.RunForecasts`); without it, retention
    checks that ask for a forecast say there is none and run as usual.
    """

    @property
    def skip_allowed(self) -> bool:
        """False under ``--fg-no-forecast-skip``: every retention check runs."""

    def kl_record(self, check: str, candidate: str) -> CheckRecord | None:
        """The latest record of KL check ``check`` for ``candidate`` in this run (this process), if any."""

    def keep_kl_record(self, rec: CheckRecord) -> None:
        """Keep a KL record a retention check measured for its forecast, so the next one reuses it."""

    def kl_options(self, check: str) -> dict[str, Any] | None:
        """The options (``budget`` included) of the running suite's KL check ``check``, to measure it where
        it has not run in this process; None outside a suite."""

    def points(
        self, kl_series: str, retention_series: str, base_fingerprint: str | None, exclude_candidate: str | None
    ) -> list[tuple[float, float]]:
        """Past (KL, drop) points of this pair of series on this base, the candidate's own left out."""


if TYPE_CHECKING:
    from ..base_states import BaseStates
    from ..cache import ResultCache
    from ..distributed import DataParallel
    from ..models import ModelHandle


# More prompts (KL) or items (retention) than this give a warning with the work they cost: on a CPU that is
# hours, and a typo (a whole dataset as the prompt file, a missing limit) should not pass unnoticed.
LARGE_INPUT = 5_000


def check_number(name: str, value: Any, minimum: float = 0.0) -> float:
    """``value`` as a float, unless it is not a finite number >= ``minimum`` (a ``ValueError`` naming ``name``).

    >>> check_number("budget", 0.05)
    0.05
    >>> check_number("budget", float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: budget must be a finite number >= 0, got nan
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    return float(value)


def model_info(handle: "ModelHandle") -> dict[str, Any]:
    """What a report says about a model: its SPEC and, when it can be computed, its content fingerprint."""
    try:
        fingerprint: str | None = handle.fingerprint
    except ForgetguardError:
        fingerprint = None
    return {"spec": handle.label, "fingerprint": fingerprint}


@dataclass
class CheckRun:
    """One running check: its pending record (what was known before measuring) and whether it is recorded."""

    pending: CheckRecord
    record: Callable[[CheckRecord, bool, str | None], None] = field(repr=False)
    finished: bool = False

    @property
    def name(self) -> str:
        return self.pending.name

    @property
    def candidate(self) -> str:
        return self.pending.candidate

    def finish(self, rec: CheckRecord, passed: bool, message: str | None = None) -> None:
        """Record the check's result; ``message`` is a failure's explanation (kept in the record's details).

        ``passed`` is still refused for a non-finite value (:meth:`CheckRecord.settle`).
        """
        if message is not None:
            rec.details["message"] = message
        self.finished = True
        self.record(rec, passed, None)


class PairChecks:
    """Checks of ``candidate`` against ``base``: what every kind of check shares.

    ``record`` receives a :class:`~pytest_forgetguard.records.CheckRecord` for
    every gate (pass, fail or error); ``default_name`` names gates called
    without ``name`` (the fixture passes the running test's id). ``parallel``
    is set under torchrun: the ranks share each KL check's prompts. ``alpha``
    (``--fg-alpha``) overrides each retention check's own error rate.
    """

    def __init__(
        self,
        base: "ModelHandle",
        candidate: "ModelHandle",
        seed: int = DEFAULT_SEED,
        record: Callable[[CheckRecord], None] | None = None,
        default_name: str = "forgetguard",
        cache: "ResultCache | None" = None,
        warn: Callable[[str], None] | None = None,
        parallel: "DataParallel | None" = None,
        forecasts: ForecastSource | None = None,
        base_states: "BaseStates | None" = None,
        alpha: float | None = None,
        early_stop: bool = True,
    ) -> None:
        self.base = base
        self.candidate = candidate
        self.seed = seed
        self._sink = record or (lambda rec: None)
        self.default_name = default_name
        self.cache = cache
        self._warn = warn or context.warn
        self.parallel = parallel
        self.forecasts = forecasts
        self.base_states = base_states  # the base's KL passes, shared by every candidate (and across runs)
        self._compatible: dict[bool, int] = {}
        self.alpha = alpha  # --fg-alpha: every verdict's error rate, over a check's own alpha (None: not given)
        self.early_stop = early_stop  # False: --fg-no-early-stop, every retention item over a check's stop_early

    def __repr__(self) -> str:
        return f"<{type(self).__name__} base={self.base.label!r} candidate={self.candidate.label!r}>"

    # -- running one check -------------------------------------------------------------

    @contextlib.contextmanager
    def _running(self, name: str | None, kind: str, metric: str, budget: float | None = None) -> Iterator[CheckRun]:
        """Run one gate (see the module docstring); yields its :class:`CheckRun`."""
        __tracebackhide__ = True
        pending = CheckRecord(
            name=name or self.default_name, kind=kind, candidate=self.candidate.label, metric=metric, budget=budget
        )
        run = CheckRun(pending, self._record)
        with context.running_check(pending.name):
            try:
                self.base.ensure_usable()
                self.candidate.ensure_usable()
                yield run
            except Exception as exc:
                if not run.finished:  # a failure, or a warning turned error after it, is recorded already
                    run.finished = True
                    self._record(pending, False, f"{type(exc).__name__}: {exc}")
                raise

    @contextlib.contextmanager
    def _measuring(self) -> Iterator[None]:
        """Measurements called directly (``fg.kl(...)`` in a test) run as a check named after the test."""
        if context.current_check() is not None:
            yield
            return
        with context.running_check(self.default_name):
            yield
            self._model_notices()

    def _record(self, rec: CheckRecord, passed: bool, error: str | None) -> None:
        # At the end, not the start: a check whose input is bad (an empty prompt file) errors before
        # any model is touched, and the notices (which hash or load models) come with its record.
        self._model_notices(compare=error is None)
        rec.settle(passed, error)
        notes = context.current_notes()
        if notes:
            rec.details["warnings"] = notes
        rec.base_info, rec.candidate_info = model_info(self.base), model_info(self.candidate)
        self._sink(rec)

    # -- what every kind may need -------------------------------------------------------

    def _model_notices(self, compare: bool = True) -> None:
        """Warnings every check of this pair carries: a candidate identical to its base, adapter notices.

        ``compare=False`` (a check that errored) only repeats what is known: it does not hash models.
        """
        cand = self.candidate
        try:
            same = compare and not cand.is_adapter and self.base.fingerprint == cand.fingerprint  # base first
        except Exception:  # the check itself says what is wrong with a model; a notice never hides it
            same = False
        if same:
            message = (
                f"candidate {cand.label!r} is identical to the base {self.base.label!r} (same fingerprint "
                f"{cand.fingerprint}): every check passes trivially; is this the model you meant to test?"
            )
            if message not in cand.notices:
                cand.notices.append(message)
                self._warn(message)
        elif compare:
            from ..models.compat import precision_difference

            precision = precision_difference(self.base, cand)  # a bf16 copy of an fp32 base "drifts" by rounding
            if precision is not None and precision not in cand.notices:
                cand.notices.append(precision)
                self._warn(precision)
        for message in cand.notices:
            context.note(message)

    def _vocab(self, allow_vocab_mismatch: bool) -> int:
        """The vocabulary ids both models share (see :func:`~pytest_forgetguard.models.check_compatible`)."""
        from ..models import check_compatible

        if allow_vocab_mismatch not in self._compatible:
            try:
                vocab = check_compatible(self.base, self.candidate, allow_vocab_mismatch)
            except TokenizerMismatchError as exc:
                # No option makes this pair comparable: the candidate is unusable for every later check.
                raise self.candidate.fail(exc) from None
            self._compatible[allow_vocab_mismatch] = vocab
        return self._compatible[allow_vocab_mismatch]
