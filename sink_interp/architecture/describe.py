"""Read a loaded model's attention from its config and modules, family by family:
:func:`describe_attention` and the facts a trained model registers."""

from __future__ import annotations

import weakref
from typing import Any, Sequence

import torch

from .._internal import hooknames
from .spec import KINDS, POST_NORM, AttentionSpec, LayerAttention, Rotary, UnsupportedAttention

_CACHE: weakref.WeakKeyDictionary[Any, AttentionSpec] = weakref.WeakKeyDictionary()
_REGISTERED: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def register_attention_facts(
    model: Any, *, positional: str | None = None, attention_knobs: Sequence[str] = (), other_knobs: Sequence[str] = ()
) -> None:
    """Facts the config cannot tell: sink_interp's training laboratory attaches its knobs as permanent hooks.

    ``positional`` overrides the positional scheme (learned or ALiBi positions added by hooks);
    ``attention_knobs`` change how scores or weights form (kernels, biases, masks, ALiBi): every layer then
    lists them as unsupported, so the ``lse`` method refuses by name; ``other_knobs`` change the hidden
    states only (post-norm, other FFNs), which the hooks engine sees but a fused twin would not.
    """
    _REGISTERED[model] = {"positional": positional, "attention_knobs": tuple(attention_knobs), "other_knobs": tuple(other_knobs)}
    _CACHE.pop(model, None)


def unwrap(obj: Any) -> Any:
    """The Hugging Face module a TransformerLens bridge component wraps (the object itself otherwise)."""
    while type(obj).__module__.startswith("transformer_lens") and getattr(obj, "original_component", None) is not None:
        obj = obj.original_component
    return obj


def _bridge_kind(attn: Any) -> str:
    from transformer_lens.model_bridge.generalized_components import attention as tl_attention

    mods = {}
    for modname, cls in (
        ("position_embeddings_attention", "PositionEmbeddingsAttentionBridge"),
        ("joint_qkv_position_embeddings_attention", "JointQKVPositionEmbeddingsAttentionBridge"),
        ("joint_qkv_attention", "JointQKVAttentionBridge"),
        ("bloom_attention", "BloomAttentionBridge"),
        ("alibi_joint_qkv_attention", "ALiBiJointQKVAttentionBridge"),
    ):
        try:
            module = __import__(f"transformer_lens.model_bridge.generalized_components.{modname}", fromlist=[cls])
            mods[cls] = getattr(module, cls)
        except (ImportError, AttributeError):  # pragma: no cover - TransformerLens layout changed
            pass

    def isa(name: str) -> bool:
        return name in mods and isinstance(attn, mods[name])

    if isa("PositionEmbeddingsAttentionBridge"):
        return "rotated"
    if isa("ALiBiJointQKVAttentionBridge"):
        return "alibi-falcon"
    if isa("BloomAttentionBridge"):
        return "alibi"
    if isa("JointQKVPositionEmbeddingsAttentionBridge") or isa("JointQKVAttentionBridge"):
        return "joint"
    if type(attn).forward is tl_attention.AttentionBridge.forward:
        return "delegated"
    return "unknown"


def _rotary_module(hf_model: Any) -> Any:
    """The model-level rotary table maker (``model.rotary_emb``...), unwrapped; None when there is none."""
    best = None
    for name, mod in hf_model.named_modules():
        inner = unwrap(mod)
        if type(inner).__name__.endswith("RotaryEmbedding") and ".layers." not in f".{name}." and ".h." not in f".{name}.":
            if best is None or name.count(".") < best[0].count("."):
                best = (name, inner)
    return None if best is None else best[1]


def _rotary_fraction(cfg: Any) -> float:
    d = cfg.to_dict()
    for src in (d.get("rope_parameters"), d.get("rope_scaling"), d):
        if isinstance(src, dict):
            for key in ("partial_rotary_factor", "rotary_pct"):
                if src.get(key) is not None:
                    return float(src[key])
    return 1.0


