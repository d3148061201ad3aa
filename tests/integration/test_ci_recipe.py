"""The CI recipes in docs/ci/ must keep working: valid YAML, every pytest option and every `forgetguard`
command they use exists, they keep the history, post one comment and keep the artifacts."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
GITHUB = ROOT / "docs" / "ci" / "github-actions.yml"
GITLAB = ROOT / "docs" / "ci" / "gitlab-ci.yml"
CI_DOC = ROOT / "docs" / "ci.md"
MARKER = "<!-- pytest-forgetguard report -->"
SQLITE_HISTORY = "fg-history/history.sqlite"


def github_steps() -> dict[str, dict]:
    workflow = yaml.safe_load(GITHUB.read_text())
    return {step.get("name") or step.get("uses"): step for step in workflow["jobs"]["gate"]["steps"]}


def gitlab_job() -> dict:
    return yaml.safe_load(GITLAB.read_text())["forgetguard"]


def shell_texts(recipe: Path) -> list[str]:
    """Every shell script the recipe runs (GitHub's `run:` steps, GitLab's script lines), or ci.md's bash blocks."""
    if recipe == CI_DOC:
        return re.findall(r"```bash\n(.*?)```", recipe.read_text(), re.S)
    if recipe == GITHUB:
        return [step["run"] for step in github_steps().values() if "run" in step]
    job = gitlab_job()
    return [line for key in ("before_script", "script", "after_script") for line in job.get(key, [])]


def commands(script: str) -> list[str]:
    """Simple commands: continuation lines joined, heredoc bodies and comments dropped, split at && || ; |."""
    script = re.sub(r"<<'?(\w+)'?\n.*?\n\1(\n|$)", "\n", script, flags=re.S)
    script = re.sub(r"\\\n\s*", " ", script)
    found = []
    for line in script.splitlines():
        if line.strip().startswith("#"):
            continue
        found += [part.strip() for part in re.split(r"&&|\|\||;|\|", line) if part.strip()]
    return found


def pytest_commands(recipe: Path) -> list[str]:
    return [c for text in shell_texts(recipe) for c in commands(text) if re.match(r"(python3? -m )?pytest\s", c)]


def forgetguard_commands(recipe: Path) -> list[str]:
    return [c for text in shell_texts(recipe) for c in commands(text) if re.match(r"forgetguard\s", c)]


def heredoc(script: str) -> str:
    return re.search(r"<<'EOF'\n(.*?)\nEOF(\n|$)", script, re.S).group(1)


@pytest.mark.parametrize("recipe", [GITHUB, GITLAB, CI_DOC], ids=lambda p: p.name)
def test_every_pytest_option_the_recipe_passes_exists(recipe: Path, pytester: pytest.Pytester) -> None:
    gates = pytest_commands(recipe)
    assert gates, "the recipe runs no pytest"
    if recipe != CI_DOC:
        assert len(gates) == 1, gates
        flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+|-[a-zA-Z])\b", gates[0]))
        required = {"--forgetguard", "--fg-base", "--fg-candidate", "--fg-report-md", "--fg-report-json", "-n"}
        assert required | {"--fg-history", "--fg-project"} <= flags
    flags = {f for gate in gates for f in re.findall(r"(?<![\w-])(--[a-z][a-z-]+|-[a-zA-Z])\b", gate)}
    help_text = pytester.runpytest("--help").stdout.str()
    for flag in sorted(flags):
        assert re.search(rf"(^|[\s,]){re.escape(flag)}([\s=,]|$)", help_text, re.M), f"{flag} is not a pytest option"


def forgetguard_main():
    """The `forgetguard` command, as pyproject.toml declares it ([project.scripts])."""
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["forgetguard"]
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


