"""Prompt files: parsing errors name the file and line; tokenization rules."""

from __future__ import annotations

import json

import pytest

from pytest_forgetguard.errors import PromptFileError
from pytest_forgetguard.prompts import encode_prompt, encode_response, load_prompts, parse_prompts


def write(tmp_path, lines):
    p = tmp_path / "p.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_load_prompts_accepts_text_and_chat(tmp_path):
    p = write(
        tmp_path,
        [
            json.dumps({"prompt": "a"}),
            "",
            json.dumps({"messages": [{"role": "user", "content": "b"}], "response": "c"}),
        ],
    )
    recs = load_prompts(p)
    assert [r.index for r in recs] == [0, 1]
    assert recs[0].prompt == "a" and recs[1].messages[0]["content"] == "b" and recs[1].response == "c"


@pytest.mark.parametrize(
    "lines, message",
    [
        ([], "is empty"),
        (["   "], "is empty"),
        (["{not json"], r"p.jsonl:1: not valid JSON"),
        ([json.dumps({"prompt": "a"}), json.dumps({"text": "b"})], r"p.jsonl:2: give exactly one of 'prompt'"),
        ([json.dumps({"prompt": ""})], "non-empty string"),
        ([json.dumps({"messages": []})], "non-empty list"),
        ([json.dumps({"messages": [{"role": "user"}]})], "non-empty list"),
        ([json.dumps({"prompt": "a", "response": ""})], "'response' must be a non-empty string"),
        ([json.dumps(["a"])], "expected an object"),
        # Text that means nothing: blank, whitespace-only or invisible-only, with file and line.
        (
            [json.dumps({"prompt": "a"}), json.dumps({"prompt": " \t\n"})],
            r"p.jsonl:2: 'prompt' must be .* visible text",
        ),
        ([json.dumps({"prompt": "\u200b\u2060"})], r"p.jsonl:1: 'prompt' must be a non-empty string with visible"),
        ([json.dumps({"messages": [{"role": "user", "content": ""}]})], r"message 1 \('user'\) has no visible"),
        (
            [
                json.dumps(
                    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "\ufeff"}]}
                )
            ],
            r"p.jsonl:1: message 2 \('user'\) has no visible content",
        ),
        ([json.dumps({"prompt": "a", "response": " "})], r"'response' must be a non-empty string with visible text"),
        ([json.dumps({"prompt": "a", "response": "\u200b"})], r"'response' must be .* visible text, got '\\u200b'"),
    ],
)
def test_bad_prompt_files(tmp_path, lines, message):
    with pytest.raises(PromptFileError, match=message):
        load_prompts(write(tmp_path, lines))


def test_missing_file(tmp_path):
    with pytest.raises(PromptFileError, match="does not exist"):
        load_prompts(tmp_path / "nope.jsonl")


def test_empty_list():
    with pytest.raises(PromptFileError, match="no prompts"):
        parse_prompts([])


def test_encoding_rules(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["base"])
    text, chat = parse_prompts(["Hello world", {"messages": [{"role": "user", "content": "Hi"}], "response": "Yo"}])
    assert encode_prompt(tok, text) == tok("Hello world")["input_ids"]
    templated = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert templated.endswith("<|im_start|>assistant\n")
    assert encode_prompt(tok, chat) == tok(templated, add_special_tokens=False)["input_ids"]
    assert encode_response(tok, chat) == tok("Yo", add_special_tokens=False)["input_ids"]
    with pytest.raises(PromptFileError, match="has no 'response'"):
        encode_response(tok, text)
    tok.chat_template = None
    with pytest.raises(PromptFileError, match="no chat template"):
        encode_prompt(tok, chat)
