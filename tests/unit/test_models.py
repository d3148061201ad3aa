"""SPEC parsing, lazy loading, fingerprints, PEFT sharing and bad-input errors."""

from __future__ import annotations

import shutil

import pytest

from pytest_forgetguard.errors import ForgetguardWarning, IncompatibleModelsError, ModelLoadError
from pytest_forgetguard.models import ModelStore, check_compatible, fingerprint_directory, parse_spec


def test_parse_spec_kinds(tiny, tmp_path):
    assert parse_spec(str(tiny["base"])).kind == "dir"
    assert parse_spec(str(tiny["lora"])).kind == "peft"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert parse_spec(str(gguf)).kind == "gguf"
    hub = parse_spec("HuggingFaceTB/SmolLM2-135M-Instruct@main")
    assert (hub.kind, hub.location, hub.revision) == ("hub", "HuggingFaceTB/SmolLM2-135M-Instruct", "main")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "empty model SPEC"),
        ("./no/such/dir", "no such file or directory"),
        ("/abs/missing", "no such file or directory"),
        ("missing.gguf", "no such file or directory"),
        ("not a spec", "no such file or directory"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        parse_spec(spec)


def test_directory_without_model_files(tmp_path):
    with pytest.raises(ModelLoadError, match="neither config.json .* nor adapter_config.json"):
        parse_spec(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not a .gguf file"):
        parse_spec(str(tmp_path / "weights.bin"))


def test_pickle_only_directory_is_refused(tiny, tmp_path, store):
    d = tmp_path / "pickled"
    d.mkdir()
    shutil.copy(tiny["base"] / "config.json", d)
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    handle = store.get(str(d), role="base")
    with pytest.raises(ModelLoadError, match="pickle weights .*pytorch_model.bin.*safe_serialization"):
        handle.load()


def test_hub_id_offline_is_a_clear_error(store, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    handle = store.get("forgetguard-test/no-such-model", role="base")
    with pytest.raises(
        ModelLoadError, match="cannot load hub model 'forgetguard-test/no-such-model': HF_HUB_OFFLINE is set"
    ):
        handle.load()


def test_loading_is_lazy(tiny, store):
    handle = store.get(str(tiny["base"]), role="base")
    assert not handle.loaded
    fp = handle.fingerprint  # hashing files does not load the model
    assert not handle.loaded and len(fp) == 16
    assert handle.tokenizer is not None and handle.loaded


def test_fingerprint_tracks_content(tiny, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny["base"], copy)
    (copy / "README.md").write_text("notes do not change the model")
    assert fingerprint_directory(copy) == fingerprint_directory(tiny["base"])
    assert fingerprint_directory(tiny["candidate"]) != fingerprint_directory(tiny["base"])
    cfg = (copy / "config.json").read_text()
    (copy / "config.json").write_text(cfg.replace('"rms_norm_eps"', '"rms_norm_eps_x"'))
    assert fingerprint_directory(copy) != fingerprint_directory(tiny["base"])


def test_peft_adapter_shares_the_base_weights(tiny):
    import torch

    store = ModelStore(device="cpu", dtype="float32")
    base = store.get(str(tiny["base"]), role="base")
    cand = store.get(str(tiny["lora"]), base=base)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    plain = ModelStore(device="cpu").get(str(tiny["base"]), role="base").model(input_ids=ids).logits
    with cand.active() as m:
        adapted = m(input_ids=ids).logits
    with base.active() as m:
        reference = m(input_ids=ids).logits
    assert cand.model is base._peft and cand.raw_model is base.raw_model  # one copy of the weights
    assert torch.equal(reference, plain), "the base pass runs with the adapter disabled"
    assert not torch.allclose(adapted, plain)
    assert cand.fingerprint != base.fingerprint


def test_adapter_on_another_base_loads_that_base(tiny, tmp_path):
    store = ModelStore(device="cpu")
    base = store.get(str(tiny["twin"]), role="base")  # same weights, different path
    cand = store.get(str(tiny["lora"]), base=base)
    cand.load()
    # twin has identical files, so the fingerprints match and the weights are shared.
    assert cand._shared_base is base
    other = ModelStore(device="cpu")
    b2 = other.get(str(tiny["candidate"]), role="base")
    c2 = other.get(str(tiny["lora"]), base=b2)
    with pytest.warns(ForgetguardWarning, match="was trained on .*, not on the run's base .* compared with"):
        c2.load()
    assert c2._shared_base is not b2 and c2._shared_base.spec.location == str(tiny["base"])


def test_compatibility_errors(tiny, store):
    base = store.get(str(tiny["base"]), role="base")
    with pytest.raises(IncompatibleModelsError, match="tokenizers differ at token id"):
        check_compatible(base, store.get(str(tiny["other_vocab"])))
    big = store.get(str(tiny["bigvocab"]))
    with pytest.raises(
        IncompatibleModelsError, match="vocabulary sizes differ: base .* has 384 output rows, candidate .* has 392"
    ):
        check_compatible(base, big)
    assert check_compatible(base, big, allow_vocab_mismatch=True) == 384
    assert check_compatible(base, store.get(str(tiny["candidate"]))) == 384


def test_adapter_whose_base_cannot_be_found(tiny, tmp_path, store):
    import json

    adapter = tmp_path / "adapter"
    shutil.copytree(tiny["lora"], adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "./gone/base-model"
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    base = store.get(str(tiny["candidate"]), role="base")  # a different model than the adapter's base
    cand = store.get(str(adapter), base=base)
    with pytest.raises(
        ModelLoadError, match="was trained on './gone/base-model', which is not the run's base and cannot be loaded"
    ):
        cand.load()


def test_device_map_loading_gives_the_same_kl(tiny):
    """The accelerate path for models larger than one device (``--fg-device auto`` on several GPUs).

    On CPU accelerate places every layer on the CPU, which exercises the same loading code and the
    input-device lookup; the KL must be the same as with plain loading.
    """
    from pytest_forgetguard.comparison import Forgetguard
    from pytest_forgetguard.settings import Settings

    prompts = [{"prompt": "The for statement", "response": " executes the suite."}]
    results = []
    for device_map in (None, "sequential"):
        store = ModelStore(device="cpu", dtype="float32", device_map=device_map)
        base = store.get(str(tiny["base"]), role="base")
        fg = Forgetguard(base, store.get(str(tiny["candidate"]), base=base))
        results.append(fg.kl(prompts, sample_from="dataset"))
        assert str(base.device) == "cpu"  # where the inputs go: the input embeddings' device
    assert results[0].value == results[1].value
    # No GPU here: nothing to shard over, whatever the option says.
    assert Settings(device="auto").device_map() is None and Settings(device="cpu").device_map() is None


def test_fingerprint_of_a_loaded_model_is_its_content(tiny, tmp_path):
    """Hook-loaded models: the same files in another directory hash the same; other weights do not."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_forgetguard.models import fingerprint_loaded

    copy = tmp_path / "copy"
    shutil.copytree(tiny["base"], copy)

    def fp(path):
        return fingerprint_loaded(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path))

    assert fp(tiny["base"]) == fp(copy) != fp(tiny["candidate"])
