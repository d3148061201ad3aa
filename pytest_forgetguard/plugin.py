"""The pytest11 entry point: options, hooks and fixtures, nothing else.

Everything here hands over to :class:`~pytest_forgetguard.session.ForgetguardSession`.
Without ``--forgetguard`` the plugin is inert: no torch import, and
forgetguard tests are skipped with a reason saying how to enable them.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from . import context
from .errors import CheckFailed, ForgetguardError, headline
from .session import ForgetguardSession
from .settings import SettingsError, device_problem, resolve
from .stash import HISTORY_KEY, ORDER_KEY, PROGRESS_KEY, PYTEST_SESSION_KEY, QUIET_KEY, SESSION_KEY

if TYPE_CHECKING:
    from .comparison import Forgetguard
    from .distributed import DataParallel
    from .models import ModelHandle

# Numbers of a check attached to its test as JUnit XML properties.
_PROPERTY_KEYS = ("value", "budget", "ci_low", "ci_high", "n", "base_value", "delta", "p_value")
SKIP_REASON = "forgetguard is off: run pytest with --forgetguard to enable it"


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Every option from the one table (:data:`pytest_forgetguard.options.OPTIONS`)."""
    from .options import OPTIONS

    group = parser.getgroup("forgetguard", "forgetguard: gate fine-tunes on drift from their base")
    for o in OPTIONS:
        if o.kind == "flag":
            group.addoption(o.flag, action="store_true", dest=o.dest, help=o.full_help())
        elif o.kind == "list":
            group.addoption(o.flag, action="append", dest=o.dest, metavar=o.metavar, default=None, help=o.full_help())
        else:
            group.addoption(o.flag, dest=o.dest, metavar=o.metavar, help=o.full_help())
        if o.ini:
            ini_type = {"flag": "bool", "list": "linelist"}.get(o.kind)
            default = {"flag": False, "list": []}.get(o.kind)
            parser.addini(o.ini, type=ini_type, default=default, help=o.help)  # type: ignore[arg-type]


@pytest.hookimpl(tryfirst=True)  # before pytest's junitxml plugin reads --junitxml (see _launch)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "forgetguard: a forgetguard check (needs --forgetguard)")
    from .options import OPTIONS

    cli = {o.field: config.getoption(o.dest) for o in OPTIONS}
    ini: dict[str, Any] = {o.field: config.getini(o.ini) for o in OPTIONS if o.ini}
    ini_dir = Path(config.inipath).parent if config.inipath else None
    try:
        settings = resolve(cli, os.environ, ini, ini_dir)
    except SettingsError as exc:
        raise pytest.UsageError(f"forgetguard: {exc}") from None
    if settings.project is None:  # several repositories share one history without mixing their series
        settings = dataclasses.replace(settings, project=config.rootpath.name)

    if settings.enabled:
        problem = device_problem(settings.device)
        if problem is not None:
            raise pytest.UsageError(f"forgetguard: --fg-device: {problem}")
        trap = _rootdir_trap(config)
        if trap is not None:
            raise pytest.UsageError(f"forgetguard: {trap}")

    def load_model(spec: str, device: str, dtype: str) -> Any:
        return config.hook.pytest_forgetguard_load_model(spec=spec, device=device, dtype=dtype)

    if settings.enabled:
        from . import progress

        # Third-party progress bars and known-harmless warnings, while forgetguard's own work runs: not
        # shown, unless -vv asks for everything.
        config.stash[QUIET_KEY] = progress.set_quiet(config.get_verbosity() < 2)
    parallel = _launch(config) if settings.enabled else None
    session = config.stash[SESSION_KEY] = ForgetguardSession(
        settings, custom_loader=load_model, warn=context.warn, parallel=parallel
    )
    config.pluginmanager.register(_RecordCollector(session), "forgetguard-records")
    if settings.enabled:
        _catch_sigterm(config)