def _layer_types(cfg: Any, n_layers: int) -> list[str]:
    types = getattr(cfg, "layer_types", None)
    if isinstance(types, (list, tuple)) and len(types) >= n_layers:
        return [str(t) for t in types[:n_layers]]
    return ["full_attention"] * n_layers


def _window(cfg: Any, layer_type: str) -> int | None:
    w = getattr(cfg, "sliding_window", None)
    if not w or getattr(cfg, "use_sliding_window", True) is False and "sliding" not in layer_type:
        return None
    if getattr(cfg, "layer_types", None) is not None:
        return int(w) if "sliding" in layer_type else None
    return int(w)


def _uses_rope(cfg: Any, layer: int, hf_attn: Any) -> bool:
    no_rope = getattr(cfg, "no_rope_layers", None)
    if isinstance(no_rope, (list, tuple)) and layer < len(no_rope):
        return bool(no_rope[layer])  # SmolLM3 / Llama-4: 1 = this layer uses RoPE
    use = getattr(hf_attn, "use_rope", None)
    return True if use is None else bool(use)


#: attention bridges that read an attribute of the Hugging Face module that newer transformers releases dropped
_BRIDGE_NEEDS = {"CodeGenAttentionBridge": "embed_positions"}


def _mixer(layer: Any) -> str:
    """A non-attention block in words: its token mixer (``mamba (JambaMambaMixer)``), else the block's class."""
    skip = ("norm", "mlp", "feed_forward", "ffn", "moe", "dropout", "act", "hook")
    if isinstance(layer, torch.nn.Module):
        for name, child in layer.named_children():
            if not any(w in name.lower() for w in skip):
                return f"{type(layer).__name__} with {name} ({type(unwrap(child)).__name__})"
    return type(layer).__name__


def _check_blocks(model: Any, family: str, arch: str) -> None:
    """Refuse, in one line, a model whose blocks are not all attention, or whose bridge exposes no attention weights."""
    blocks = list(model.blocks)
    other = [l for l, blk in enumerate(blocks) if getattr(blk, "attn", None) is None]
    if other:
        kinds = sorted({_mixer(unwrap(blocks[l])) for l in other})
        attn_layers = [l for l in range(len(blocks)) if l not in other]
        what = (
            f"a hybrid: block(s) {other} are {', '.join(kinds)}"
            if attn_layers
            else f"not attention: its blocks are {', '.join(kinds)}"
        )
        raise UnsupportedAttention(
            f"{arch} ({family}) is {what}"
            + (f" (attention only in block(s) {attn_layers})" if attn_layers else "")
            + "; sink_interp analyses models whose every block is attention (see docs/support.md)"
        )
    for blk in blocks:
        attn, hf_attn = blk.attn, unwrap(blk.attn)
        for bridge_name, needs in _BRIDGE_NEEDS.items():
            if type(attn).__name__ == bridge_name and not hasattr(hf_attn, needs):
                import transformers

                raise UnsupportedAttention(
                    f"{arch} ({family}): the TransformerLens bridge reads {type(hf_attn).__name__}.{needs}, which "
                    f"transformers {transformers.__version__} no longer has, so this model cannot run through the bridge; "
                    "see docs/support.md"
                )
    missing = [nm for nm in (hooknames.pattern(0), hooknames.resid_pre(0)) if nm not in model.hook_dict]
    if missing:
        raise UnsupportedAttention(
            f"{arch} ({family}): the TransformerLens bridge exposes no {', '.join(missing)} for this architecture "
            "(its attention is wrapped as a generic component), so no analysis can read its attention; see docs/support.md"
        )


def _query_scale(cfg: Any) -> str | None:
    """A position-dependent query scale the model applies after RoPE (Ministral-3 / Llama-4 ``llama_4_scaling_beta``)."""
    if cfg is None:
        return None
    rp = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None)
    beta = rp.get("llama_4_scaling_beta") if isinstance(rp, dict) else None
    if beta:
        return f"llama_4_scaling_beta {float(beta):g}"
    if getattr(cfg, "attn_temperature_tuning", False) and getattr(cfg, "model_type", "").startswith("llama4"):
        return "attn_temperature_tuning"
    return None


