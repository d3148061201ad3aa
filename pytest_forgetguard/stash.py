"""Where the plugin keeps its per-run state in ``config.stash`` (pytest's recommended place).

The plugin's hooks and the suite collector both reach the run's
:class:`~pytest_forgetguard.session.ForgetguardSession` through
:data:`SESSION_KEY`; keeping the keys here (not in the plugin module) lets
both import them without importing each other.
"""

from __future__ import annotations

from typing import Any

import pytest

from .session import ForgetguardSession

SESSION_KEY = pytest.StashKey[ForgetguardSession]()
PROGRESS_KEY = pytest.StashKey[Any]()  # the progress sink to restore at unconfigure
ORDER_KEY = pytest.StashKey[dict[str, int]]()  # nodeid -> index in the collection
HISTORY_KEY = pytest.StashKey[bool]()  # set once this run's records are in the run history
PYTEST_SESSION_KEY = pytest.StashKey[pytest.Session]()  # the process that writes the reports
QUIET_KEY = pytest.StashKey[bool]()  # whether third-party output was quiet before this run (restored at the end)
