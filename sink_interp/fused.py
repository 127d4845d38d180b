"""The fused engine: sink scores with fused attention, for measurement-only runs.

The TransformerBridge computes attention itself, eagerly (scores, mask,
softmax, pattern: four ``heads x T x T`` tensors per layer), so that its hooks
see every step; at T = 2048 that alone costs about 2.5x a plain forward.
A measurement that changes nothing does not need those hooks. This module runs
the Hugging Face model *inside* the bridge with its own attention function:

* a **twin**: the HF class of ``bridge.original_model`` built on the meta
  device (no memory, milliseconds) whose parameters and buffers are then *the
  bridge's own tensors* (``bridge.original_model`` wraps every HF module in
  place; the twin reaches through the wrappers to the original modules). No
  copy of the weights, and edits to the weights show in both.
* an attention function registered with transformers' ``AttentionInterface``
  (which the bridge ignores, but the twin, a plain HF model, honours). It calls a
  fused kernel that returns the row log-sum-exp — on the CPU
  ``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu`` returns
  ``(output, logsumexp)``; elsewhere ``F.scaled_dot_product_attention`` runs and
  the row normaliser is taken inside the blockwise pass instead — and hands q, k
  and the LSE to :func:`sink_interp.lse.block_alpha`. After the last measured
  layer's attention the forward stops (no MLP, no unembedding).

It is used only when nothing can differ from the bridge (see
:func:`fused_supported`): no hooks on the bridge (interventions and traces use
hooks, so they keep using the hooks engine), an architecture without sliding
windows or logit soft-capping, and a self-check on a short slice of the input
that compares the twin's scores with the bridge's ``hook_pattern``.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._internal.errors import check_positive_int
from .capture import model_device
from .lse import BLOCK_BYTES, block_alpha, normalize_edges
from .masks import CAUSAL, AttentionMask, as_mask

ATTN_NAME = "sink_interp_fused"
CPU_KERNEL = "aten._scaled_dot_product_flash_attention_for_cpu"
SDPA = "F.scaled_dot_product_attention"
#: largest difference between the fused engine and the bridge's hook_pattern accepted by the self-check
SELF_CHECK_ATOL = {torch.float32: 1e-4, torch.float64: 1e-6}
SELF_CHECK_TOKENS = 32
#: use the CPU flash kernel's logsumexp when it applies (False: F.scaled_dot_product_attention + blockwise LSE,
#: the path CUDA/MPS take)
USE_CPU_LSE_KERNEL = True

_ACTIVE: contextvars.ContextVar["_Run | None"] = contextvars.ContextVar("sink_interp_fused_run", default=None)
_REGISTERED = False


class _Stop(Exception):
    """Raised after the last measured layer: the rest of the forward is not needed."""


@dataclass
class _Run:
    index: dict[int, int]
    last: int
    mask: AttentionMask
    edges: list[int]
    block_bytes: int
    col: Tensor
    rows: Tensor
    kernels: set[str] = field(default_factory=set)
    lse_from: set[str] = field(default_factory=set)
    seen: set[int] = field(default_factory=set)
    _dense: Tensor | None = None

    def additive_mask(self, length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """One ``[T, T]`` additive mask shared by all layers (only for non-causal masks)."""
        if self._dense is None or self._dense.shape[-1] != length or self._dense.dtype != dtype:
            vis = self.mask.dense(length, device=device)
            self._dense = torch.zeros(length, length, dtype=dtype, device=device).masked_fill_(~vis, float("-inf"))
        return self._dense


def fused_attention(
    query: Tensor, key: Tensor, value: Tensor, scale: float, mask: AttentionMask = CAUSAL,
    additive: Tensor | None = None, want_lse: bool = True,
) -> tuple[Tensor, Tensor | None, str]:
    """Attention output ``[b, H, T, d]``, the row LSE when the kernel gives it (else None), and the kernel's name.

    GQA/MQA keys and values keep their own head count (the kernels broadcast them).
    """
    causal = mask.is_causal
    attn_mask = None if causal else additive
    if want_lse and USE_CPU_LSE_KERNEL and query.device.type == "cpu" and query.dtype == torch.float32:
        op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
        if op is not None:
            try:
                out, lse = op(query, key, value, 0.0, causal, attn_mask=attn_mask, scale=scale)
                return out, lse, CPU_KERNEL
            except RuntimeError:  # pragma: no cover - shapes/dtypes the kernel refuses: fall through
                pass
    enable_gqa = query.shape[1] != key.shape[1]
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, is_causal=causal, scale=scale, enable_gqa=enable_gqa
    )
    return out, None, SDPA


def _attention(module: Any, query: Tensor, key: Tensor, value: Tensor, attention_mask: Any, dropout: float = 0.0,
               scaling: float | None = None, **kwargs: Any) -> tuple[Tensor, None]:
    """The attention function the twin runs (transformers' AttentionInterface signature)."""
    if kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise NotImplementedError("the fused engine handles plain softmax attention only (no sliding window, softcap, sinks)")
    scale = float(query.shape[-1] ** -0.5 if scaling is None else scaling)
    run = _ACTIVE.get()
    if run is None:  # the twin used on its own: plain fused causal attention
        out, _, _ = fused_attention(query, key, value, scale, want_lse=False)
        return out.transpose(1, 2).contiguous(), None
    T = query.shape[-2]
    additive = None if run.mask.is_causal else run.additive_mask(T, query.dtype, query.device)
    layer = int(getattr(module, "layer_idx"))
    i = run.index.get(layer)
    out, lse, kernel = fused_attention(query, key, value, scale, run.mask, additive, want_lse=i is not None)
    if i is not None:
        run.seen.add(layer)
        run.kernels.add(kernel)
        run.lse_from.add("kernel" if lse is not None else "blockwise")
        col, rows = block_alpha(query, key, scale, lse=lse, mask=run.mask, query_edges=run.edges, block_bytes=run.block_bytes)
        run.col[:, i] = col
        run.rows[:, i] = rows
    if layer == run.last:
        raise _Stop
    return out.transpose(1, 2).contiguous(), None


def _no_mask(*args: Any, **kwargs: Any) -> None:
    """Mask builder for the twin: none (tokens carry no padding; the attention function applies the mask)."""
    return None


def _register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, _attention)
    AttentionMaskInterface.register(ATTN_NAME, _no_mask)
    _REGISTERED = True


