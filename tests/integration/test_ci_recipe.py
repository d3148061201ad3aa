"""The CI recipe in docs/ must keep working: valid YAML, and every pytest option it uses exists."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

RECIPE = Path(__file__).resolve().parents[2] / "docs" / "ci" / "github-actions.yml"


def test_github_actions_recipe_uses_real_options(pytester):
    workflow = yaml.safe_load(RECIPE.read_text())
    steps = {step.get("name"): step for step in workflow["jobs"]["gate"]["steps"]}
    command = steps["Gate the candidate"]["run"]
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+|-[nc])\b", command))
    assert {"--forgetguard", "--fg-base", "--fg-candidate", "--fg-report-md", "--fg-report-json", "-n"} <= flags
    help_text = pytester.runpytest("--help").stdout.str()
    for flag in flags:
        assert re.search(rf"(^|[\s,]){re.escape(flag)}([\s=,]|$)", help_text, re.M), f"{flag} is not a pytest option"
    # The report is posted even when the gate failed the job.
    assert "always()" in steps["Post the report on the pull request"]["if"]
    assert "fg/report.md" in steps["Post the report on the pull request"]["run"]
