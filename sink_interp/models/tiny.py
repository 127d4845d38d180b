"""The tiny random test models (``"tiny-*"`` names): a word-level tokenizer, the Hugging Face
reference model and the same model behind a ``TransformerBridge``."""

from __future__ import annotations

import copy
import os
from typing import Any

import torch

from .base import LOADED_AS, bridge_class, quiet_loading, resolve_device, resolve_dtype

#: Names of the random test models understood by :func:`load_model`, with the
#: keyword arguments they pass to :func:`tiny_model`.
TINY_MODELS: dict[str, dict[str, Any]] = {
    "tiny-mha": dict(attention="mha", positions="rope", norm="rms"),
    "tiny-mqa": dict(attention="mqa", positions="rope", norm="rms"),
    "tiny-gqa": dict(attention="gqa", positions="rope", norm="rms"),
    "tiny-nope": dict(attention="gqa", positions="nope", norm="rms"),
    "tiny-learned": dict(attention="mha", positions="learned", norm="layer"),
    "tiny-learned-mqa": dict(attention="mqa", positions="learned", norm="layer"),
    "tiny-layernorm-rope": dict(attention="gqa", positions="rope", norm="layer"),
}


def tiny_tokenizer(d_vocab: int) -> Any:
    """A whitespace word-level tokenizer: ids 0-3 are ``<pad> <bos> <eos> <unk>``, id ``i >= 4`` is the word ``t{i}``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, **{f"t{i}": i for i in range(4, d_vocab)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        name_or_path="sink-interp-tiny",
        add_bos_token=True,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


def tiny_hf_model(
    attention: str = "gqa",
    positions: str = "rope",
    norm: str = "rms",
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    d_vocab: int = 128,
    n_ctx: int = 256,
    d_mlp: int | None = None,
    seed: int = 0,
) -> Any:
    """A randomly initialised Hugging Face causal LM with eager attention.

    Calling it twice with the same arguments gives identical weights, which
    tests use as an independent reference for :func:`tiny_model`.

    ``attention``: ``"mha"`` (one KV head per query head), ``"mqa"`` (one KV
    head), ``"gqa"`` (``n_heads // 2`` KV heads). ``positions``: ``"rope"``,
    ``"nope"`` (no positional information at all) or ``"learned"`` (absolute
    embeddings). ``norm``: ``"rms"`` or ``"layer"``.
    """
    from ..zoo import gpt2_like, llama_like, random_hf_model

    if attention not in ("mha", "mqa", "gqa"):
        raise ValueError(f"attention must be 'mha', 'mqa' or 'gqa', got {attention!r}")
    if positions not in ("rope", "nope", "learned"):
        raise ValueError(f"positions must be 'rope', 'nope' or 'learned', got {positions!r}")
    if norm not in ("rms", "layer"):
        raise ValueError(f"norm must be 'rms' or 'layer', got {norm!r}")
    if n_heads % 2 and attention == "gqa":
        raise ValueError(f"attention='gqa' needs an even n_heads, got {n_heads}")
    n_kv = {"mha": n_heads, "mqa": 1, "gqa": max(1, n_heads // 2)}[attention]
    d_mlp = d_mlp or 2 * d_model
    dims = dict(d_vocab=d_vocab, d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_ctx=n_ctx)
    if positions == "learned" or (positions == "nope" and norm == "layer"):
        if norm != "layer":
            raise ValueError("positions='learned' is available with norm='layer' (GPT-2 style); fix: norm='layer'")
        if attention == "gqa":
            raise ValueError(
                "learned/absolute positions come from GPT-2 (MHA) or GPTBigCode (MQA); fix: attention='mha' or 'mqa'"
            )
        if attention == "mqa":
            model = random_hf_model("GPTBigCodeConfig", gpt2_like(**dims, n_inner=d_mlp, multi_query=True), seed)
        else:
            model = random_hf_model("GPT2Config", gpt2_like(**dims, n_inner=d_mlp), seed)
        if positions == "nope":
            with torch.no_grad():
                model.transformer.wpe.weight.zero_()
            model.transformer.wpe.weight.requires_grad_(False)
        return model
    llama = llama_like(**dims, n_kv=n_kv, d_mlp=d_mlp)
    if positions == "nope":
        return random_hf_model("SmolLM3Config", {**llama, "no_rope_layers": [0] * n_layers, "tie_word_embeddings": False}, seed)
    if norm == "layer":
        return random_hf_model("StableLmConfig", {**llama, "partial_rotary_factor": 1.0}, seed)
    return random_hf_model("LlamaConfig", llama, seed)


def tiny_model(
    attention: str = "gqa",
    positions: str = "rope",
    norm: str = "rms",
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    d_vocab: int = 128,
    n_ctx: int = 256,
    d_mlp: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
) -> Any:
    """A small random model behind a ``TransformerBridge`` (see :func:`tiny_hf_model`).

    Examples:
        >>> model = tiny_model(attention="mqa", positions="nope")
        >>> model.cfg.n_key_value_heads
        1
    """
    hf = tiny_hf_model(attention, positions, norm, n_layers, d_model, n_heads, d_vocab, n_ctx, d_mlp, seed)
    hf = copy.deepcopy(hf)  # the bridge wraps modules in place; keep the reference untouched
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dev = resolve_device(device)
    with quiet_loading():
        model = bridge_class().boot_transformers(
            f"tiny-{attention}-{positions}-{norm}",
            hf_model=hf,
            tokenizer=tiny_tokenizer(d_vocab),
            device=str(dev),
            dtype=resolve_dtype(dtype),
        )
        model = model.to(device=dev, dtype=resolve_dtype(dtype)).eval()
    LOADED_AS[model] = f"tiny-{attention}-{positions}-{norm}-L{n_layers}-seed{seed}"
    return model
