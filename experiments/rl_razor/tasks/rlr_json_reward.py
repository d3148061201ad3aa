"""The second task's verifiable reward (rlr_json): shared by RL training, lm-eval and the tests.

Loaded by path by lm-eval (``!function rlr_json_reward.process_results`` in rlr_json.yaml) and by
the training scripts. Standard library only. As in rlr_reward.py, the rule lives inside
``process_results`` so that changing it changes the source forgetguard keys cached base scores by.
"""

from __future__ import annotations

from typing import Any


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """``acc`` = 1.0 when the response is exactly the JSON object ``{"city": <the doc's city>}``.

    - The stripped response, at most 100 characters, parses as JSON by itself (one Markdown code fence
      around it is tolerated: ```json ... ```); prose before or after the object fails.
    - It is an object with the single key ``city`` (extra keys fail: the shape is part of the task).
    - Its value is a string equal to the city, ignoring case and surrounding spaces ("turin" passes,
      "Turin, Italy" and the person's name fail).
    """
    import json
    import re

    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", results[0].strip())
    if not 0 < len(text) <= 100:
        return {"acc": 0.0}
    try:
        obj = json.loads(text)
    except ValueError:
        return {"acc": 0.0}
    ok = (
        isinstance(obj, dict)
        and list(obj) == ["city"]
        and isinstance(obj["city"], str)
        and obj["city"].strip().lower() == doc["city"].lower()
    )
    return {"acc": float(ok)}


def reward(text: str, doc: dict[str, Any]) -> float:
    """The reward of one response ``text`` to ``doc`` (what lm-eval scores as ``acc``)."""
    return process_results(doc, [text])["acc"]
