"""Files written and read by forgetguard: atomic writes with normal permissions, UTF-8 reads that say where.

Every file forgetguard writes (reports, plots, cache entries, converted
models) goes through :func:`write_atomic` or :func:`publish_directory`: a
reader sees the old file or the new one, never half of one, and the result
gets the permissions any other file the user writes gets (``0o666`` or
``0o777`` less the umask; ``tempfile`` alone would leave ``0o600``, which a
CI job's other user or a teammate's group cannot read).

Every text file forgetguard reads from the user (prompt files, suites) goes
through :func:`read_text`: a file that is not UTF-8 is an error naming the
file, the line and the byte, with the fix.

Example::

    write_atomic(Path("out/report.json"), '{"schema": 1}\\n')
    text = read_text(Path("prompts.jsonl"), what="prompt file")
"""

from __future__ import annotations

import codecs
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .errors import ForgetguardError


class TextFileError(ForgetguardError):
    """A text file cannot be read as UTF-8: ``name:line: reason`` (``reason`` says the fix)."""

    def __init__(self, name: str, reason: str, line: int | None = None) -> None:
        super().__init__(f"{name}:{line}: {reason}" if line else f"{name}: {reason}")
        self.name, self.reason, self.line = name, reason, line


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back (one thread reads it at a time
    # in practice: this runs while a report or cache entry is written).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from ``open()``: ``0o666`` less the umask."""
    return 0o666 & ~_umask()


def write_atomic(path: Path, data: str | bytes | Callable[[IO[bytes]], None]) -> None:
    """Write ``data`` (text as UTF-8, bytes, or a function that writes into a binary file) to ``path`` atomically.

    The parent directory is created. On any error the temporary file is
    removed and ``path`` keeps what it had.

    Example::

        write_atomic(Path("plot.png"), lambda fh: fig.savefig(fh, format="png"))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, str):
                fh.write(data.encode("utf-8"))
            elif isinstance(data, bytes):
                fh.write(data)
            else:
                data(fh)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def publish_directory(tmp: Path, target: Path) -> bool:
    """Move the finished directory ``tmp`` to ``target`` in one step; False if another process was first.

    ``tmp`` (made by ``tempfile.mkdtemp``, mode ``0o700``) gets the usual
    directory permissions first. When ``target`` already exists (a
    concurrent run published the same thing), ``tmp`` is removed.
    """
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        os.replace(tmp, target)
        return True
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if target.exists():
            return False
        raise


_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
         (codecs.BOM_UTF16_BE, "UTF-16"))  # fmt: skip


def decode_utf8(data: bytes, name: str) -> str:
    """``data`` as text; a UTF-8 byte-order mark is dropped. Anything else that is not UTF-8 is a
    :class:`TextFileError` naming ``name``, the line, the column and the byte.

    >>> decode_utf8("é\\n".encode(), "x.jsonl")
    'é\\n'
    >>> decode_utf8(b"ok\\ncaf\\xe9\\n", "x.jsonl")
    Traceback (most recent call last):
    ...
    pytest_forgetguard.files.TextFileError: x.jsonl:2: not UTF-8 (byte 0xe9 at column 4); save the file as UTF-8
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            raise TextFileError(name, f"the file is {encoding}, not UTF-8; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        column = len(data[start : exc.start].decode("utf-8", errors="replace")) + 1
        raise TextFileError(
            name, f"not UTF-8 (byte 0x{data[exc.start]:02x} at column {column}); save the file as UTF-8", line
        ) from None


def read_text(path: Path, what: str = "file") -> str:
    """The UTF-8 text of ``path``; a missing, unreadable or non-UTF-8 file is a :class:`TextFileError`.

    ``what`` names the kind of file in messages ("prompt file").
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise _unreadable(path, what, exc) from None
    return decode_utf8(data, str(path))


def read_lines(path: Path, what: str = "file") -> Iterator[str]:
    """The UTF-8 lines of ``path`` one at a time, for files too large to hold; errors as :func:`read_text`.

    Example::

        for line in read_lines(Path("history.jsonl"), what="history export"):
            ...
    """
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below; a generator cannot use `with` around the open
    except OSError as exc:
        raise _unreadable(path, what, exc) from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                yield decode_utf8(raw, str(path)) if lineno == 1 else raw.decode("utf-8")
            except UnicodeDecodeError:
                try:
                    decode_utf8(b"\n" * (lineno - 1) + raw, str(path))
                except TextFileError as exc:
                    raise exc from None


def _unreadable(path: Path, what: str, exc: OSError) -> TextFileError:
    if isinstance(exc, FileNotFoundError):
        return TextFileError(str(path), f"no such {what}")
    if isinstance(exc, IsADirectoryError):
        return TextFileError(str(path), f"a directory, not a {what}")
    return TextFileError(str(path), f"cannot read this {what}: {exc.strerror or exc}")


_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """sha256 (hex) of a file's bytes, remembered for the process by path, size and modification time.

    Model weights are hashed for fingerprints, cache keys and GGUF-copy
    checks: the memo makes each 500 MB file cost one read per process.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]
