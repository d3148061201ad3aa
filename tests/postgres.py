"""A real PostgreSQL server for the tests: a throwaway cluster started once per test process.

Registered from tests/conftest.py (``pytest_plugins``). Fixtures:

- ``pg_server`` (session): a :class:`PgServer` on 127.0.0.1 and a free port, password (SCRAM) auth only,
  ``fsync=off``; stopped and deleted at the end of the session. Under pytest-xdist each worker starts its
  own (its own directory, its own free port), only if one of its tests asks for it.
- ``pg_url`` (function): ``postgresql://fg:<password>@127.0.0.1:<port>/<fresh database>``, an empty
  database owned by ``fg``, a role that is not a superuser. Dropped after the test.

Tests that use either are marked ``postgres`` (``-m postgres`` runs only them). Where no server binary
is found they skip and say how to get one. The server binaries are looked for in
``$FORGETGUARD_TEST_PG_BIN``, next to ``pg_ctl`` on PATH, in ``pg_config --bindir`` and in
``/usr/lib/postgresql/<version>/bin`` (Debian's ``postgresql`` package), newest first.
Running as root, the server runs as the ``postgres`` user (``runuser -u postgres --``): PostgreSQL
refuses to run as root.

``python tests/postgres.py`` prints the directory found and exits 0, or exits 1 (``.ci/run`` uses it to
decide whether to install PostgreSQL).
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

BIN_ENV = "FORGETGUARD_TEST_PG_BIN"
_TOOLS = ("initdb", "pg_ctl", "postgres")
HOW_TO_GET_ONE = (
    "install one (Debian/Ubuntu: apt-get install postgresql; .ci/run does it when run as root) "
    f"or set {BIN_ENV} to the directory that holds initdb, pg_ctl and postgres"
)


def _has_tools(directory: str | os.PathLike[str]) -> bool:
    return all(os.access(os.path.join(directory, tool), os.X_OK) for tool in _TOOLS)


def _version_key(directory: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", Path(directory).parent.name)) or (0,)


def find_bindir() -> Path | None:
    """The first directory that holds initdb, pg_ctl and postgres, or None."""
    explicit = os.environ.get(BIN_ENV)
    if explicit:
        # The directory, or one of the programs in it.
        where = Path(explicit)
        return where if _has_tools(where) else where.parent if _has_tools(where.parent) else None
    candidates: list[str] = []
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        # Where the program really is first: a symlink on PATH may stand for a whole installation.
        candidates += [os.path.dirname(os.path.realpath(pg_ctl)), os.path.dirname(pg_ctl)]
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            if done.returncode == 0 and done.stdout.strip():
                candidates.append(done.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for directory in candidates:
        if _has_tools(directory):
            return Path(directory)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    """A running PostgreSQL cluster: where it listens and its superuser (``user``/``password``)."""

    host: str
    port: int
    user: str
    password: str
    bindir: Path
    root: Path  # the temporary directory: data/, the unix socket, server.log
    passwords: dict[str, str] = field(default_factory=dict, repr=False)
    start_seconds: float = 0.0  # initdb + start, as measured by the fixture

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def url(self, db: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        """``postgresql://user:password@host:port/db``. ``user`` defaults to the superuser; ``password`` to the
        one this server knows for ``user`` (see :meth:`create_role`); ``password=""`` leaves it out of the URL
        (then libpq's PGPASSWORD or ~/.pgpass must supply one)."""
        user = user or self.user
        if password is None:
            password = self.passwords.get(user, "")
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(db, safe='')}"

    def env(self, user: str | None = None) -> dict[str, str]:
        """libpq's variables for this server (PGHOST, PGPORT, PGUSER, PGPASSWORD), to test URLs without a
        password."""
        user = user or self.user
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": user,
            "PGPASSWORD": self.passwords.get(user, ""),
        }

    def connect(self, db: str = "postgres", user: str | None = None, password: str | None = None) -> Any:
        """A psycopg connection (autocommit), by default the superuser's to the ``postgres`` database."""
        import psycopg

        return psycopg.connect(self.url(db, user, password), autocommit=True, connect_timeout=10)

    def create_role(self, name: str, password: str, *, superuser: bool = False) -> None:
        """A login role with this password (its password is updated if it exists)."""
        from psycopg import sql

        with self.connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL(verb + " ROLE {} WITH LOGIN {} PASSWORD {}").format(
                    sql.Identifier(name),
                    sql.SQL("SUPERUSER" if superuser else "NOSUPERUSER"),
                    sql.Literal(password),
                )
            )
        self.passwords[name] = password

    def create_database(self, name: str | None = None, owner: str | None = None) -> str:
        """A new empty database (a fresh name unless given), owned by ``owner`` (default: the superuser)."""
        from psycopg import sql

        name = name or f"fg_{uuid.uuid4().hex[:12]}"
        with self.connect() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner or self.user))
            )
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, closing any connection still open to it."""
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _as_server_user() -> list[str]:
    """The command prefix that runs a server program: nothing, or ``runuser -u postgres --`` as root."""
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip(
            "running as root: PostgreSQL refuses to run as root and there is no 'postgres' user to run it as "
            "(apt-get install postgresql creates one)"
        )
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without runuser (util-linux): cannot start PostgreSQL as 'postgres'")
    return [runuser, "-u", "postgres", "--"]


def _server_env() -> dict[str, str]:
    # libpq/server variables from the caller's environment (PGDATA, PGPORT, ...) must not steer this cluster.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _run(cmd: list[str], cwd: Path, what: str, log: Path | None = None) -> None:
    done = subprocess.run(cmd, cwd=cwd, env=_server_env(), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stdout}{done.stderr}{tail}")


def start_server(bindir: Path, attempts: int = 3) -> PgServer:
    """initdb a cluster in a new temporary directory and start it on a free port."""
    prefix = _as_server_user()
    base = tempfile.gettempdir()
    if prefix and not os.stat(base).st_mode & 0o001:  # a TMPDIR the postgres user cannot enter
        base = "/tmp"
    root = Path(tempfile.mkdtemp(prefix="forgetguard-pg-", dir=base))
    try:
        password = secrets.token_urlsafe(18)
        (root / "pwfile").write_text(password + "\n")
        if prefix:
            shutil.chown(root, "postgres", "postgres")
            shutil.chown(root / "pwfile", "postgres", "postgres")
        os.chmod(root, 0o700)
        _run(
            prefix
            + [
                str(bindir / "initdb"),
                "-D",
                str(root / "data"),
                "-U",
                "postgres",
                f"--pwfile={root / 'pwfile'}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            root,
            "initdb",
        )
        (root / "pwfile").unlink()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{root}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",  # concurrent gate runs, each with a few connections
            "shared_buffers": "32MB",
            "max_wal_size": "1GB",
            "logging_collector": "off",
        }
        with open(root / "data" / "postgresql.conf", "a") as conf:
            conf.write("\n# tests/postgres.py\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        log = root / "server.log"
        for attempt in range(attempts):
            # Another process can take the free port before the server binds it: then try another.
            port = _free_port()
            try:
                _run(
                    prefix
                    + [
                        str(bindir / "pg_ctl"),
                        "-D",
                        str(root / "data"),
                        "-l",
                        str(log),
                        "-o",
                        f"-p {port}",
                        "-w",
                        "-t",
                        "60",
                        "start",
                    ],
                    root,
                    "pg_ctl start",
                    log,
                )
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                continue
            server = PgServer("127.0.0.1", port, "postgres", password, bindir, root)
            server.passwords["postgres"] = password
            return server
        raise AssertionError("unreachable")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def stop_server(server: PgServer) -> None:
    try:
        subprocess.run(
            _as_server_user() + [str(server.bindir / "pg_ctl"), "-D", str(server.data_dir), "-m", "immediate", "stop"],
            cwd=server.root,
            env=_server_env(),
            capture_output=True,
            timeout=60,
        )
    finally:
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server for this test process (see the module's docstring)."""
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[postgresql]'")
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(f"no PostgreSQL server binary (initdb, pg_ctl, postgres) found: {HOW_TO_GET_ONE}")
    started = time.perf_counter()
    server = start_server(bindir)
    server.start_seconds = time.perf_counter() - started
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def _pg_fg_role(pg_server: PgServer) -> str:
    pg_server.create_role("fg", secrets.token_urlsafe(18))
    return "fg"


@pytest.fixture
def pg_url(pg_server: PgServer, _pg_fg_role: str) -> Iterator[str]:
    """A fresh, empty database owned by the non-superuser ``fg``: its URL, password included."""
    db = pg_server.create_database(owner=_pg_fg_role)
    yield pg_server.url(db, user=_pg_fg_role)
    pg_server.drop_database(db)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"pg_server", "pg_url"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


if __name__ == "__main__":
    import sys

    found = find_bindir()
    if found is None:
        print(f"no PostgreSQL server binary found: {HOW_TO_GET_ONE}", file=sys.stderr)
        sys.exit(1)
    print(found)