def _catch_sigterm(config: pytest.Config) -> None:
    """SIGTERM (a CI job cancelled, a timeout) ends the run like Ctrl-C: pytest finishes the session, and
    the reports and the history say the run was interrupted instead of vanishing or looking whole."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    config.add_cleanup(restore)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Whether the run finished: the reports and the history of an interrupted run say so."""
    fg = session.config.stash.get(SESSION_KEY, None)
    if fg is None or not fg.settings.enabled:
        return
    reason = None
    stop = session.shouldfail or session.shouldstop  # -x / --maxfail set one of them, with why
    if isinstance(stop, str) and stop:
        reason = f"stopped early: {stop}"
    elif exitstatus == pytest.ExitCode.INTERRUPTED:
        reason = "interrupted (Ctrl-C or SIGTERM)"
    elif exitstatus == pytest.ExitCode.INTERNAL_ERROR:
        reason = "pytest stopped on an internal error"
    if reason is not None:
        fg.mark_incomplete(reason)


# Options whose value is a path. pytest chooses its rootdir and config file from the paths among its
# arguments before any plugin can say which are option values.
_PATH_OPTIONS = ("--fg-base", "--fg-candidate", "--fg-cache-dir", "--fg-report-json", "--fg-report-md")


def _rootdir_trap(config: pytest.Config) -> str | None:
    """Why pytest's rootdir came from a path given as a forgetguard option's value (None when it did not).

    ``--fg-base ../other/model`` is two arguments; pytest takes the second for a path to test and
    may find ``../other/pyproject.toml`` as its config: another project's settings, and test ids
    that start ``../other``. ``--fg-base=../other/model`` is one argument, which pytest leaves alone.
    """
    args = list(config.invocation_params.args)
    if any(a in ("-c", "--config-file", "--rootdir") or a.startswith(("--rootdir=", "--config-file=")) for a in args):
        return None  # the user chose
    here = config.invocation_params.dir
    root = config.rootpath
    if here.is_relative_to(root):
        return None  # the usual case: the rootdir holds the folder pytest was started in
    for flag, value in zip(args, args[1:]):
        given = here / value
        if flag not in _PATH_OPTIONS or not given.exists():
            continue
        # pytest places its rootdir by the path as written, without following symbolic links: a link into
        # another project takes pytest there. Compare the path as written and as resolved.
        as_written = Path(os.path.abspath(given))
        if as_written.is_relative_to(root) or given.resolve().is_relative_to(root.resolve()):
            config_file = f" and {config.inipath} as its configuration" if config.inipath else ""
            link = f" (a symbolic link to {root.resolve()})" if root.resolve() != Path(os.path.abspath(root)) else ""
            return (
                f"pytest took {root}{link} as its rootdir{config_file} because {flag} {value} is written as two "
                f"arguments (pytest reads the value as a path to test). Write {flag}={value} (one argument), "
                "or pass --rootdir / -c to choose"
            )
    return None


def _launch(config: pytest.Config) -> "DataParallel | None":
    """The torchrun / accelerate launch this process belongs to (a ``DataParallel``), or None.

    Only the environment is read here: the process group starts with the first KL check.
    """
    from .distributed import DataParallel, DistributedError, Launch

    try:
        launch = Launch.from_environ(os.environ)
    except DistributedError as exc:
        raise pytest.UsageError(f"forgetguard: {exc}") from None
    if launch is None:
        return None
    if _is_xdist_worker(config) or getattr(config.option, "dist", "no") != "no":
        raise pytest.UsageError(
            "forgetguard: pytest-xdist (-n) cannot run inside a torchrun launch: the ranks already share "
            "each KL check's prompts; drop -n, or run without torchrun"
        )
    if launch.rank != 0:
        # Every rank runs the same tests to the same outcomes; rank 0 writes the one JUnit file
        # (several processes writing one path would interleave).
        config.option.xmlpath = None
    return DataParallel(launch)


def _writes_reports(config: pytest.Config) -> bool:
    """Only one process prints the summary and writes reports: not an xdist worker, not a rank other than 0."""
    return not _is_xdist_worker(config) and config.stash[SESSION_KEY].writes_reports


