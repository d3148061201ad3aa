"""Builders of real (tiny or derived) transformers models for the tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(out: Path, vocab_size: int = 384) -> Path:
    import pydoc_data.topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(list(pydoc_data.topics.topics.values()), trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|im_end|>", bos_token="<|im_start|>"
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    return out


def build_tiny_model(
    tokenizer_dir: Path, out: Path, seed: int = 0, noise: float = 0.0, base: Path | None = None, vocab_extra: int = 0
) -> Path:
    """A 2-layer Llama with the given tokenizer; ``noise`` perturbs ``base``'s weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if base is not None:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * noise * p.std())
    else:
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(tok) + vocab_extra,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            initializer_range=0.3,  # peaked distributions, so KL is not trivially ~0
            tie_word_embeddings=False,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def build_lora(base_dir: Path, out: Path, seed: int = 0, scale: float = 0.3) -> Path:
    """A PEFT LoRA adapter with random (non-zero) A and B, so it changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0)
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    peft_model.save_pretrained(out)
    cfg = out / "adapter_config.json"
    data = json.loads(cfg.read_text())
    data["base_model_name_or_path"] = str(base_dir)
    cfg.write_text(json.dumps(data))
    return out


def noisy_copy(src: Path, out: Path, scale: float, seed: int) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=gen) * scale * p.std())
    model.save_pretrained(out, safe_serialization=True)
    for f in src.glob("*"):
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, out)
    return out


# -- broken models, for the fault matrix ------------------------------------------------------------


def _copy_tokenizer(src: Path, out: Path) -> None:
    for f in src.glob("*"):
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, out)


def build_overflow(base_dir: Path, out: Path) -> Path:
    """Finite weights that overflow: one MLP scaled by 1e37 gives NaN logits (inf * 0 in the next norm)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(1e37)
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    model.save_pretrained(out, safe_serialization=True)
    _copy_tokenizer(base_dir, out)
    return out


def edit_adapter(src: Path, out: Path, edit) -> Path:
    """A copy of a LoRA adapter whose tensors ``edit`` changed (``edit(name, tensor) -> tensor``)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, out)
    weights = out / "adapter_model.safetensors"
    tensors = {name: edit(name, t.clone()) for name, t in load_file(weights).items()}
    save_file(tensors, weights)
    return out


def pickle_adapter(src: Path, out: Path) -> Path:
    """The same adapter saved as a pickle (adapter_model.bin), as old PEFT versions did."""
    import torch
    from safetensors.torch import load_file

    shutil.copytree(src, out)
    weights = out / "adapter_model.safetensors"
    torch.save(load_file(weights), out / "adapter_model.bin")
    weights.unlink()
    return out


REMOTE_CODE = """
import pathlib
pathlib.Path(__file__).with_name("CODE_RAN").write_text("the model's own code ran")
from transformers import LlamaConfig, LlamaForCausalLM


class FgConfig(LlamaConfig):
    model_type = "fg_remote"


class FgForCausalLM(LlamaForCausalLM):
    config_class = FgConfig
"""


def remote_code_model(base_dir: Path, out: Path) -> Path:
    """A model whose config points at its own Python file (auto_map), which writes CODE_RAN when it runs."""
    shutil.copytree(base_dir, out)
    (out / "modeling_fg.py").write_text(REMOTE_CODE)
    cfg = json.loads((out / "config.json").read_text())
    cfg["model_type"] = "fg_remote"
    cfg["architectures"] = ["FgForCausalLM"]
    cfg["auto_map"] = {"AutoConfig": "modeling_fg.FgConfig", "AutoModelForCausalLM": "modeling_fg.FgForCausalLM"}
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def resized_vocab_lora(resized_dir: Path, base_dir: Path, out: Path) -> Path:
    """A LoRA adapter trained on ``resized_dir`` (a larger vocabulary), saving its LM head (modules_to_save),
    whose config names ``base_dir`` as its base: the vocabulary it carries does not fit that base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resized_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"])
    )
    peft_model.save_pretrained(out)
    cfg = out / "adapter_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "base_model_name_or_path": str(base_dir)}))
    return out


def cast_copy(src: Path, out: Path, dtype: str) -> Path:
    """``src`` saved again in ``dtype`` (e.g. bfloat16): the same weights, rounded."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).to(getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    _copy_tokenizer(src, out)
    return out
