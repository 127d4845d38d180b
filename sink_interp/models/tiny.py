"""Tiny random models: the ``"tiny-*"`` test models and tiny checkpoints of many families, one builder behind both.

* :func:`tiny_model` (``"tiny-*"`` names in :func:`~sink_interp.load_model`): a Llama, SmolLM3, StableLM,
  GPT-2 or GPTBigCode model with a word-level tokenizer, behind a ``TransformerBridge``;
  :func:`tiny_hf_model` is the same Hugging Face model, the tests' independent reference.
* :func:`tiny_checkpoint` builds a small random Hugging Face causal LM of one family of :data:`ZOO`
  (and :data:`EXTRA_ZOO`) from its ``transformers`` config class, saves it with ``save_pretrained``
  (weights and config only: **no tokenizer files**, like a checkpoint a researcher trained or
  converted) and returns the folder, which :func:`sink_interp.load_model` loads like any local checkpoint.

The checkpoints' weights are large (``initializer_range=0.3``, QK-norm gains x3) so that
attention is peaked: near-uniform attention hides mistakes in how scores are
formed. Families with sliding windows get a window of 8 keys, shorter than any
test input, and the features that make each family different are switched on
(soft-capping and alternating local/global layers for Gemma-2, partial rotary
for StableLM, GPT-NeoX and GPT-J, ALiBi for Bloom, learned sink logits for
gpt-oss, QKV biases for Qwen2, QK-norm for Qwen3, Gemma-3 and OLMo-2...).

Examples:
    >>> from sink_interp import load_model
    >>> path = tiny_checkpoint("gemma2")
    >>> model = load_model(str(path))
    >>> model.tokenizer is None, model.cfg.n_layers
    (True, 2)
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from .base import LOADED_AS, bridge_class, quiet_loading, resolve_device, resolve_dtype

#: sliding window of the zoo's windowed families (keys a query sees, itself included)
WINDOW = 8
D_MODEL, N_HEADS, N_KV, N_LAYERS, D_VOCAB, N_CTX = 64, 4, 2, 2, 128, 1024
INIT = 0.3
SPECIAL = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)


# --------------------------------------------------------------------------- one builder for every tiny model
def hidden_like(
    *,
    d_vocab: int = D_VOCAB,
    d_model: int = D_MODEL,
    n_layers: int = N_LAYERS,
    n_heads: int = N_HEADS,
    n_ctx: int = N_CTX,
    **extra: Any,
) -> dict[str, Any]:
    """Config keywords shared by the families that name their sizes ``hidden_size``, ``num_hidden_layers``...;
    ``extra`` adds or overrides keywords."""
    out = dict(
        vocab_size=d_vocab,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        max_position_embeddings=n_ctx,
        **SPECIAL,
    )
    out.update(extra)
    return out


def llama_like(*, n_kv: int = N_KV, d_mlp: int | None = None, **kw: Any) -> dict[str, Any]:
    """Config keywords of a Llama-style family (Llama, Mistral, Qwen, Gemma, StableLM, SmolLM3...) for a tiny model:
    the sizes of :func:`hidden_like` (``d_vocab``, ``d_model``, ``n_layers``, ``n_heads``, ``n_ctx``), ``n_kv`` key-value
    heads and ``d_mlp``; other keywords add or override (e.g. per-layer ``num_key_value_heads``)."""
    sizes = dict(intermediate_size=d_mlp or 2 * kw.get("d_model", D_MODEL), num_key_value_heads=n_kv)
    return hidden_like(**{**sizes, **kw})


#: GPT-2's names for the sizes :func:`hidden_like` writes
_GPT2_NAMES = dict(
    hidden_size="n_embd", num_hidden_layers="n_layer", num_attention_heads="n_head", max_position_embeddings="n_positions"
)


def gpt2_like(**kw: Any) -> dict[str, Any]:
    """Config keywords of a GPT-2-style family (GPT-2, GPTBigCode, GPT-J) for a tiny model: the sizes of
    :func:`hidden_like` under GPT-2's names; other keywords add or override."""
    return {_GPT2_NAMES.get(k, k): v for k, v in hidden_like(**kw).items()}


