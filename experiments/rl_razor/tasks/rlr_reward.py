"""The new task's verifiable reward, shared by training (RL), lm-eval (new-task accuracy) and tests.

lm-eval loads this file by path (``!function rlr_reward.process_results`` in rlr_arith.yaml); the
training scripts import it the same way. It uses the standard library only.

The rule lives *inside* ``process_results`` on purpose: forgetguard keys its cache of the base's
lm-eval results by the source of the task's functions (``process_results`` itself, not what it
calls), so a change to the rule must change this function's text to invalidate cached base scores.
"""

from __future__ import annotations

from typing import Any


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """``acc`` = 1.0 when the response is a short, exact answer to ``doc``'s arithmetic question.

    A response earns the reward when all of these hold:
    - it is at most 100 characters long (stripped): a short answer, not an essay that happens to
      contain the number (and on a 135M model long answers are mostly rambling);
    - it contains a number, and its *last* number is the answer;
    - every number in it is an operand or the answer ("7 + 8 = 15" and "The answer is 15." pass).
    The last two rules together stop the obvious hack of listing candidate numbers ("14, 15, 16"):
    any wrong number anywhere makes the response wrong. Numbers are runs of digits, with decimal
    parts kept ("15.5" is a wrong number, "15." at a sentence end is 15); a minus sign is not
    part of a number (every answer is >= 0).
    """
    import re

    text = results[0].strip()
    numbers = re.findall(r"\d+(?:[.,]\d+)*", text)
    allowed = {str(doc["a"]), str(doc["b"]), str(doc["answer"])}
    ok = (
        0 < len(text) <= 100
        and bool(numbers)
        and numbers[-1] == str(doc["answer"])
        and all(n in allowed for n in numbers)
    )
    return {"acc": float(ok)}


def reward(text: str, doc: dict[str, Any]) -> float:
    """The reward of one response ``text`` to the problem ``doc`` (what lm-eval scores as ``acc``)."""
    return process_results(doc, [text])["acc"]
