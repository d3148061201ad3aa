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