def random_hf_model(config_class: str, kwargs: dict[str, Any], seed: int = 0) -> Any:
    """A randomly initialised Hugging Face causal LM of ``transformers.<config_class>(**kwargs)`` with eager
    attention, in eval mode, its ``architectures`` set (the bridge picks its adapter from it). Same arguments,
    same weights: the one builder behind :func:`tiny_hf_model` and :func:`tiny_checkpoint`.
    """
    import transformers
    from transformers import AutoModelForCausalLM

    cls = getattr(transformers, config_class, None)
    if cls is None:  # pragma: no cover - an older transformers
        raise ValueError(f"transformers {transformers.__version__} has no {config_class}; a newer release is needed")
    torch.manual_seed(seed)
    cfg = cls(**kwargs)
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    model.config._attn_implementation = "eager"
    model.config.architectures = [type(model).__name__]
    return model.eval()


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
    *,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
    **sizes: Any,
) -> Any:
    """The model of :func:`tiny_hf_model` behind a ``TransformerBridge``, with a word-level tokenizer.

    ``sizes``: the keywords of :func:`tiny_hf_model` (``n_layers``, ``d_model``, ``n_heads``,
    ``d_vocab``, ``n_ctx``, ``d_mlp``, ``seed``).

    Examples:
        >>> model = tiny_model(attention="mqa", positions="nope")
        >>> model.cfg.n_key_value_heads
        1
    """
    hf = tiny_hf_model(attention, positions, norm, **sizes)
    n_layers, d_vocab, seed = hf.config.num_hidden_layers, hf.config.vocab_size, sizes.get("seed", 0)
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


# --------------------------------------------------------------------------- the zoo: tiny checkpoints of many families
def _llama_like(**extra: Any) -> dict[str, Any]:
    return llama_like(initializer_range=INIT, tie_word_embeddings=False, **extra)