# --------------------------------------------------------------------------- the twin


def _unwrap(obj: Any) -> Any:
    """The HF module a TransformerLens bridge component wraps (the object itself if it is not a wrapper)."""
    while type(obj).__module__.startswith("transformer_lens") and getattr(obj, "original_component", None) is not None:
        obj = obj.original_component
    return obj


def _resolve(root: Any, dotted: str) -> Any:
    obj = root
    for part in dotted.split("."):
        obj = getattr(_unwrap(obj), part)
    return obj


def hf_twin(model: Any) -> torch.nn.Module:
    """A plain HF model that shares every parameter and buffer with the bridge and runs the fused attention.

    Built on the meta device, then given the bridge's own tensors: no weights are copied.

    Examples:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> bridge = tiny_model()
        >>> twin = hf_twin(bridge)
        >>> twin.model.embed_tokens.weight is bridge.original_model.model.embed_tokens.original_component.weight
        True
    """
    orig = getattr(model, "original_model", None)
    if orig is None or not hasattr(orig, "config"):
        raise ValueError("the fused engine needs a TransformerBridge that wraps a Hugging Face model (model.original_model)")
    _register()
    cfg = copy.deepcopy(orig.config)
    cfg._attn_implementation = ATTN_NAME
    with torch.device("meta"):
        twin = type(orig)(cfg)
    items = [(n, True) for n, _ in twin.named_parameters(remove_duplicate=False)]
    items += [(n, False) for n, _ in twin.named_buffers(remove_duplicate=False)]
    for name, is_param in items:
        src = _resolve(orig, name)
        parent, _, leaf = name.rpartition(".")
        sub = twin.get_submodule(parent) if parent else twin
        if is_param:
            sub._parameters[leaf] = src
        else:
            sub._buffers[leaf] = src
    left = [n for n, p in list(twin.named_parameters()) + list(twin.named_buffers()) if p.is_meta]
    if left:  # pragma: no cover - an architecture whose wrappers hide a tensor
        raise ValueError(f"could not find the bridge's tensors for {left[:3]}")
    return twin.eval()


# --------------------------------------------------------------------------- when it applies


def _user_hooks(model: Any) -> list[str]:
    return [name for name, hp in model.hook_dict.items() if getattr(hp, "fwd_hooks", None) or getattr(hp, "bwd_hooks", None)]


def _config_blockers(cfg: Any) -> list[str]:
    out = []
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) is not False:
        out.append(f"sliding_window={cfg.sliding_window}")
    if any("sliding" in str(t) for t in (getattr(cfg, "layer_types", None) or [])):
        out.append("sliding-window layers")
    for attr in ("attn_logit_softcapping", "attention_logit_softcapping"):
        if getattr(cfg, attr, None):
            out.append(f"{attr}={getattr(cfg, attr)}")
    if getattr(cfg, "model_type", "") in ("gpt_oss",):
        out.append("learned sink logits")
    return out


def fused_supported(model: Any, tokens: Tensor, mask: AttentionMask | None = None) -> tuple[bool, str]:
    """Whether the fused engine gives the bridge's own scores for this model, and why not.

    Checks: the bridge wraps an HF model; no hooks are attached (an intervention would be
    invisible to the twin); the architecture has no sliding window / soft-capping; and on the
    first ``SELF_CHECK_TOKENS`` tokens of the first sample, the twin's sink scores equal the
    bridge's ``hook_pattern`` scores (float32: to 1e-4).
    """
    orig = getattr(model, "original_model", None)
    if orig is None or not hasattr(orig, "config") or not hasattr(model, "hook_dict"):
        return False, "not a TransformerBridge wrapping a Hugging Face model"
    hooks = _user_hooks(model)
    if hooks:
        return False, f"hooks are attached to the model ({hooks[:3]}...); only the hooks engine sees their effect"
    blockers = _config_blockers(orig.config)
    if blockers:
        return False, "architecture not handled by the fused attention: " + ", ".join(blockers)
    dtype = next(model.parameters()).dtype
    if dtype not in SELF_CHECK_ATOL:
        return False, f"weights in {dtype}: the fused kernels' rounding differs from the bridge's eager attention"
    try:
        twin = hf_twin(model)
    except Exception as e:  # noqa: BLE001 - any failure means: use the hooks engine
        return False, f"could not build the HF twin ({e.__class__.__name__}: {e})"
    return _self_check(model, twin, tokens, as_mask(mask), SELF_CHECK_ATOL[dtype])


