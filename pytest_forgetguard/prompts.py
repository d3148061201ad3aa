"""Prompt files (JSONL) and their tokenization.

Each line is ``{"prompt": "..."}`` (raw text, the tokenizer's default special
tokens, no chat template) or ``{"messages": [...]}`` (through the tokenizer's
chat template, with the generation prompt), optionally with ``"response"``
(used by ``sample_from: dataset``; tokenized on its own without special tokens).

Example::

    >>> recs = parse_prompts([{"prompt": "2+2="}, "The capital of France is"])
    >>> [r.prompt for r in recs]
    ['2+2=', 'The capital of France is']
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from .errors import PromptFileError
from .files import TextFileError, read_text

PromptsLike = Union[str, Path, Sequence[Union[str, dict[str, Any]]]]  # noqa: UP007 (evaluated at runtime on 3.10)


@dataclass(frozen=True)
class PromptRecord:
    index: int
    prompt: str | None = None
    messages: tuple[dict[str, Any], ...] | None = None
    response: str | None = None
    source: str = ""  # where it was read: "prompts.jsonl:12", or "prompts: item 3" for a list

    @property
    def where(self) -> str:
        """How messages name this prompt: its file and line where it has one."""
        return f"prompt {self.index} ({self.source})" if self.source else f"prompt {self.index}"

    def display(self, limit: int = 80) -> str:
        """A short one-line rendering for reports."""
        text = (
            self.prompt
            if self.prompt is not None
            else " | ".join(f"{m.get('role')}: {m.get('content')}" for m in self.messages or ())
        )
        text = " ".join(str(text).split())
        return text if len(text) <= limit else text[: limit - 1] + "…"


# Characters that show nothing: format controls (zero-width space, joiners, BOM), other controls, private
# use, unassigned. A text made only of these and whitespace means nothing to either model.
_INVISIBLE = ("Cf", "Cc", "Co", "Cn")


def visible(text: str) -> bool:
    r"""Whether ``text`` holds a character a reader would see.

    >>> visible("What is 2 + 2?"), visible("  \n"), visible("\u200b")
    (True, False, False)
    """
    return any(not ch.isspace() and unicodedata.category(ch) not in _INVISIBLE for ch in text)


def _record(index: int, item: Any, where: str) -> PromptRecord:
    if isinstance(item, str):
        item = {"prompt": item}
    if not isinstance(item, dict):
        raise PromptFileError(f"{where}: expected an object with 'prompt' or 'messages', got {type(item).__name__}")
    prompt, messages, response = item.get("prompt"), item.get("messages"), item.get("response")
    if (prompt is None) == (messages is None):
        raise PromptFileError(f"{where}: give exactly one of 'prompt' (text) or 'messages' (chat list)")
    if prompt is not None and (not isinstance(prompt, str) or not visible(prompt)):
        blank = isinstance(prompt, str) and prompt != ""
        raise PromptFileError(
            f"{where}: 'prompt' must be a non-empty string" + (f" with visible text, got {prompt!r}" if blank else "")
        )
    if messages is not None:
        ok = (
            isinstance(messages, list)
            and messages
            and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages
            )
        )
        if not ok:
            raise PromptFileError(f"{where}: 'messages' must be a non-empty list of {{'role': str, 'content': str}}")
        for i, m in enumerate(messages, 1):
            if not visible(m["content"]):
                raise PromptFileError(
                    f"{where}: message {i} ({m['role']!r}) has no visible content ({m['content']!r}); "
                    "remove the message or give it text"
                )
        messages = tuple(dict(m) for m in messages)
    if response is not None and (not isinstance(response, str) or not visible(response)):
        blank = isinstance(response, str) and response != ""
        raise PromptFileError(
            f"{where}: 'response' must be a non-empty string"
            + (f" with visible text, got {response!r}" if blank else "")
        )
    return PromptRecord(index=index, prompt=prompt, messages=messages, response=response, source=where)


def parse_prompts(items: Iterable[Any], source: str = "prompts") -> list[PromptRecord]:
    records = [_record(i, item, f"{source}: item {i}") for i, item in enumerate(items)]
    if not records:
        raise PromptFileError(f"{source}: no prompts; a KL check needs at least one")
    return records


def load_prompts(path: str | Path) -> list[PromptRecord]:
    """Read a JSONL prompt file; every problem names the file and line."""
    p = Path(path)
    if p.is_dir():
        raise PromptFileError(f"prompt file {p} {directory_given(p)}")
    if not p.is_file():
        raise PromptFileError(
            f"prompt file {p} does not exist" + (f" (looked in {p.resolve().parent})" if not p.is_absolute() else "")
        )
    try:
        text = read_text(p, "prompt file")
    except TextFileError as exc:
        raise PromptFileError(str(exc)) from None
    records: list[PromptRecord] = []
    # Split on newlines only: str.splitlines() would also split inside a JSON string holding U+2028.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptFileError(f"{p}:{lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        except RecursionError:
            raise PromptFileError(f"{p}:{lineno}: JSON nested too deeply to be a prompt") from None
        records.append(_record(len(records), item, f"{p}:{lineno}"))
    if not records:
        raise PromptFileError(f"prompt file {p} is empty; a KL check needs at least one prompt")
    return records


def directory_given(p: Path) -> str:
    """What to say when a directory is given where a prompt file belongs (it exists: "does not exist" would
    mislead), naming the JSONL files in it, if any.

    >>> directory_given(Path("/"))[:43]
    'is a directory; a JSONL file is expected (o'
    """
    found = sorted(f.name for f in p.glob("*.jsonl") if f.is_file())
    inside = f"; it holds {', '.join(found[:5])}{', ...' if len(found) > 5 else ''}: name one" if found else ""
    return 'is a directory; a JSONL file is expected (one {"prompt": ...} or {"messages": [...]} per line)' + inside


def as_records(prompts: PromptsLike) -> list[PromptRecord]:
    """Accept a path, a list of strings or a list of dicts."""
    if isinstance(prompts, (str, Path)):
        return load_prompts(prompts)
    return parse_prompts(prompts)


def encode_prompt(tokenizer: Any, record: PromptRecord) -> list[int]:
    if record.messages is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise PromptFileError(
                f"{record.where} uses 'messages' but the tokenizer has no chat template; use a plain 'prompt' instead"
            )
        text = tokenizer.apply_chat_template(list(record.messages), tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(record.prompt)["input_ids"]
    if not ids:
        raise PromptFileError(f"{record.where} tokenizes to nothing")
    return list(ids)


def encode_response(tokenizer: Any, record: PromptRecord) -> list[int]:
    if record.response is None:
        raise PromptFileError(f"{record.where} has no 'response', which sample_from: dataset needs")
    ids = tokenizer(record.response, add_special_tokens=False)["input_ids"]
    if not ids:
        raise PromptFileError(f"{record.where}: 'response' tokenizes to nothing")
    return list(ids)


def token_digest(prompt_ids: Sequence[Sequence[int]], responses: Sequence[Sequence[int]] | None = None) -> str:
    """sha256 of encoded prompts (and fixed responses): equal on ranks that read the same data.

    >>> token_digest([[1, 2]]) == token_digest([[1, 2]]) != token_digest([[1, 3]])
    True
    """
    import hashlib
    import json

    blob = json.dumps([[list(map(int, p)) for p in prompt_ids], responses and [list(map(int, r)) for r in responses]])
    return hashlib.sha256(blob.encode()).hexdigest()
