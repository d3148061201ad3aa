"""Where a run history lives: a SQLite file or a PostgreSQL database, named by a path or a URL.

Accepted forms::

    .cache/history.sqlite                 a plain path: SQLite
    sqlite:///relative/history.sqlite     SQLite (three slashes; four for an absolute path)
    postgresql://fg@db.internal:5432/fg   PostgreSQL (also postgres://); the password from the URL,
                                          PGPASSWORD / the other PG* variables, or ~/.pgpass

A location never shows its password: :attr:`Location.display` (used by every message, report and log line)
has it replaced by ``***``, and :func:`redact` scrubs it from any text (a driver's error message, say).

Example::

    where = parse_location("postgresql://fg:s3cret@localhost/fg")
    where.display   # 'postgresql://fg:***@localhost/fg'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import ForgetguardError

SCHEMES = ("sqlite", "postgresql")
_ALIASES = {"sqlite": "sqlite", "postgresql": "postgresql", "postgres": "postgresql"}
# Driver suffixes SQLAlchemy users write (postgresql+psycopg://): the same database to us.
_DRIVER = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9.-]*)(\+[a-zA-Z0-9_]+)?$")


class LocationError(ForgetguardError, ValueError):
    """A history location that cannot be used (an unknown scheme, a malformed URL); the message never shows
    a password."""


@dataclass(frozen=True)
class Location:
    """A parsed history location: ``kind`` is ``sqlite`` (``path`` set) or ``postgresql`` (``url`` set)."""

    kind: str
    path: Path | None = None
    url: str = field(default="", repr=False)  # with its password: handed to the driver only
    display: str = ""

    def __str__(self) -> str:
        return self.display

    @property
    def is_file(self) -> bool:
        return self.kind == "sqlite"


def parse_location(text: str | Path) -> Location:
    """A plain path, ``sqlite:///path`` or ``postgresql://user@host:port/db``; raises :class:`LocationError`.

    >>> parse_location("runs/history.sqlite").kind, parse_location("postgres://u:pw@h/db").display
    ('sqlite', 'postgresql://u:***@h/db')
    """
    if isinstance(text, Path):
        return _sqlite(text)
    raw = str(text).strip()
    if not raw:
        raise LocationError("the run history location is empty: give a file path or a postgresql:// URL")
    if "://" not in raw:
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:[^\\/]", raw) and not re.match(r"^[a-zA-Z]:[\\/]", raw):
            scheme = raw.split(":", 1)[0]
            if _ALIASES.get(_scheme_name(scheme) or ""):
                raise LocationError(
                    f"the run history location starts with {scheme + ':'!r} but is not a URL: write "
                    f"{scheme}://user@host:port/database (with two slashes)"
                )
        return _sqlite(Path(raw).expanduser())
    scheme_text, rest = raw.split("://", 1)
    name = _scheme_name(scheme_text)
    kind = _ALIASES.get(name or "")
    if kind is None:
        raise LocationError(
            f"unknown run history scheme {scheme_text!r} in {redact(raw, raw)}: use a file path, sqlite:///path or "
            "postgresql://user@host:port/database"
        )
    if kind == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise LocationError(
                f"{raw} is not a SQLite URL: write sqlite:///relative/path or sqlite:////absolute/path "
                "(or just the path)"
            )
        return _sqlite(Path(unquote(rest[1:])).expanduser())
    return _postgresql(raw)


def _scheme_name(scheme: str) -> str | None:
    found = _DRIVER.match(scheme)
    return found.group("scheme").lower() if found else None


def _sqlite(path: Path) -> Location:
    return Location("sqlite", path=path, display=str(path))


def _postgresql(raw: str) -> Location:
    shown = redact(raw, raw)
    try:
        parts = urlsplit(raw)
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise LocationError(f"malformed PostgreSQL URL {shown}: {exc}") from None
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise LocationError(
            f"malformed PostgreSQL URL {shown}: name one database, postgresql://user@host:port/database"
        )
    if not parts.hostname and "host=" not in parts.query:
        raise LocationError(f"malformed PostgreSQL URL {shown}: no host (postgresql://user@host:port/database)")
    if port == 0:
        raise LocationError(f"malformed PostgreSQL URL {shown}: port 0")
    # The driver takes postgresql:// (not postgres+psycopg://); keep the rest exactly as given.
    url = "postgresql://" + raw.split("://", 1)[1]
    return Location("postgresql", url=url, display="postgresql://" + shown.split("://", 1)[1])


def redact(text: str, url: str) -> str:
    """``text`` with the password of ``url`` (if it has one) replaced by ``***``, wherever it appears.

    >>> redact("cannot connect to postgresql://u:pw@h/db", "postgresql://u:pw@h/db")
    'cannot connect to postgresql://u:***@h/db'
    """
    found = re.match(r"^[^:/]+://(?P<user>[^:@/]*):(?P<password>[^@/]*)@", url)
    if not found or not found.group("password"):
        return text
    secret = found.group("password")
    out = text.replace(f":{secret}@", ":***@")
    for variant in {secret, unquote(secret)}:
        if len(variant) >= 3:  # a one- or two-letter password would blank out ordinary words
            out = out.replace(variant, "***")
    return out
