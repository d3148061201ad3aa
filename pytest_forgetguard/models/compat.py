"""Whether two models can be compared token by token: tokenizers, vocabulary sizes, context windows.

Example::

    vocab = check_compatible(base, candidate)            # ids to compare, or an error saying why not
    tokenizer_difference(base, candidate)                # None, or where the tokenizers disagree
    precision_difference(base, candidate)                # None, or why their dtypes alone move the numbers
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import IncompatibleModelsError, TokenizerMismatchError
from .weights import saved_dtype

if TYPE_CHECKING:
    from .protocol import ModelLike

# Floating-point dtypes from the fewest mantissa bits to the most: a cast down this list rounds.
PRECISION = ("bfloat16", "float16", "float32", "float64")


def embedding_rows(handle: "ModelLike") -> int:
    head = handle.raw_model.get_output_embeddings()
    if head is None:
        raise IncompatibleModelsError(f"model {handle.label!r} has no output embedding (LM head)")
    weight = getattr(head, "weight", None)
    if weight is None and hasattr(head, "base_layer"):
        weight = head.base_layer.weight
    if weight is None:
        raise IncompatibleModelsError(f"model {handle.label!r}: cannot read the LM head's weight")
    return int(weight.shape[0])


def tokenizer_difference(base: "ModelLike", candidate: "ModelLike", allow_extra: bool = False) -> str | None:
    """Why the two tokenizers do not read the same token ids (None when they do).

    With ``allow_extra``, one vocabulary may extend the other at its end
    (the shared ids must still agree).
    """
    vb = {i: t for t, i in base.tokenizer.get_vocab().items()}
    vc = {i: t for t, i in candidate.tokenizer.get_vocab().items()}
    shared = min(len(vb), len(vc))
    for i in sorted(set(vb) | set(vc)):
        tb, tc = vb.get(i), vc.get(i)
        if tb != tc:
            if allow_extra and (tb is None or tc is None) and i >= shared:
                return None
            return (
                f"tokenizers differ at token id {i}: base {base.label!r} has {tb!r}, candidate "
                f"{candidate.label!r} has {tc!r} ({len(vb)} vs {len(vc)} tokens)"
            )
    return None


def check_compatible(base: "ModelLike", candidate: "ModelLike", allow_vocab_mismatch: bool = False) -> int:
    """Raise unless the two models can be compared token by token.

    Returns the number of vocabulary ids to compare (the shared prefix when
    ``allow_vocab_mismatch`` is set and the sizes differ). Tokenizers that
    disagree on a shared id raise :class:`TokenizerMismatchError` whatever
    the option: such a pair can never be compared.
    """
    differ = tokenizer_difference(base, candidate, allow_extra=True)
    if differ is None and not allow_vocab_mismatch:
        differ = tokenizer_difference(base, candidate)
        if differ is not None:
            raise IncompatibleModelsError(
                f"{differ}. KL needs both models to read the same token ids: compare a candidate fine-tuned "
                "from this base, or pass allow_vocab_mismatch=True (suite: 'allow_vocab_mismatch: true') "
                "when one vocabulary only extends the other."
            )
    elif differ is not None:
        raise TokenizerMismatchError(
            f"{differ}. KL needs both models to read the same token ids: compare a candidate fine-tuned from this base."
        )
    rows_b, rows_c = embedding_rows(base), embedding_rows(candidate)
    if rows_b != rows_c:
        if not allow_vocab_mismatch:
            raise IncompatibleModelsError(
                f"vocabulary sizes differ: base {base.label!r} has {rows_b} output rows, candidate "
                f"{candidate.label!r} has {rows_c}. Pass allow_vocab_mismatch=True (suite: "
                f"'allow_vocab_mismatch: true') to compare on the {min(rows_b, rows_c)} shared ids."
            )
        return min(rows_b, rows_c)
    return rows_b


def context_window(handle: "ModelLike") -> int | None:
    """The most tokens the model reads at once (its position limit), where its config says; else None."""
    config = getattr(handle.raw_model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def precision_difference(base: "ModelLike", candidate: "ModelLike") -> str | None:
    """Why the two models differ by numeric precision alone (None when they do not): saved in different
    dtypes (the safetensors headers say) and loaded in a wider one than the narrower of the two, so the
    base keeps digits the candidate lost when it was saved. Loaded in the narrower dtype, both round alike.

    Only full models in local directories are compared (an adapter runs on its base's weights; a model in
    memory, such as the training callback's, has no files).
    """
    specs = [getattr(h, "spec", None) for h in (base, candidate)]
    if any(spec is None or spec.kind != "dir" for spec in specs):
        return None
    saved_b, saved_c = (saved_dtype(Path(spec.location)) for spec in specs)  # type: ignore[union-attr]
    if saved_b is None or saved_c is None or saved_b == saved_c:
        return None
    narrow = min(saved_b, saved_c, key=PRECISION.index)
    if base.dtype == narrow:
        return None
    return (
        f"base {base.label!r} is {saved_b}, candidate {candidate.label!r} is {saved_c} (as saved; both loaded as "
        f"{base.dtype}): numeric precision alone moves weights and logits; compare in one dtype (--fg-dtype {narrow})"
    )