#: family -> (``transformers`` config class name, config keyword arguments, what the family exercises)
ZOO: dict[str, tuple[str, Callable[[], dict[str, Any]], str]] = {
    "llama": ("LlamaConfig", lambda: _llama_like(), "RoPE, GQA, RMSNorm, gated MLP"),
    "mistral": ("MistralConfig", lambda: _llama_like(sliding_window=WINDOW), "sliding window on every layer"),
    "mixtral": (
        "MixtralConfig",
        lambda: _llama_like(sliding_window=WINDOW, num_local_experts=4, num_experts_per_tok=2),
        "sliding window, mixture-of-experts MLP",
    ),
    "qwen2": (
        "Qwen2Config",
        lambda: _llama_like(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
        "Q/K/V biases, sliding window above max_window_layers",
    ),
    "qwen3": ("Qwen3Config", lambda: _llama_like(head_dim=16), "QK-norm (per head, before RoPE)"),
    "gemma": ("GemmaConfig", lambda: _llama_like(head_dim=16), "RMSNorm gain 1 + w, scaled embeddings, GeGLU"),
    "gemma2": (
        "Gemma2Config",
        lambda: _llama_like(
            head_dim=16, sliding_window=WINDOW, attn_logit_softcapping=5.0, final_logit_softcapping=30.0, query_pre_attn_scalar=24
        ),
        "logit soft-capping, alternating local/global layers, query_pre_attn_scalar",
    ),
    "gemma3": (
        "Gemma3TextConfig",
        lambda: _llama_like(
            head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=24, layer_types=["sliding_attention", "full_attention"]
        ),
        "QK-norm, local/global layers with their own RoPE bases",
    ),
    "phi3": (
        "Phi3Config",
        lambda: _llama_like(partial_rotary_factor=0.5, sliding_window=WINDOW),
        "fused qkv and gate_up, partial rotary, sliding window",
    ),
    "olmo2": ("Olmo2Config", lambda: _llama_like(), "QK-norm over all heads, norms after attention and MLP only"),
    "granite": (
        "GraniteConfig",
        lambda: _llama_like(attention_multiplier=0.09, residual_multiplier=0.5, embedding_multiplier=2.0, logits_scaling=4.0),
        "attention_multiplier instead of 1/sqrt(d)",
    ),
    "stablelm": (
        "StableLmConfig",
        lambda: _llama_like(partial_rotary_factor=0.25, use_qkv_bias=True),
        "partial rotary (25 %), LayerNorm, QKV bias",
    ),
    "gpt2": ("GPT2Config", lambda: gpt2_like(initializer_range=INIT), "learned absolute positions, Conv1D fused qkv"),
    "gpt_neox": (
        "GPTNeoXConfig",
        lambda: hidden_like(intermediate_size=2 * D_MODEL, rotary_pct=0.25, initializer_range=INIT),
        "partial rotary (25 %), fused per-head qkv, parallel attention + MLP",
    ),
    "gptj": (
        "GPTJConfig",
        lambda: gpt2_like(rotary_dim=8, initializer_range=INIT),
        "interleaved partial rotary, parallel attention + MLP, attention computed inside HF",
    ),
    "opt": (
        "OPTConfig",
        lambda: hidden_like(ffn_dim=2 * D_MODEL, word_embed_proj_dim=D_MODEL, init_std=INIT),
        "learned positions with offset, query scaled before the scores, attention computed inside HF",
    ),
    "falcon": (
        "FalconConfig",
        lambda: hidden_like(initializer_range=INIT),
        "multi-query, RoPE, parallel attention + MLP, fused qkv",
    ),
    "bloom": (
        "BloomConfig",
        lambda: dict(
            vocab_size=D_VOCAB, hidden_size=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS, initializer_range=INIT, **SPECIAL
        ),
        "ALiBi, fused qkv, embedding LayerNorm",
    ),
    "gpt_neo": (
        "GPTNeoConfig",
        lambda: dict(
            vocab_size=D_VOCAB,
            hidden_size=D_MODEL,
            num_layers=N_LAYERS,
            num_heads=N_HEADS,
            attention_types=[[["global", "local"], N_LAYERS // 2]],
            window_size=WINDOW,
            max_position_embeddings=N_CTX,
            initializer_range=INIT,
            **SPECIAL,
        ),
        "unscaled scores, alternating global/local (windowed) layers, attention computed inside HF",
    ),
    "gpt_oss": (
        "GptOssConfig",
        lambda: _llama_like(head_dim=16, sliding_window=WINDOW, num_local_experts=4, num_experts_per_tok=2),
        "learned sink logits, alternating sliding windows, mixture-of-experts MLP",
    ),
}

FAMILIES = tuple(ZOO)

#: families beyond the zoo, one feature each that an analysis must rebuild exactly or refuse by name
#: (``tests/test_refusals.py`` holds what each analysis does on them; ``docs/support-more.md`` shows it)
EXTRA_ZOO: dict[str, tuple[str, Callable[[], dict[str, Any]], str]] = {
    "ministral3": (
        "Ministral3Config",
        lambda: _llama_like(
            head_dim=16,
            rope_parameters=dict(
                rope_type="default", rope_theta=1e4, llama_4_scaling_beta=0.5, original_max_position_embeddings=4
            ),
        ),
        "Llama-4 query scale (llama_4_scaling_beta; original_max_position_embeddings 4 so it moves within the input)",
    ),
    "olmo": ("OlmoConfig", lambda: _llama_like(clip_qkv=1.0), "clip_qkv (q, k, v clamped before RoPE)"),
    "smollm3": ("SmolLM3Config", lambda: _llama_like(no_rope_layers=[1, 0]), "NoPE layers (layer 1 without RoPE)"),
    "deepseek_v2": (
        "DeepseekV2Config",
        lambda: _llama_like(
            num_key_value_heads=N_HEADS,
            kv_lora_rank=16,
            q_lora_rank=None,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=16,
            n_routed_experts=4,
            num_experts_per_tok=2,
            first_k_dense_replace=1,
            moe_intermediate_size=32,
        ),
        "MLA (latent attention; RoPE on 8 of 16 dims inside the bridge), mixture of experts",
    ),
    "mpt": (
        "MptConfig",
        lambda: dict(
            vocab_size=D_VOCAB,
            d_model=D_MODEL,
            n_heads=N_HEADS,
            n_layers=N_LAYERS,
            max_seq_len=N_CTX,
            initializer_range=INIT,
            **SPECIAL,
        ),
        "ALiBi without Falcon (MPT's slopes)",
    ),
    "xglm": (
        "XGLMConfig",
        lambda: dict(
            vocab_size=D_VOCAB,
            d_model=D_MODEL,
            attention_heads=N_HEADS,
            num_layers=N_LAYERS,
            ffn_dim=2 * D_MODEL,
            max_position_embeddings=N_CTX,
            init_std=INIT,
            **SPECIAL,
        ),
        "sinusoidal absolute positions, attention computed inside HF",
    ),
    "openai_gpt": (
        "OpenAIGPTConfig",
        lambda: gpt2_like(initializer_range=INIT),
        "post-norm (GPT-1: ln_1 after attention), learned positions",
    ),
    "falcon_h1": (
        "FalconH1Config",
        lambda: _llama_like(
            head_dim=16,
            key_multiplier=0.3,
            attention_in_multiplier=2.0,
            mamba_d_ssm=32,
            mamba_n_heads=4,
            mamba_d_head=8,
            mamba_n_groups=1,
            mamba_d_state=8,
            mamba_chunk_size=8,
        ),
        "key and attention-input multipliers, a Mamba mixer beside attention in every block",
    ),
    "laguna": (
        "LagunaConfig",
        lambda: _llama_like(head_dim=16, num_attention_heads_per_layer=[4, 8]),
        "per-layer head counts (4 and 8), RoPE inside the HF module, QK-norm, mixture of experts",
    ),
    "cohere": ("CohereConfig", lambda: _llama_like(use_qk_norm=True), "QK-norm (LayerNorm per head), adjacent-pair rotary"),
    "hunyuan_v1_dense": ("HunYuanDenseV1Config", lambda: _llama_like(head_dim=16), "QK-norm after RoPE"),
    "nanochat": ("NanoChatConfig", lambda: _llama_like(), "RoPE and QK-norm inside the HF module (no hook for normed q, k)"),
    "jetmoe": (
        "JetMoeConfig",
        lambda: dict(
            vocab_size=D_VOCAB,
            hidden_size=D_MODEL,
            num_hidden_layers=N_LAYERS,
            num_key_value_heads=N_KV,
            kv_channels=16,
            num_local_experts=2,
            num_experts_per_tok=1,
            max_position_embeddings=N_CTX,
            initializer_range=INIT,
            **SPECIAL,
        ),
        "mixture of attention heads (no q/k hooks), RoPE inside the HF module",
    ),
    "codegen": (
        "CodeGenConfig",
        lambda: gpt2_like(rotary_dim=8, initializer_range=INIT),
        "a bridge that reads an attribute this transformers release dropped",
    ),
    "deepseek_v4": ("DeepseekV4Config", lambda: _llama_like(), "attention wrapped as a generic component (no hook_pattern)"),
    "jamba": (
        "JambaConfig",
        lambda: _llama_like(
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=2,
            expert_layer_offset=1,
            num_experts=2,
            mamba_d_state=8,
            mamba_dt_rank=8,
            use_mamba_kernels=False,
        ),
        "hybrid: a Mamba block, then an attention block",
    ),
    "helium": ("HeliumConfig", lambda: _llama_like(), "an architecture the bridge cannot load"),
}
EXTRA_FAMILIES = tuple(EXTRA_ZOO)


def zoo_config(family: str) -> Any:
    """The ``transformers`` config of a zoo family (eager attention)."""
    import transformers

    if family not in ZOO and family not in EXTRA_ZOO:
        raise ValueError(f"unknown family {family!r}; the zoo has {', '.join(FAMILIES + EXTRA_FAMILIES)}")
    cls_name, kwargs, _ = ZOO[family] if family in ZOO else EXTRA_ZOO[family]
    cls = getattr(transformers, cls_name, None)
    if cls is None:  # pragma: no cover - an older transformers
        raise ValueError(f"transformers {transformers.__version__} has no {cls_name}; family {family!r} needs a newer release")
    cfg = cls(**kwargs())
    cfg._attn_implementation = "eager"
    return cfg


def tiny_hf_checkpoint_model(family: str, seed: int = 0) -> Any:
    """The random HF model of :func:`tiny_checkpoint` (eager attention, eval mode), not saved."""
    if family not in ZOO and family not in EXTRA_ZOO:
        raise ValueError(f"unknown family {family!r}; the zoo has {', '.join(FAMILIES + EXTRA_FAMILIES)}")
    cls_name, kwargs, _ = ZOO[family] if family in ZOO else EXTRA_ZOO[family]
    model = random_hf_model(cls_name, kwargs(), seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
            if leaf in ("q_norm", "k_norm"):
                # QK-norm caps |q.k|: larger gains keep attention peaked (Gemma-3 stores the gain as 1 + w)
                if family == "gemma3":
                    p.fill_(2.0)
                else:
                    p.mul_(3.0)
    return model


def tiny_checkpoint(family: str, directory: str | os.PathLike[str] | None = None, seed: int = 0) -> Path:
    """Save a tiny random checkpoint of ``family`` (no tokenizer files) and return its folder.

    Args:
        family: one of :data:`FAMILIES` (``"llama"``, ``"gemma2"``, ``"gpt_neox"``, ``"bloom"``...) or :data:`EXTRA_FAMILIES`.
        directory: where to write it (default: a new temporary folder). Written to a temporary
            folder beside it and renamed into place, so a killed call leaves nothing half-written.
        seed: weights' random seed.

    Examples:
        >>> path = tiny_checkpoint("mistral")
        >>> sorted(p.name for p in path.iterdir())
        ['config.json', 'generation_config.json', 'model.safetensors']
    """
    from transformers.utils import logging as hf_logging

    model = tiny_hf_checkpoint_model(family, seed)
    if directory is None:
        target = Path(tempfile.mkdtemp(prefix=f"sink-interp-{family}-"))
        target.rmdir()
    else:
        target = Path(directory).expanduser()
        if target.exists() and any(target.iterdir()):
            raise FileExistsError(f"directory {str(target)!r} exists and is not empty; fix: pass a new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(tmp))
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    finally:
        if was:
            hf_logging.enable_progress_bar()
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return target
