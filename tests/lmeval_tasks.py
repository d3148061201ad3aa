"""Small lm-eval task YAMLs + data used by the retention tests (relative data_files, as users write them)."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ["for", "while", "class", "import", "return", "yield", "lambda", "assert", "global", "with", "try", "raise"]

MC_YAML = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{q}}"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

PPL_YAML = """task: tiny_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: ppl.jsonl
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
metadata:
  version: 1.0
"""

GEN_YAML = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: gen.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{{q}}"
doc_to_target: "{{a}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
  do_sample: false
filter_list:
  - name: strip
    filter:
      - function: regex
        regex_pattern: "(\\\\S+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_tasks(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "mc.yaml").write_text(MC_YAML)
    (d / "ppl.yaml").write_text(PPL_YAML)
    (d / "gen.yaml").write_text(GEN_YAML)
    rows = [
        {"q": f"The {w} statement is", "choices": [" used", " a", " the", " not"], "label": i % 4}
        for i, w in enumerate(WORDS)
    ]
    (d / "mc.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    texts = [{"text": f"The {w} statement is described in the language reference."} for w in WORDS[:6]]
    (d / "ppl.jsonl").write_text("\n".join(json.dumps(t) for t in texts) + "\n")
    gen = [{"q": f"The {w} statement", "a": "is"} for w in WORDS[:4]]
    (d / "gen.jsonl").write_text("\n".join(json.dumps(g) for g in gen) + "\n")
    return d


def write_large_tasks(d: Path, n: int = 300, fewshot: bool = False) -> Path:
    """``n``-item versions of the tiny tasks (``big_mc``, ``big_ppl``; ``big_mc_fewshot`` draws two random
    few-shot examples per item, so a prompt depends on which items are evaluated together)."""
    d.mkdir(parents=True, exist_ok=True)
    rows = [
        {"q": f"The {WORDS[i % len(WORDS)]} statement number {i} is", "choices": [" used", " a", " the", " not"],
         "label": i % 4}
        for i in range(n)
    ]  # fmt: skip
    (d / "big_mc.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (d / "big_mc.yaml").write_text(MC_YAML.replace("tiny_mc", "big_mc").replace("mc.jsonl", "big_mc.jsonl"))
    if fewshot:
        (d / "big_mc_fewshot.yaml").write_text(
            MC_YAML.replace("tiny_mc", "big_mc_fewshot").replace("mc.jsonl", "big_mc.jsonl")
            + "num_fewshot: 2\nfewshot_split: test\n"
        )
    (d / "big_mc2.yaml").write_text(MC_YAML.replace("tiny_mc", "big_mc2").replace("mc.jsonl", "big_mc.jsonl"))
    gen = [{"q": f"The {WORDS[i % len(WORDS)]} statement {i}", "a": "is"} for i in range(n)]
    (d / "big_gen.jsonl").write_text("\n".join(json.dumps(g) for g in gen) + "\n")
    (d / "big_gen.yaml").write_text(GEN_YAML.replace("tiny_gen", "big_gen").replace("gen.jsonl", "big_gen.jsonl"))
    texts = [{"text": f"The {WORDS[i % len(WORDS)]} statement {i} is described in section {i % 7}."} for i in range(n)]
    (d / "big_ppl.jsonl").write_text("\n".join(json.dumps(t) for t in texts) + "\n")
    (d / "big_ppl.yaml").write_text(
        PPL_YAML.replace("tiny_ppl", "big_ppl").replace("ppl.jsonl", "big_ppl.jsonl")
        .replace("word_perplexity", "bits_per_byte").replace("weighted_perplexity", "bits_per_byte")
    )  # fmt: skip
    return d


def label_with_answers(tasks: Path, task: str, answers: dict[int, str]) -> None:
    """Rewrite a multiple-choice task's labels to the given answers (a model's own: it then scores 1.0)."""
    data = tasks / f"{task}.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    for i, row in enumerate(rows):
        # lm-eval puts its target delimiter (a space) before each choice: compare without it.
        row["label"] = [c.strip() for c in row["choices"]].index(answers[i].strip())
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
