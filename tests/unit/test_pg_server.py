"""The test suite's PostgreSQL server (tests/postgres.py): it starts, it is a real server, it checks passwords,
and each pg_url is a database of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from postgres import PgServer, find_bindir

# Tests that use pg_server or pg_url are marked `postgres` by tests/postgres.py.


def test_a_fresh_database_takes_tables(pg_url: str) -> None:
    import psycopg

    parts = urlsplit(pg_url)
    assert (parts.scheme, parts.hostname, parts.username) == ("postgresql", "127.0.0.1", "fg")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
        conn.execute("CREATE TABLE runs (id text PRIMARY KEY, value double precision)")
        conn.execute("INSERT INTO runs VALUES ('a', 1.5)")
        conn.commit()
        assert conn.execute("SELECT value FROM runs").fetchall() == [(1.5,)]
        # fg owns the database, and is not a superuser.
        owner, superuser = conn.execute(
            "SELECT pg_get_userbyid(datdba), (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
            " FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        assert (owner, superuser) == ("fg", False)


def test_a_wrong_password_is_refused(pg_server: PgServer, pg_url: str) -> None:
    import psycopg

    db = urlsplit(pg_url).path.lstrip("/")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_server.url(db, user="fg", password="not-the-password"), connect_timeout=10)
    # No password at all: refused too (scram-sha-256 for every connection, the unix socket's included).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSFILE"] = os.devnull
    probe = (
        "import psycopg, sys\n"
        "try:\n    psycopg.connect(sys.argv[1], connect_timeout=10)\n"
        "except psycopg.OperationalError as e:\n    print(e)\n    sys.exit(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, pg_server.url(db, user="fg", password="")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "password" in done.stdout
    # The right password from libpq's variables, not the URL.
    done = subprocess.run(
        [sys.executable, "-c", probe, pg_server.url(db, user="fg", password="")],
        env={**env, **pg_server.env("fg")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def second_pg_url(pg_url: str, pg_server: PgServer) -> str:
    db = pg_server.create_database(owner="fg")
    return pg_server.url(db, user="fg")


def test_two_databases_are_separate(pg_url: str, second_pg_url: str) -> None:
    import psycopg

    assert pg_url != second_pg_url
    with psycopg.connect(pg_url) as first, psycopg.connect(second_pg_url) as second:
        first.execute("CREATE TABLE runs (id text)")
        first.execute("INSERT INTO runs VALUES ('only here')")
        first.commit()
        assert second.execute("SELECT to_regclass('public.runs')").fetchone() == (None,)
        second.execute("CREATE TABLE runs (id text)")
        second.commit()
        assert second.execute("SELECT count(*) FROM runs").fetchone() == (0,)


def test_the_server_starts_fast_and_listens_where_it_says(pg_server: PgServer) -> None:
    import psycopg

    # Measured on a 2-core machine: about 1 s (initdb without fsync, then pg_ctl start -w).
    assert 0 < pg_server.start_seconds < 30, pg_server.start_seconds
    assert pg_server.host == "127.0.0.1" and pg_server.port > 0
    with pg_server.connect() as conn:
        assert conn.execute("SHOW fsync").fetchone() == ("off",)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (True,)
    # The unix socket lives in the server's own directory, and asks for a password too.
    sock = psycopg.connect(
        host=str(pg_server.socket_dir),
        port=pg_server.port,
        user=pg_server.user,
        password=pg_server.password,
        dbname="postgres",
        connect_timeout=10,
    )
    sock.close()


def test_the_binary_search_follows_the_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty directory: nothing found, whatever is installed elsewhere (so the fixture skips, with its reason).
    monkeypatch.setenv("FORGETGUARD_TEST_PG_BIN", str(tmp_path))
    assert find_bindir() is None
    for tool in ("initdb", "pg_ctl", "postgres"):
        (tmp_path / tool).write_text("#!/bin/sh\n")
        (tmp_path / tool).chmod(0o755)
    assert find_bindir() == tmp_path
    monkeypatch.setenv("FORGETGUARD_TEST_PG_BIN", str(tmp_path / "pg_ctl"))
    assert find_bindir() == tmp_path


def test_without_a_server_binary_the_tests_skip_and_say_how_to_get_one(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORGETGUARD_TEST_PG_BIN", str(tmp_path))
    pytester.makepyfile("def test_needs_a_server(pg_url):\n    raise AssertionError('ran')\n")
    result = pytester.runpytest("-p", "postgres", "-rs", "-m", "postgres")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no PostgreSQL server binary*apt-get install postgresql*FORGETGUARD_TEST_PG_BIN*"])