def _multipliers(cfg: Any) -> tuple[str, ...]:
    """Scalar multipliers on attention's input or keys (Falcon-H1's muP multipliers), in words."""
    out = []
    for name in ("key_multiplier", "attention_in_multiplier"):
        v = getattr(cfg, name, None) if cfg is not None else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and float(v) != 1.0:
            out.append(f"{name} {float(v):g}")
    return tuple(out)


def _layer_heads(hf_attn: Any, d: int, default: int) -> int:
    """Query heads of one layer (Laguna sets them per layer), from the module's own attributes or projection."""
    for name in ("num_heads", "num_attention_heads", "n_heads"):
        v = getattr(hf_attn, name, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    q = getattr(hf_attn, "q_proj", None)
    out = getattr(q, "out_features", None)
    hd = getattr(hf_attn, "head_dim", None) or d
    if (
        isinstance(out, int)
        and isinstance(hd, int)
        and hd > 0
        and out % hd == 0
        and getattr(hf_attn, "kv_a_proj_with_mqa", None) is None
    ):
        return out // hd
    return default


def _sinusoidal(hf_model: Any) -> bool:
    """Whether the model adds fixed sinusoidal position embeddings (XGLM)."""
    if hf_model is None:
        return False
    return any("Sinusoidal" in type(m).__name__ for _, m in hf_model.named_modules())


def describe_attention(model: Any) -> AttentionSpec:
    """Read how every layer of ``model`` (a TransformerBridge) forms its attention.

    Cached per model. Features sink_interp cannot rebuild from q and k are listed per layer
    (``LayerAttention.unsupported``); analyses that need them refuse with the feature named.

    Examples:
        >>> from sink_interp import load_model
        >>> from sink_interp.models import tiny_checkpoint
        >>> spec = describe_attention(load_model(str(tiny_checkpoint("gpt_neox"))))
        >>> la = spec.layer(0)
        >>> la.kind, la.q_hook, la.rotary.dims, spec.parallel
        ('joint', 'blocks.0.attn.hook_q', 4, True)
    """
    try:
        cached = _CACHE.get(model)
    except TypeError:  # not weak-referenceable
        cached = None
    if cached is not None:
        return cached
    spec = _describe(model)
    try:
        _CACHE[model] = spec
    except TypeError:  # pragma: no cover
        pass
    return spec


def _describe(model: Any) -> AttentionSpec:
    cfg = model.cfg
    hf_model = getattr(model, "original_model", None)
    hf_cfg = getattr(hf_model, "config", None)
    if hf_cfg is not None and hasattr(hf_cfg, "get_text_config"):
        hf_cfg = hf_cfg.get_text_config()
    L, H, d = int(cfg.n_layers), int(cfg.n_heads), int(cfg.d_head)
    G = int(getattr(cfg, "n_key_value_heads", None) or H)
    family = str(getattr(hf_cfg, "model_type", "") or "unknown")
    arch = type(hf_model).__name__ if hf_model is not None else type(model).__name__
    types = _layer_types(hf_cfg, L) if hf_cfg is not None else ["full_attention"] * L
    rot_module = _rotary_module(hf_model) if hf_model is not None else None
    fraction = _rotary_fraction(hf_cfg) if hf_cfg is not None else 1.0
    points = model.hook_dict
    positional_cfg = str(getattr(cfg, "positional_embedding_type", "") or "").lower()
    try:
        registered = _REGISTERED.get(model, {})
    except TypeError:  # not weak-referenceable
        registered = {}

    _check_blocks(model, family, arch)
    mpt_alibi = family == "mpt"
    clip_qkv = getattr(hf_cfg, "clip_qkv", None) if hf_cfg is not None else None
    if clip_qkv is None and hf_cfg is not None:
        clip_qkv = (
            (getattr(hf_cfg, "attn_config", None) or {}).get("clip_qkv")
            if isinstance(getattr(hf_cfg, "attn_config", None), dict)
            else None
        )
    query_scale = _query_scale(hf_cfg)
    multipliers = _multipliers(hf_cfg)
    layers = []
    for l in range(L):
        attn = model.blocks[l].attn
        hf_attn = unwrap(attn)
        kind = _bridge_kind(attn)
        unsupported: list[str] = []
        softcap = getattr(hf_attn, "attn_logit_softcapping", None)
        window = _window(hf_cfg, types[l]) if hf_cfg is not None else None
        if "chunked" in types[l]:
            unsupported.append("chunked attention")
        alibi = None
        rotary = None
        subs = getattr(attn, "submodules", {}) or {}
        qk_norm = None
        if "q_norm" in subs or "k_norm" in subs:
            qk_norm = "all-heads" if getattr(attn, "_qk_norm_phase", None) == "pre_reshape" else "per-head"
        if kind == "rotated":
            scale = float(getattr(hf_attn, "scaling", d**-0.5))
            q_hook, k_hook = hooknames.rot_q(l), hooknames.rot_k(l)
            if getattr(cfg, "qk_norm_after_rope", False) and qk_norm:
                q_hook, k_hook = hooknames.block(l, "attn.hook_q_normed"), hooknames.block(l, "attn.hook_k_normed")
            if rot_module is not None and _uses_rope(hf_cfg, l, hf_attn) and positional_cfg in ("rotary", ""):
                if getattr(cfg, "rotary_interleaved_cos_sin", False) or getattr(cfg, "rotary_adjacent_pairs", False):
                    style = "adjacent"
                else:
                    style = "half"
                rotary = Rotary(
                    style, int(round(d * fraction)), True, rot_module, layer_type=types[l], duplicate_halves=family == "gpt_oss"
                )
        elif kind in ("joint", "alibi", "alibi-falcon"):
            scale = d**-0.5
            if getattr(attn.config, "scale_attn_by_inverse_layer_idx", False) and getattr(attn, "_layer_idx", None) is not None:
                scale /= float(attn._layer_idx + 1)
            q_hook, k_hook = hooknames.q(l), hooknames.k(l)
            if getattr(attn, "requires_position_embeddings", False) and rot_module is not None:
                rotary = Rotary("half", int(round(d * fraction)), False, rot_module)
            if kind == "alibi":
                alibi = "bloom"
            elif kind == "alibi-falcon" and mpt_alibi:
                unsupported.append("MPT's ALiBi (its own slopes, alibi_bias_max, which sink_interp does not rebuild)")
            elif kind == "alibi-falcon":
                unsupported.append("Falcon's ALiBi (added twice in Hugging Face's eager attention)")
        elif kind == "delegated":
            scale = float(getattr(hf_attn, "scaling", d**-0.5))
            q_hook, k_hook = hooknames.q(l), hooknames.k(l)
            if family == "gpt_neo":  # GPT-Neo does not scale q.k; its "local" layers see the last window_size keys
                scale = 1.0
                if getattr(hf_attn, "attention_type", "global") == "local":
                    window = int(hf_cfg.window_size)
            elif not hasattr(hf_attn, "scaling"):
                unsupported.append(f"{type(hf_attn).__name__} without a 'scaling' attribute (unknown score scale)")
            if family in ("gptj",) and rot_module is not None:
                rd = getattr(hf_cfg, "rotary_dim", None) or d
                rotary = Rotary("interleaved", int(rd), False, rot_module)
            elif rot_module is not None:
                unsupported.append(f"rotary embedding applied inside {type(hf_attn).__name__}")
        else:
            scale = float(getattr(hf_attn, "scaling", d**-0.5))
            q_hook, k_hook = hooknames.q(l), hooknames.k(l)
            unsupported.append(f"attention bridge {type(attn).__name__}")
        if rotary is not None and rotary.style == "adjacent" and not rotary.in_hooks:
            unsupported.append("adjacent-pair rotary")
        for nm in (q_hook, k_hook):
            if nm not in points:
                unsupported.append(f"no hook {nm}")
        if type(attn).__name__.startswith("MLA"):
            position = "rope inside MLA"
        elif rotary is not None:
            position = "rope"
        elif kind in ("alibi", "alibi-falcon"):
            position = "alibi"
        elif rot_module is not None and _uses_rope(hf_cfg, l, hf_attn) and positional_cfg in ("rotary", ""):
            position = f"rope inside {type(hf_attn).__name__}"
        else:
            position = "nope"
        heads_l = _layer_heads(hf_attn, d, H)
        if heads_l != H:
            unsupported.append(f"per-layer head counts (layer {l} has {heads_l} heads, the config {H})")
        if registered.get("attention_knobs"):
            unsupported.append("training knobs on attention (" + ", ".join(registered["attention_knobs"]) + ")")
        layers.append(
            LayerAttention(
                layer=l,
                kind=kind if kind in KINDS else "unknown",
                n_heads=heads_l,
                n_kv_heads=G,
                d_head=d,
                scale=scale,
                q_hook=q_hook,
                k_hook=k_hook,
                rotary=rotary,
                softcap=None if softcap is None else float(softcap),
                window=window,
                alibi=alibi,
                qk_norm=qk_norm,
                module=hf_attn,
                unsupported=tuple(dict.fromkeys(unsupported)),
                position=position,
                clip_qkv=None if clip_qkv is None else float(clip_qkv),
                query_scale=query_scale,
                multipliers=multipliers,
                qk_norm_after_rope=bool(getattr(cfg, "qk_norm_after_rope", False) and qk_norm),
            )
        )

    hf_first = unwrap(model.blocks[0].attn)
    names = {n for n, _ in hf_first.named_children()} if isinstance(hf_first, torch.nn.Module) else set()
    fused_qkv = bool(names & {"qkv_proj", "query_key_value", "c_attn", "Wqkv", "W_pack"})
    qkv_bias = False
    for nm in ("q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "c_attn"):
        sub = getattr(hf_first, nm, None)
        if sub is not None and getattr(sub, "bias", None) is not None:
            qkv_bias = True
    mlp = unwrap(model.blocks[0].mlp) if hasattr(model.blocks[0], "mlp") else None
    mlp_names = {n for n, _ in mlp.named_modules()} if isinstance(mlp, torch.nn.Module) else set()
    fused_gate_up = any(n.endswith("gate_up_proj") for n in mlp_names) or any(
        "gate_up_proj" in n for n, _ in (mlp.named_parameters() if isinstance(mlp, torch.nn.Module) else [])
    )
    moe = bool(
        getattr(hf_cfg, "num_local_experts", None)
        or getattr(hf_cfg, "num_experts", None)
        or any("expert" in n for n in mlp_names)
    )
    parallel = hooknames.resid_mid(0) not in points
    pre_norm = hooknames.ln1_normalized(0) in points and family not in POST_NORM
    ln = getattr(model.blocks[0], "ln1", None) or getattr(model.blocks[0], "ln2", None)
    norm = "rms" if getattr(ln, "uses_rms_norm", str(getattr(cfg, "normalization_type", "")).startswith("RMS")) else "layer"
    gain_offset = 1.0 if getattr(ln, "uses_weight_offset", False) else 0.0
    if any(la.position == "alibi" for la in layers):
        positional = "alibi"
    elif any(la.position.startswith("rope") for la in layers):
        positional = "rope" if all(la.position.startswith("rope") for la in layers) else "rope+nope"
    elif _sinusoidal(hf_model):
        positional = "sinusoidal"
    elif "pos_embed" in dict(model.named_children()):
        positional = "learned"
    else:
        positional = "nope"
    positional = registered.get("positional") or positional
    knobs = tuple(registered.get("attention_knobs", ())) + tuple(registered.get("other_knobs", ()))
    return AttentionSpec(
        family=family,
        architecture=arch,
        layers=tuple(layers),
        n_heads=H,
        n_kv_heads=G,
        d_head=d,
        positional=positional,
        qkv_bias=qkv_bias,
        parallel=parallel,
        pre_norm=pre_norm,
        norm=norm,
        gain_offset=gain_offset,
        fused_qkv=fused_qkv,
        fused_gate_up=fused_gate_up,
        moe=moe,
        knobs=knobs,
    )
