"""A check's series (its key in the run history) changes with everything that changes its number, and only that."""

from __future__ import annotations

from lmeval_tasks import write_tasks

from pytest_forgetguard.comparison import Forgetguard
from pytest_forgetguard.lmeval import series_key
from pytest_forgetguard.models import ModelStore

ITEMS = [{"prompt": "The for statement", "response": " executes the suite."}, {"prompt": "A class", "response": " x"}]


def pair(tiny, base="base", cand="candidate"):
    store = ModelStore()
    b = store.get(str(tiny[base]), role="base")
    return Forgetguard(b, store.get(str(tiny[cand]), base=b))


def test_kl_series_follow_prompts_settings_and_base_not_batching(tiny):
    fg = pair(tiny)
    s = fg.kl(ITEMS, sample_from="dataset").series
    assert s and fg.kl(ITEMS, sample_from="dataset", batch_size=1).series == s  # batching changes no number
    assert fg.kl(ITEMS[:1], sample_from="dataset").series != s  # another prompt file: a new series
    assert fg.kl([dict(ITEMS[0], response=" runs."), ITEMS[1]], sample_from="dataset").series != s
    assert fg.kl(ITEMS, sample_from="dataset", direction="reverse").series != s
    sampled = fg.kl(ITEMS, max_new_tokens=4).series
    assert sampled != s and fg.kl(ITEMS, max_new_tokens=5).series != sampled
    assert pair(tiny, base="twin", cand="candidate").kl(ITEMS, sample_from="dataset").series == s  # same content
    assert pair(tiny, base="candidate", cand="twin").kl(ITEMS, sample_from="dataset").series != s  # another base


def test_retention_series_follow_the_task_its_data_and_the_metric(tiny, tmp_path):
    tasks = write_tasks(tmp_path / "tasks")
    base = ModelStore().get(str(tiny["base"]), role="base")

    def key(names=("tiny_mc",), metric=None, limit=None):
        return series_key(base, list(names), tasks, None, limit, 1234, False, "hf", {"dtype": "float32"}, metric, None)

    mc = key()
    assert mc == key() and mc != key(("tiny_ppl",)) and mc != key(metric="acc") and mc != key(limit=3)
    (tasks / "mc.jsonl").write_text((tasks / "mc.jsonl").read_text().replace("statement", "keyword"))
    assert key() != mc  # changed data: a new series