@pytest.mark.parametrize("recipe", [GITHUB, GITLAB, CI_DOC], ids=lambda p: p.name)
def test_every_forgetguard_command_the_recipe_runs_exists(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = forgetguard_commands(recipe)
    assert runs, "the recipe shows no forgetguard command"
    main = forgetguard_main()
    for run in runs:
        subcommand = run.split()[1]
        try:  # the console script exits with what main returns; argparse's --help may exit itself
            status = main([subcommand, "--help"])
        except SystemExit as exited:
            status = exited.code
        out, err = capsys.readouterr()
        assert status == 0, f"`forgetguard {subcommand}` is not a subcommand ({run}): {err}"
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", run):
            assert re.search(rf"(^|[\s,]){re.escape(flag)}([\s=,]|$)", out, re.M), (
                f"`forgetguard {subcommand}` has no {flag} ({run})"
            )
    if recipe == CI_DOC:
        assert {"migrate", "history", "calibrate"} <= {run.split()[1] for run in runs}
    else:
        # The recipe reads back what it wrote: the same history, the same project.
        assert any("--history" in run and "--project" in run for run in runs)


def test_the_github_workflow_keeps_the_history() -> None:
    workflow = yaml.safe_load(GITHUB.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as true
    assert "pull_request" in triggers and triggers["push"]["branches"] == ["main"]
    assert workflow["permissions"]["pull-requests"] == "write"
    steps = github_steps()
    choose = steps["Choose the run history"]
    assert "vars.FORGETGUARD_PG_URL" in choose["env"]["PG_URL"]
    assert "secrets.FORGETGUARD_PG_PASSWORD" in choose["env"]["HAS_PASSWORD"]
    assert SQLITE_HISTORY in choose["run"] and "$GITHUB_ENV" in choose["run"]
    # PostgreSQL: the password reaches libpq through PGPASSWORD, from a secret; never in a URL.
    gate = steps["Gate the candidate"]
    assert gate["env"]["PGPASSWORD"] == "${{ secrets.FORGETGUARD_PG_PASSWORD }}"
    assert '--fg-history "$FG_HISTORY"' in gate["run"] and '--fg-project "$FG_PROJECT"' in gate["run"]
    assert not re.search(r"postgres(ql)?://[^@\s]*:[^@\s]*@", GITHUB.read_text()), "a password in a URL"
    # SQLite: restored before the gate and saved after it (also when it failed), under one key per run.
    restore, save = steps["Restore the SQLite history"], steps["Save the SQLite history"]
    assert restore["uses"].startswith("actions/cache/restore@") and save["uses"].startswith("actions/cache/save@")
    assert restore["with"]["path"] == save["with"]["path"] == os.path.dirname(SQLITE_HISTORY)
    assert restore["with"]["key"] == save["with"]["key"] and "github.run_id" in save["with"]["key"]
    assert save["with"]["key"].startswith(restore["with"]["restore-keys"])
    assert SQLITE_HISTORY in restore["if"] and SQLITE_HISTORY in save["if"] and "always()" in save["if"]
    names = list(steps)
    assert names.index("Choose the run history") < names.index("Restore the SQLite history")
    assert names.index("Restore the SQLite history") < names.index("Gate the candidate")
    assert names.index("Gate the candidate") < names.index("Save the SQLite history")


def test_the_github_workflow_updates_one_comment_and_uploads_the_reports() -> None:
    steps = github_steps()
    post = steps["Post the report on the pull request"]
    # Posted even when the gate failed the job; only on pull requests.
    assert "always()" in post["if"] and "pull_request" in post["if"]
    script = post["run"]
    assert "fg/report.md" in script
    # Not `gh pr comment --edit-last`: it edits the last comment of github-actions[bot], which every
    # workflow of the repository shares, and fails where there is none. Its own marked comment, by gh api.
    assert "--edit-last" not in script
    assert f"marker='{MARKER}'" in script
    jq = re.search(r"--jq '([^']*)'", script).group(1)
    assert f'startswith("{MARKER}")' in jq and '.user.login == "github-actions[bot]"' in jq
    assert "--paginate" in script
    assert re.search(r"gh api --method PATCH \S*issues/comments/\$id", script)
    assert re.search(r"gh api --method POST \"\$comments\"", script)
    compile(heredoc(script), "comment body", "exec")
    upload = steps["actions/upload-artifact@v4"]
    assert "always()" in upload["if"] and upload["with"]["path"].startswith("fg/")


def test_the_github_comment_body_is_cut_to_what_github_accepts(tmp_path: Path) -> None:
    script = heredoc(steps_run := github_steps()["Post the report on the pull request"]["run"])
    assert "60000" in steps_run
    for size in (100, 70_000):
        report, out = tmp_path / f"report{size}.md", tmp_path / f"comment{size}.md"
        report.write_text("| é |\n" * (size // 6), encoding="utf-8")
        subprocess.run([sys.executable, "-", MARKER, str(report), str(out)], input=script, text=True, check=True)
        body = out.read_text(encoding="utf-8")
        assert body.startswith(MARKER + "\n") and len(body) < 65_536
        assert ("forgetguard-report artifact" in body) == (size > 60_000)


def test_the_gitlab_job_keeps_the_history_and_the_artifacts() -> None:
    job = gitlab_job()
    assert any("merge_request_event" in rule["if"] for rule in job["rules"])
    assert any("CI_DEFAULT_BRANCH" in rule["if"] for rule in job["rules"])
    caches = {cache["key"]: cache for cache in job["cache"]}
    history = caches["forgetguard-history"]
    assert history["paths"] == [os.path.dirname(SQLITE_HISTORY) + "/"] and history["when"] == "always"
    # GitLab caches paths inside the project directory only: the base results are kept there.
    assert job["variables"]["FORGETGUARD_CACHE_DIR"].startswith("$CI_PROJECT_DIR/.cache/")
    assert caches["forgetguard-base-results"]["paths"] == [".cache/"]
    script = "\n".join(job["script"])
    assert SQLITE_HISTORY in script and 'export PGPASSWORD="$FORGETGUARD_PG_PASSWORD"' in script
    assert "FORGETGUARD_PG_URL" in script
    # The job fails when the gate does, after showing the history.
    assert "|| status=$?" in script and 'exit "$status"' in script
    artifacts = job["artifacts"]
    assert artifacts["when"] == "always" and artifacts["paths"] == ["fg/"]
    assert artifacts["reports"]["junit"] == "fg/junit.xml"


class FakeGitLab(BaseHTTPRequestHandler):
    """GitLab's notes API for one merge request, as far as the recipe uses it (pages of per_page notes)."""

    notes: list[dict] = []
    token = "glpat-test"
    me = 5

    def _send(self, status: int, payload: object, next_page: str = "") -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Next-Page", next_page)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str) -> None:
        if self.headers.get("PRIVATE-TOKEN") != self.token:
            return self._send(401, {"message": "401 Unauthorized"})
        url = urlsplit(self.path)
        body = None
        if method in ("POST", "PUT"):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["body"]
        if method == "GET" and url.path == "/api/v4/user":
            return self._send(200, {"id": self.me, "username": "project_42_bot"})
        base = "/api/v4/projects/42/merge_requests/7/notes"
        if method == "GET" and url.path == base:
            query = parse_qs(url.query)
            per_page, page = int(query["per_page"][0]), int(query["page"][0])
            ordered = sorted(self.notes, key=lambda n: -n["id"])
            chunk = ordered[(page - 1) * per_page : page * per_page]
            return self._send(200, chunk, str(page + 1) if page * per_page < len(ordered) else "")
        if method == "POST" and url.path == base:
            note = {"id": max(n["id"] for n in self.notes) + 1, "author": {"id": self.me}, "body": body}
            self.notes.append(note)
            return self._send(201, note)
        match = re.fullmatch(base + r"/(\d+)", url.path)
        if method == "PUT" and match:
            note = next(n for n in self.notes if n["id"] == int(match.group(1)))
            if note["author"]["id"] != self.me:
                return self._send(403, {"message": "403 Forbidden"})
            note["body"] = body
            return self._send(200, note)
        return self._send(404, {"message": "404 Not Found"})

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def log_message(self, *args: object) -> None:
        pass


def test_the_gitlab_job_updates_one_merge_request_note(tmp_path: Path) -> None:
    """The job's after_script against a stand-in for GitLab's API: the first run adds the note, later runs
    edit it; other people's notes, one that quotes the marker included, are left alone; pages are followed."""
    FakeGitLab.notes = [{"id": i, "author": {"id": 100 + i % 3}, "body": f"review {i}"} for i in range(1, 151)]
    FakeGitLab.notes[0]["body"] = MARKER + "\nquoted by someone else"
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGitLab)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    after_script = "\n".join(gitlab_job()["after_script"])
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "CI_API_V4_URL": f"http://127.0.0.1:{server.server_address[1]}/api/v4",
        "CI_PROJECT_ID": "42",
        "CI_MERGE_REQUEST_IID": "7",
        "FORGETGUARD_GITLAB_TOKEN": FakeGitLab.token,
    }
    (tmp_path / "fg").mkdir()
    try:
        for push in ("first", "second", "third"):
            (tmp_path / "fg" / "report.md").write_text(f"## forgetguard: {push} push\n", encoding="utf-8")
            done = subprocess.run(
                ["bash", "-e", "-c", after_script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, done.stdout + done.stderr
            ours = [n for n in FakeGitLab.notes if n["author"]["id"] == FakeGitLab.me]
            assert [n["body"] for n in ours] == [f"{MARKER}\n## forgetguard: {push} push\n"]
        assert FakeGitLab.notes[0]["body"] == MARKER + "\nquoted by someone else"
        assert len(FakeGitLab.notes) == 151
        # Without a token, or outside a merge request: nothing posted, the job not failed.
        for missing in ("FORGETGUARD_GITLAB_TOKEN", "CI_MERGE_REQUEST_IID"):
            done = subprocess.run(
                ["bash", "-e", "-c", after_script],
                cwd=tmp_path,
                env={k: v for k, v in env.items() if k != missing},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
        assert len(FakeGitLab.notes) == 151
    finally:
        server.shutdown()
        server.server_close()