def pytest_sessionstart(session: pytest.Session) -> None:
    """Remove the reports of an earlier run (a run killed before it writes its own must leave none, not a
    stale PASS), and show progress of model work on the terminal (not on xdist workers or ranks other
    than 0: their output is lost or repeats rank 0's)."""
    config = session.config
    fg = config.stash[SESSION_KEY]
    if not fg.settings.enabled or not _writes_reports(config):
        return
    config.stash[PYTEST_SESSION_KEY] = session  # to make the exit status non-zero when a report cannot be written
    fg.remove_old_reports()
    fg.check_history()  # before xdist starts its workers (its sessionstart runs last): they read it
    if config.get_verbosity() < 0:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        from . import progress

        tw = config.get_terminal_writer()
        tty = tw.hasmarkup and sys.stdout.isatty()
        capture = config.pluginmanager.get_plugin("capturemanager")
        sink = progress.TerminalProgress(reporter, tty=tty, capture=capture, verbose=config.get_verbosity(), tw=tw)
        config.stash[PROGRESS_KEY] = progress.set_sink(sink)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    from .suite import is_suite_file

    if is_suite_file(file_path):
        from .collection import SuiteFile

        return SuiteFile.from_parent(parent, path=file_path)
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    session = metafunc.config.stash[SESSION_KEY]
    specs = session.candidate_specs()
    if session.settings.enabled and len(specs) > 1 and "candidate_model" in metafunc.fixturenames:
        from .records import candidate_id

        ids = [candidate_id(s) for s in specs]
        metafunc.parametrize("candidate_model", specs, indirect=True, scope="session", ids=ids)


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_collection_finish(session: pytest.Session) -> None:
    # Reports list checks in collection order: every xdist worker collects the same items.
    session.config.stash[ORDER_KEY] = {item.nodeid: i for i, item in enumerate(session.items)}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the checks a test ran to its report: JUnit XML properties, and the records themselves
    (plain data, so pytest-xdist carries them to the controller, which writes the reports)."""
    report = yield
    crash = getattr(report.longrepr, "reprcrash", None)
    if call.excinfo is not None and isinstance(call.excinfo.value, (CheckFailed, ForgetguardError)) and crash:
        # A test's failed check: one headline in the short summary and JUnit, the whole message above.
        crash.message = f"{call.excinfo.typename}: {headline(str(call.excinfo.value))}"
    session = item.config.stash[SESSION_KEY]
    order = item.config.stash.get(ORDER_KEY, {})
    new = session.take_new_records(order.get(item.nodeid, len(order)))
    if new:
        for rec in new:
            rec.nodeid = item.nodeid
            rec.file = item.nodeid.split("::", 1)[0]  # the suite file or test module, as pytest names it
            props = [(f"forgetguard.{rec.name}.{k}", getattr(rec, k)) for k in _PROPERTY_KEYS]
            props.append((f"forgetguard.{rec.name}.verdict", rec.verdict))
            if rec.details.get("decided_by"):
                props.append((f"forgetguard.{rec.name}.decided_by", rec.details["decided_by"]))
            for prop in props:
                if prop[1] is not None:
                    item.user_properties.append(prop)
                    report.user_properties.append(prop)
        report.forgetguard_records = [rec.to_payload() for rec in new]  # type: ignore[attr-defined]
    return report


class _RecordCollector:
    """Collects the check records carried by test reports (this process's, or xdist workers')."""

    def __init__(self, session: ForgetguardSession) -> None:
        self.session = session

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        payloads = getattr(report, "forgetguard_records", None)
        if payloads:
            self.session.add_reported(payloads)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is None or not session.reported or not _writes_reports(config):
        return
    from .report import terminal_lines

    terminalreporter.write_sep("=", "forgetguard")
    if session.incomplete_reason is not None:
        terminalreporter.write_line(
            f"INCOMPLETE run ({session.incomplete_reason}): the verdicts below are those of the checks that ran, "
            "not the gate's",
            red=True,
            bold=True,
        )
    for line, verdict in terminal_lines(session.results):
        colour = {} if verdict is None else ({"green": True} if verdict == "PASS" else {"red": True})
        terminalreporter.write_line(line, **colour)
    for notice in session.notices():
        terminalreporter.write_line(f"forgetguard: {notice}", yellow=True)
    _write_history(config, terminalreporter)  # first: the reports say whether the run was recorded
    _write_reports(config, terminalreporter)


def _write_reports(config: pytest.Config, terminalreporter: Any = None) -> None:
    """Write the requested reports; one that cannot be written is named with the OS error, and the run fails."""
    session = config.stash[SESSION_KEY]
    written, problems = session.write_reports()
    if terminalreporter is not None:
        for path in written:
            terminalreporter.write_line(f"forgetguard report written to {path}")
    for problem in problems:
        _fail_run(config, f"forgetguard: {problem}", terminalreporter)


def _fail_run(config: pytest.Config, message: str, terminalreporter: Any = None) -> None:
    """Say ``message`` and make the run's exit status non-zero (the checks' own verdicts stand in the output)."""
    if terminalreporter is not None:
        terminalreporter.write_line(message, red=True, bold=True)
    else:
        sys.stderr.write(message + "\n")
    session = config.stash.get(PYTEST_SESSION_KEY, None)
    if session is not None and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _write_history(config: pytest.Config, terminalreporter: Any = None) -> None:
    """Add the run's records to the run history (once, by the process that writes the reports)."""
    session = config.stash.get(SESSION_KEY, None)
    if session is None or not session.settings.enabled or not _writes_reports(config) or HISTORY_KEY in config.stash:
        return
    config.stash[HISTORY_KEY] = True
    from .errors import ForgetguardError

    try:
        where = session.write_history(config.rootpath)
    except (ForgetguardError, OSError) as exc:  # the run's verdicts stand; say why it is not remembered
        why = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else str(exc)
        session.history_status.update(path=str(session.settings.history_location), written=False, reason=why)
        message = f"forgetguard: the run history was not written: {why}"
        from .history import HistoryUnavailable

        # Asked for by name (--fg-history, ini, env): the run fails; a server that is down or refuses the
        # credentials is not the candidate's fault: the verdicts decide the exit status, the reports say why.
        if session.settings.history is not None and not isinstance(exc, HistoryUnavailable):
            _fail_run(config, message + " (the history was asked for explicitly: the run fails)", terminalreporter)
        elif terminalreporter is not None:
            terminalreporter.write_line(message, yellow=True)
        else:
            sys.stderr.write(message + "\n")
        return
    if where is not None and terminalreporter is not None and config.get_verbosity() >= 0:
        mark = "" if session.incomplete_reason is None else f", marked incomplete ({session.incomplete_reason})"
        terminalreporter.write_line(f"forgetguard run recorded in {where}{mark} (forgetguard history / calibrate)")


