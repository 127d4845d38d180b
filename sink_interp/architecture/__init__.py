"""How each layer of a loaded model forms its attention: one description, read from its config and modules.

Every analysis that computes attention itself (the blockwise ``lse`` scores,
the fused engine, masks, the interventions, streaming, the trace links) asks
this module, and nothing else, how layer ``l`` turns its queries and keys into
attention weights:

    s[t, j] = softcap(scale * q_t . k_j) + alibi[h, j]          (cap * tanh(x / cap) when soft-capped)
    A[t, j] = exp(s[t, j]) / (sum_{i visible} exp(s[t, i]) + exp(sink_h))   over visible keys j

with ``q`` and ``k`` after the model's QK-norm and rotary embedding, visible
meaning causal and inside the layer's sliding window (``t - j < window``), and
``sink_h`` the learned sink logit of gpt-oss-style models (absent elsewhere).
:func:`describe_attention` reads, per layer:

* **where q and k are**: the bridge hooks that carry them as they meet
  (``hook_rot_q``/``hook_rot_k`` where the bridge fires them after RoPE), or
  the hooks before the rotary embedding plus the rotation to apply (GPT-NeoX,
  Phi-3 and Falcon, whose bridges rotate without firing those hooks, and GPT-J,
  whose attention runs inside Hugging Face);
* the **scale** (``1/sqrt(d)``, ``query_pre_attn_scalar``, ``attention_multiplier``...),
  **logit soft-capping**, the **sliding window** of each layer (alternating
  local/global layers), **ALiBi**, **learned sink logits**;
* the **rotary** style (rotate-half or interleaved), the rotated dims and the
  Hugging Face module that makes its tables;
* **QK-norm**, **Q/K/V biases**, the **GQA** mapping (query head ``h`` reads KV
  head ``h // (H / G)``), **parallel** attention + MLP, the **norm gain**
  convention (Gemma stores ``g = 1 + w``), **fused** ``qkv`` / ``gate_up``
  weights, mixture-of-experts MLPs;
* whether edits at ``hook_attn_scores`` / ``hook_pattern`` reach the output
  (they do not where the bridge hands attention to the Hugging Face module and
  only reports its weights afterwards: OPT, GPT-J).

:func:`check_attention` compares the description with the model's own
``hook_pattern`` on a short input; the tests do this for every family of the
zoo (:mod:`sink_interp.models.tiny`) against Hugging Face eager attention.

Examples:
    >>> from sink_interp import load_model, describe_attention
    >>> from sink_interp.models import tiny_checkpoint
    >>> spec = describe_attention(load_model(str(tiny_checkpoint("gemma2"))))
    >>> [(la.window, la.softcap, round(la.scale, 4)) for la in spec.layers]
    [(8, 5.0, 0.2041), (None, 5.0, 0.2041)]

The package's modules: :mod:`.spec` (the description: :class:`LayerAttention`, :class:`AttentionSpec`),
:mod:`.describe` (reading it from a model: :func:`describe_attention`) and :mod:`.checks` (checking it
against the model, and the refusals).
"""

# re-exported: every name other modules import from sink_interp.architecture (``X as X`` marks a re-export);
# __all__ below is the public part
from .checks import ATTENTION_ATOL as ATTENTION_ATOL
from .checks import VERIFY_TOKENS as VERIFY_TOKENS
from .checks import attention_atol as attention_atol
from .checks import check_attention
from .checks import check_context as check_context
from .checks import check_head_counts as check_head_counts
from .checks import check_model_tokens as check_model_tokens
from .checks import qk_hooks as qk_hooks
from .checks import rerotation_blockers as rerotation_blockers
from .checks import verify_attention as verify_attention
from .checks import verify_rerotation as verify_rerotation
from .describe import describe_attention
from .describe import register_attention_facts as register_attention_facts
from .describe import unwrap as unwrap
from .spec import KINDS as KINDS
from .spec import PATTERN_FIX as PATTERN_FIX
from .spec import AttentionSpec, LayerAttention, Rotary, UnsupportedAttention
from .spec import expand_kv as expand_kv

__all__ = [
    "AttentionSpec",
    "LayerAttention",
    "Rotary",
    "UnsupportedAttention",
    "check_attention",
    "describe_attention",
]