def _self_check(model: Any, twin: Any, tokens: Tensor, mask: AttentionMask, atol: float) -> tuple[bool, str]:
    from .capture import attach_hooks, run_reducers
    from .masks import mask_hooks
    from .metrics import SinkScoreReducer

    short = tokens[:1, : min(SELF_CHECK_TOKENS, tokens.shape[1])].to(model_device(model))
    L = int(model.cfg.n_layers)
    ref = SinkScoreReducer(score="softmax")
    try:
        with attach_hooks(model, mask_hooks(model, mask)):
            run_reducers(model, short, [ref], batch_size=1, progress=False)
        col, _rows, _info = _run_twin(twin, model, short, list(range(L)), mask, normalize_edges(None, short.shape[1]), 1, False, BLOCK_BYTES)
    except Exception as e:  # noqa: BLE001
        return False, f"self-check failed to run ({e.__class__.__name__}: {e})"
    alpha = col[:, :, :, 0] / torch.arange(short.shape[1], 0, -1, dtype=torch.float32)
    diff = float((alpha - ref.result()[0]).abs().max())
    if not diff <= atol:
        return False, f"self-check: the twin's scores differ from the bridge's hook_pattern by {diff:.2e} (> {atol:g})"
    return True, f"self-check on {short.shape[1]} tokens: max |diff| {diff:.1e}"


# --------------------------------------------------------------------------- running it


def default_batch_size(length: int) -> int:
    """Samples per forward for the fused engine: about 8k tokens per batch (memory grows with T, not T^2)."""
    return int(max(1, min(64, 8192 // max(1, length))))


@contextlib.contextmanager
def _active(run: _Run) -> Iterator[None]:
    token = _ACTIVE.set(run)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _run_twin(twin: Any, model: Any, tokens: Tensor, layers: list[int], mask: AttentionMask, edges: list[int],
              batch_size: int, progress: bool, block_bytes: int) -> tuple[Tensor, Tensor, dict[str, Any]]:
    from tqdm.auto import tqdm

    n, T = tokens.shape
    H = int(model.cfg.n_heads)
    device = model_device(model)
    col = torch.zeros(n, len(layers), H, len(edges) - 1, T, dtype=torch.float32)
    rows = torch.zeros(n, len(layers), H, dtype=torch.float32)
    index = {layer: i for i, layer in enumerate(layers)}
    kernels: set[str] = set()
    lse_from: set[str] = set()
    base = twin.base_model
    bar = tqdm(total=n, desc="sink scores (lse, fused)", unit="sample", disable=not progress, leave=False)
    try:
        with torch.no_grad():
            for s in range(0, n, batch_size):
                batch = tokens[s : s + batch_size].to(device)
                b = batch.shape[0]
                run = _Run(index, max(layers), mask, edges, block_bytes,
                           torch.zeros(b, len(layers), H, len(edges) - 1, T, dtype=torch.float32, device=device),
                           torch.zeros(b, len(layers), H, dtype=torch.float32, device=device))
                with _active(run):
                    try:
                        base(input_ids=batch, use_cache=False)
                    except _Stop:
                        pass
                if run.seen != set(index):
                    raise RuntimeError(f"the twin's attention ran for layers {sorted(run.seen)}, not {sorted(index)}")
                col[s : s + b] = run.col.cpu()
                rows[s : s + b] = run.rows.cpu()
                kernels |= run.kernels
                lse_from |= run.lse_from
                bar.update(b)
    finally:
        bar.close()
    info = {"engine": "fused", "kernel": sorted(kernels), "lse": sorted(lse_from), "batch_size": batch_size}
    return col, rows, info


def fused_column_sums(
    model: Any,
    tokens: Tensor,
    *,
    layers: Sequence[int],
    mask: AttentionMask,
    query_edges: Sequence[int],
    batch_size: int | None = None,
    progress: bool = True,
    block_bytes: int = BLOCK_BYTES,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Column sums ``[n, layers, heads, buckets, T]`` and row sums by the fused engine (see the module doc)."""
    n, T = tokens.shape
    bs = default_batch_size(T) if batch_size is None else check_positive_int(batch_size, "batch_size")
    twin = hf_twin(model)
    edges = normalize_edges(query_edges, T)
    return _run_twin(twin, model, tokens, list(layers), as_mask(mask), edges, bs, progress, block_bytes)