def pytest_unconfigure(config: pytest.Config) -> None:
    if PROGRESS_KEY in config.stash or QUIET_KEY in config.stash:
        from . import progress

        if PROGRESS_KEY in config.stash:
            progress.set_sink(config.stash[PROGRESS_KEY])
        if QUIET_KEY in config.stash:
            progress.set_quiet(config.stash[QUIET_KEY])
    session = config.stash.get(SESSION_KEY, None)
    # Reports are written by the terminal summary; with no terminal (or no
    # checks) make sure the requested files still exist.
    _write_history(config)
    if session is not None and session.settings.enabled and not session.reported and _writes_reports(config):
        _write_reports(config)
    if session is not None and session.parallel is not None:
        # Rank 0's summary and reports are out: flush them before the other ranks may exit.
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            session.close()
        except Exception as exc:  # the tests already show the failure; say why the ranks parted
            sys.stderr.write(f"forgetguard: rank {session.parallel.rank}: {type(exc).__name__}: {exc}\n")


def _session(request: pytest.FixtureRequest) -> ForgetguardSession:
    session = request.config.stash[SESSION_KEY]
    if not session.settings.enabled:
        pytest.skip(SKIP_REASON)
    return session


@pytest.fixture(scope="session")
def base_model(request: pytest.FixtureRequest) -> "ModelHandle":
    """The reference model: a lazily loaded handle (``.model``, ``.tokenizer``, ``.fingerprint``)."""
    return _session(request).base_handle()


@pytest.fixture(scope="session")
def candidate_model(request: pytest.FixtureRequest, base_model: "ModelHandle") -> "ModelHandle":
    """The model under test (parametrized when several ``--fg-candidate`` are given)."""
    session = _session(request)
    specs = session.candidate_specs()
    spec = getattr(request, "param", None) or (specs[0] if specs else None)
    return session.candidate_handle(spec)


@pytest.fixture
def forgetguard(
    request: pytest.FixtureRequest, base_model: "ModelHandle", candidate_model: "ModelHandle"
) -> Iterator["Forgetguard"]:
    """Checks of the candidate against the base: ``kl``/``assert_kl_budget``, ``retention``/``assert_retained``,
    ``drift``/``assert_drift`` (checks are named after the test unless given a ``name``)."""
    session = _session(request)
    if session.forecasts is not None:
        session.forecasts.suite_kl = {}  # a test module has no suite: no KL check to measure for a forecast
    yield session.forgetguard(candidate_model.label, name=request.node.nodeid)
