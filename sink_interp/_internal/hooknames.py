"""TransformerLens 4.x (``TransformerBridge``) hook names, in one place.

Every other module builds hook names through these functions, never as
scattered strings, so that a rename in TransformerLens is a one-file fix.
Shapes are those of the bridge (b = batch, s = sequence, H = query heads,
G = key/value heads, d = head dim, D = d_model).
"""

from __future__ import annotations

import re

EMBED = "hook_embed"  # [b, s, D] token embedding
POS_EMBED = "hook_pos_embed"  # [b, s, D] learned absolute positions (if any)
LN_FINAL_SCALE = "ln_final.hook_scale"
LN_FINAL_NORMALIZED = "ln_final.hook_normalized"


def block(layer: int, name: str) -> str:
    return f"blocks.{layer}.{name}"


def resid_pre(layer: int) -> str:  # [b, s, D] residual entering block `layer`
    return block(layer, "hook_resid_pre")


def resid_mid(layer: int) -> str:  # [b, s, D] after attention, before MLP
    return block(layer, "hook_resid_mid")


def resid_post(layer: int) -> str:  # [b, s, D] leaving block `layer`
    return block(layer, "hook_resid_post")


def attn_out(layer: int) -> str:  # [b, s, D] attention output written to the residual
    return block(layer, "hook_attn_out")


def mlp_out(layer: int) -> str:  # [b, s, D] MLP output written to the residual
    return block(layer, "hook_mlp_out")


def ln1_scale(layer: int) -> str:  # [b, s, 1] the norm's divisor (RMS or std)
    return block(layer, "ln1.hook_scale")


def ln1_normalized(layer: int) -> str:  # [b, s, D] x / scale, before the gain
    return block(layer, "ln1.hook_normalized")


def ln1_out(layer: int) -> str:  # [b, s, D] normalized * gain (+ bias)
    return block(layer, "ln1.hook_out")


def ln2_out(layer: int) -> str:
    return block(layer, "ln2.hook_out")


def q(layer: int) -> str:  # [b, s, H, d] before RoPE
    return block(layer, "attn.hook_q")


def k(layer: int) -> str:  # [b, s, G, d] before RoPE
    return block(layer, "attn.hook_k")


def v(layer: int) -> str:  # [b, s, G, d]
    return block(layer, "attn.hook_v")


def rot_q(layer: int) -> str:  # [b, s, H, d] after RoPE (rotary models only)
    return block(layer, "attn.hook_rot_q")


def rot_k(layer: int) -> str:  # [b, s, G, d] after RoPE (rotary models only)
    return block(layer, "attn.hook_rot_k")


def attn_scores(layer: int) -> str:  # [b, H, s_q, s_k] scaled, masked scores
    return block(layer, "attn.hook_attn_scores")


def pattern(layer: int) -> str:  # [b, H, s_q, s_k] attention weights
    return block(layer, "attn.hook_pattern")


def z(layer: int) -> str:  # [b, s, H, d] pattern @ v, before W_O
    return block(layer, "attn.hook_z")


def mlp_in(layer: int) -> str:  # [b, s, D] the MLP's input (= ln2 output in pre-norm blocks)
    return block(layer, "mlp.hook_in")


def mlp_pre(layer: int) -> str:  # [b, s, d_mlp] gate pre-activation (gated MLPs)
    return block(layer, "mlp.hook_pre")


def mlp_post(layer: int) -> str:  # [b, s, d_mlp] input of the MLP's output projection
    return block(layer, "mlp.hook_post")


#: the linear layers whose inputs activation quantization reads (fused ``attn.qkv`` is absent: its hook_in edits
#: do not reach the bridge's split q/k/v)
LINEARS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.in", "mlp.out")


def linear_in(layer: int, linear: str) -> str:  # [b, s, ...] input of a linear layer of the block ("attn.q", "mlp.out")
    return block(layer, f"{linear}.hook_in")


_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")


def layer_of(name: str) -> int | None:
    """The block index in a hook name, or None for hooks outside the blocks."""
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else None
