"""Activation outliers and prefixed sinks (PrefixQuant; Son et al. 2024): where the outliers sit, and whether a prefix
moves them out of the text, with and without quantized activations.

Per block (the residual stream leaving it, ``hook_resid_post``) and text position: ``max |x|`` over the hidden
dims, the median ``|x|``, their ratio, and the dims of the largest mean ``|x|``, averaged over the texts.
Fake-quantized activations: the inputs of every linear layer (``attn.q/k/v/o``, ``mlp.gate/in/out``) go
through the asymmetric min-max quantizer of :func:`sink_interp.quant.fake_quant`, per tensor (one scale per
text: all its positions and features) or per token (one scale per position), int8 or int4; the loss is that
of the text's tokens.

With a **prefix** of ``k`` tokens put before every text, the prefix positions stay in full precision and
out of every scale, as a cached prefix would be (PrefixQuant computes its KV cache once); the statistics and
the loss are those of the text positions, so both conditions predict the same tokens. The prefix is given
by hand (token ids) or found by the PrefixQuant recipe (:func:`find_prefix`): the token ids that most often
carry an outlier (``max |x| / median |x| > ratio`` in some block) at positions after the first.

Example:
    >>> import torch
    >>> from sink_interp import tiny_model
    >>> rep = activation_outliers(tiny_model(), torch.randint(4, 128, (2, 12)), prefix=[1, 5], progress=False)
    >>> rep.conditions, rep.max_abs.shape
    (('no prefix', 'prefix'), (2, 2, 12))
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from ._internal import distributed as dist
from ._internal import hooknames
from ._internal.errors import check_positive_int
from ._internal.probe import ProbeSet
from ._internal.provenance import Provenance
from ._internal.report import FieldError, Provenanced, Report, check_range, summary_head, summary_tail
from .architecture import check_model_tokens
from .capture import attach_hooks
from .provenance import provenance
from .quant import fake_quant

__all__ = ["OutlierReport", "activation_outliers", "find_prefix", "linear_inputs"]

GRANULARITIES = ("tensor", "token")


def linear_inputs(model: Any) -> list[str]:
    """Hook names of the linear layers' inputs of every block (refused by name when the bridge has none)."""
    L = int(model.cfg.n_layers)
    names = [hooknames.linear_in(layer, lin) for layer in range(L) for lin in hooknames.LINEARS]
    found = [n for n in names if n in model.hook_dict]
    if not found:
        raise ValueError(
            "activation quantization: this model's bridge has none of the linear-input hooks "
            f"({', '.join(hooknames.LINEARS)}); fix: use kv_quant (KV cache) on this model"
        )
    return found


def _quant_hook(prefix: int, bits: int, granularity: str) -> Callable[..., Tensor]:
    """Fake-quantize a ``[b, s, ...]`` linear input at positions ``>= prefix`` (prefix positions untouched, out of scale)."""

    def hook(x: Tensor, hook: Any) -> Tensor:
        body = x[:, prefix:]
        dims = tuple(range(1, body.dim())) if granularity == "tensor" else tuple(range(2, body.dim()))
        q = fake_quant(body, bits, dim=dims)
        return torch.cat([x[:, :prefix], q], dim=1) if prefix else q

    return hook


def _text_nll(logits: Tensor, toks: Tensor, prefix: int) -> Tensor:
    """``[b, T-1]``: loss of the text's tokens ``1..T-1`` (each predicted from everything before it)."""
    lp = torch.log_softmax(logits[:, prefix:-1].float(), -1)
    tgt = toks[:, prefix + 1 :].to(lp.device)
    return -lp.gather(-1, tgt[..., None])[..., 0]


def find_prefix(model: Any, tokens: Tensor | ProbeSet, k: int = 3, *, ratio: float = 64.0, batch_size: int = 4) -> dict[str, Any]:
    """The PrefixQuant recipe: the ``k`` token ids that most often carry an outlier, from position 1 on.

    An outlier is a (block, position) whose ``max |x| / median |x|`` of the residual stream exceeds ``ratio``;
    the token at that position is counted once per text. Ties: the smaller id. Returns ``{"ids", "counts",
    "tokens"}`` (``tokens``: their text, when the model has a tokenizer).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> find_prefix(tiny_model(), torch.randint(4, 128, (2, 8)), k=1, ratio=1.0)["ids"].__len__()
        1
    """
    toks = check_model_tokens(model, tokens, min_length=2)
    k = check_positive_int(k, "k")
    L = int(model.cfg.n_layers)
    counts: Counter[int] = Counter()
    names = [hooknames.resid_post(layer) for layer in range(L)]
    for s in range(0, toks.shape[0], batch_size):
        batch = toks[s : s + batch_size]
        hit = torch.zeros(batch.shape, dtype=torch.bool)

        def grab(x: Tensor, hook: Any, hit: Tensor = hit) -> None:
            a = x.detach().abs().float()
            r = a.amax(-1) / a.median(-1).values.clamp_min(1e-12)
            hit.logical_or_((r > ratio).cpu())

        with torch.no_grad(), attach_hooks(model, [(n, grab) for n in names]):
            model(batch)
        for row in range(batch.shape[0]):
            counts.update({int(t) for t in batch[row, 1:][hit[row, 1:]].tolist()})
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    ids = [i for i, _ in top]
    tok = getattr(model, "tokenizer", None)
    return {
        "ids": ids,
        "counts": [c for _, c in top],
        "tokens": [tok.decode([i]) for i in ids] if tok is not None else [str(i) for i in ids],
        "ratio": float(ratio),
    }


@dataclass(frozen=True, eq=False, repr=False)
class OutlierReport(Provenanced, Report):
    """Residual-stream outliers per block and text position, without and with a prefix, and the loss with quantized
    activations.

    ``max_abs[c, l, t]`` / ``median_abs[c, l, t]`` / ``ratio[c, l, t]``: mean over texts of ``max |x|``, the median
    ``|x|`` and their ratio at block ``l``'s output, text position ``t``, under ``conditions[c]``;
    ``top_dims[c, l, t]``: the dims of the largest mean ``|x|`` there; ``prefix_max[l, p]``: ``max |x|`` at prefix
    position ``p``. ``loss[c, q]``: the text's loss with ``quant_labels[q]`` (``"fp"``: full precision).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> rep = activation_outliers(tiny_model(), torch.randint(4, 128, (1, 10)), prefix=[3], bits=(8,), progress=False)
        >>> rep.quant_labels
        ('fp', 'per-tensor int8', 'per-token int8')
    """

    conditions: tuple[str, ...]
    prefix: tuple[int, ...]
    prefix_tokens: tuple[str, ...]
    prefix_method: str
    max_abs: Float[np.ndarray, "condition layer pos"]
    median_abs: Float[np.ndarray, "condition layer pos"]
    ratio: Float[np.ndarray, "condition layer pos"]
    top_dims: Int[np.ndarray, "condition layer pos k"]
    prefix_max: Float[np.ndarray, "layer p"]
    quant_labels: tuple[str, ...]
    loss: Float[np.ndarray, "condition quant"]
    provenance: Provenance
    n: int
    length: int
    extra: dict[str, Any] = field(default_factory=dict)

    def _check(self) -> None:
        C = len(self.conditions)
        for name in ("max_abs", "median_abs", "ratio", "top_dims", "loss"):
            if getattr(self, name).shape[0] != C:
                raise FieldError(name, f"holds {getattr(self, name).shape[0]} conditions, {C} are named")
        if self.loss.shape[1] != len(self.quant_labels):
            raise FieldError("loss", f"holds {self.loss.shape[1]} columns for {len(self.quant_labels)} quant labels")
        for name in ("max_abs", "median_abs", "ratio", "loss"):
            check_range(name, getattr(self, name), 0.0, None)

    def layer_frame(self) -> pd.DataFrame:
        """Per (condition, block): the largest mean ``max |x|`` over text positions, where it is, its ratio and top dim,
        and the largest over positions from 1 on."""
        rows = []
        for c, name in enumerate(self.conditions):
            for layer in range(self.max_abs.shape[1]):
                m = self.max_abs[c, layer]
                t = int(m.argmax())
                rows.append(
                    {
                        "condition": name,
                        "layer": layer,
                        "max_abs": float(m[t]),
                        "position": t,
                        "ratio": float(self.ratio[c, layer, t]),
                        "top_dim": int(self.top_dims[c, layer, t, 0]),
                        "max_abs_from_1": float(m[1:].max()) if m.size > 1 else float("nan"),
                    }
                )
        return pd.DataFrame(rows)

    def loss_frame(self) -> pd.DataFrame:
        """Loss with each activation quantization (columns) without and with the prefix (rows)."""
        return pd.DataFrame(self.loss, index=list(self.conditions), columns=list(self.quant_labels))

    def summary(self) -> dict[str, Any]:
        lf = self.loss_frame()
        return {
            **summary_head(self, "n", "length"),
            "hook": "hook_resid_post (each block's output)",
            "quantizer": "asymmetric min-max at every linear layer's input; per-tensor: one scale per text, per-token: one per position; prefix positions in full precision",
            "prefix": list(self.prefix),
            "prefix_tokens": list(self.prefix_tokens),
            "prefix_method": self.prefix_method,
            "max_abs": {c: float(self.max_abs[i].max()) for i, c in enumerate(self.conditions)},
            "max_abs_at_text_position_0": {c: float(self.max_abs[i, :, 0].max()) for i, c in enumerate(self.conditions)},
            "max_abs_from_position_1": {
                c: float(self.max_abs[i, :, 1:].max()) if self.max_abs.shape[-1] > 1 else None
                for i, c in enumerate(self.conditions)
            },
            "max_ratio": {c: float(self.ratio[i].max()) for i, c in enumerate(self.conditions)},
            "prefix_max_abs": float(self.prefix_max.max()) if self.prefix_max.size else None,
            "loss": {c: {q: float(lf.loc[c, q]) for q in self.quant_labels} for c in self.conditions},
            "dtype": self.model_info.get("dtype"),
            "device": self.model_info.get("device"),
            **summary_tail(self),
        }

    def __repr__(self) -> str:
        mx = ", ".join(f"{c}: {float(self.max_abs[i].max()):.1f}" for i, c in enumerate(self.conditions))
        return f"OutlierReport({self.model!r}, n={self.n}, length={self.length}, prefix {list(self.prefix_tokens)}, max |x| {mx})"


def activation_outliers(
    model: Any,
    tokens: Tensor | ProbeSet,
    prefix: str | Sequence[int] | None = "prefixquant",
    *,
    k_prefix: int = 3,
    ratio: float = 64.0,
    bos_first: bool = True,
    bits: Sequence[int] = (8, 4),
    granularities: Sequence[str] = GRANULARITIES,
    top: int = 3,
    batch_size: int = 1,
    progress: bool = True,
) -> OutlierReport:
    """Outliers per block and text position, and the loss with quantized linear inputs, without and with a prefix.

    Args:
        model: a TransformerBridge.
        tokens: ``[n, T]`` token ids (the texts; the prefix is put before each).
        prefix: token ids, or ``"prefixquant"`` (:func:`find_prefix` on ``tokens``: ``k_prefix`` ids, outliers
            above ``ratio`` medians; with ``bos_first`` the model's BOS first when it has one), or None (no prefix).
        bits: activation bit widths; ``granularities``: ``"tensor"`` and/or ``"token"``.
        top: dims kept per (block, position) in ``top_dims``.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> rep = activation_outliers(tiny_model(), torch.randint(4, 128, (1, 10)), prefix=None, bits=(4,), progress=False)
        >>> rep.conditions, rep.loss.shape
        (('no prefix',), (1, 3))
    """
    from tqdm.auto import tqdm

    toks = check_model_tokens(model, tokens, min_length=2)
    n, T = toks.shape
    for g in granularities:
        if g not in GRANULARITIES:
            raise ValueError(f"granularities must be among {GRANULARITIES}, got {g!r}")
    bl = [int(b) for b in bits]
    for b in bl:
        if not 1 <= b <= 15:
            raise ValueError(f"bits must be integers in 1..15 (activation bit widths), got {b!r}")
    top = check_positive_int(top, "top")
    method = "none"
    if prefix is None:
        pre: list[int] = []
    elif isinstance(prefix, str):
        if prefix != "prefixquant":
            raise ValueError(f"prefix must be token ids, 'prefixquant' or None, got {prefix!r}")
        found = find_prefix(model, toks, k_prefix, ratio=ratio)
        pre = list(found["ids"])
        from .models import special_token_ids

        bos_id = special_token_ids(model).get("bos")
        if bos_first and bos_id is not None:
            pre = [int(bos_id)] + [i for i in pre if i != int(bos_id)]
        method = f"prefixquant (k={k_prefix}, ratio>{ratio}{', BOS first' if bos_first and bos_id is not None else ''})"
        if not pre:
            raise ValueError(
                f"prefix='prefixquant' found no token with an outlier above {ratio} medians after the first position; "
                "fix: a lower ratio, or pass prefix token ids"
            )
    else:
        pre = [int(i) for i in prefix]
        method = "given"
        V = int(model.cfg.d_vocab)
        if not pre or any(not 0 <= i < V for i in pre):
            raise ValueError(f"prefix must be a non-empty list of token ids in 0..{V - 1}, got {list(prefix)}")
    P = len(pre)
    conds = [("no prefix", 0)] + ([("prefix", P)] if P else [])
    qconf = [(g, b) for g in granularities for b in bl]
    qlabels = ["fp"] + [f"per-{g} int{b}" for g, b in qconf]
    L = int(model.cfg.n_layers)
    lin = linear_inputs(model)
    names = [hooknames.resid_post(layer) for layer in range(L)]

    bs = check_positive_int(batch_size, "batch_size")
    n_batches = (n + bs - 1) // bs
    mine = dist.shard(n_batches, {"tokens": toks, "batch_size": bs, "model": model, "prefix": pre, "q": qconf})
    parts = []
    bar = tqdm(
        total=len(mine) * len(conds) * len(qlabels),
        desc="outliers",
        unit="forward",
        disable=not (progress and dist.is_main()),
        leave=False,
    )
    failed: BaseException | None = None
    try:
        with dist.local(), torch.no_grad():
            for bi in mine:
                batch = toks[bi * bs : (bi + 1) * bs]
                part: dict[str, Any] = {"stats": [], "nll": np.zeros((len(conds), len(qlabels))), "count": 0}
                for c, (_, p) in enumerate(conds):
                    x = torch.cat([torch.tensor(pre, dtype=batch.dtype)[None].expand(len(batch), -1), batch], 1) if p else batch
                    st = {
                        "max": np.zeros((L, T)),
                        "med": np.zeros((L, T)),
                        "ratio": np.zeros((L, T)),
                        "abs": torch.zeros(L, T, int(model.cfg.d_model), dtype=torch.float64),
                        "pmax": np.zeros((L, p)),
                    }

                    def grab(h: Tensor, hook: Any, st: dict[str, Any] = st, p: int = p) -> None:
                        layer = hooknames.layer_of(hook.name)
                        a = h.detach().abs().float()
                        body = a[:, p:]
                        mx = body.amax(-1)
                        md = body.median(-1).values
                        st["max"][layer] += mx.sum(0).double().cpu().numpy()
                        st["med"][layer] += md.sum(0).double().cpu().numpy()
                        st["ratio"][layer] += (mx / md.clamp_min(1e-12)).sum(0).double().cpu().numpy()
                        st["abs"][layer] += body.sum(0).double().cpu()
                        if p:
                            st["pmax"][layer] += a[:, :p].amax(-1).sum(0).double().cpu().numpy()

                    with attach_hooks(model, [(nm, grab) for nm in names]):
                        logits = model(x)
                    part["nll"][c, 0] = float(_text_nll(logits, x, p).double().sum())
                    bar.update(1)
                    for q, (g, b) in enumerate(qconf, start=1):
                        with attach_hooks(model, [(nm, _quant_hook(p, b, g)) for nm in lin]):
                            logits = model(x)
                        part["nll"][c, q] = float(_text_nll(logits, x, p).double().sum())
                        bar.update(1)
                    part["stats"].append(st)
                part["count"] = len(batch) * (T - 1)
                part["n"] = len(batch)
                parts.append((bi, part))
    except Exception as e:  # noqa: BLE001 - re-raised on every rank
        failed = e
    finally:
        bar.close()
    dist.raise_any(failed)
    C = len(conds)
    mx = np.zeros((C, L, T))
    md = np.zeros((C, L, T))
    ra = np.zeros((C, L, T))
    ab = torch.zeros(C, L, T, int(model.cfg.d_model), dtype=torch.float64)
    pm = np.zeros((L, P))
    nll = np.zeros((C, len(qlabels)))
    count = 0
    for _, part in sorted((pp for rp in dist.gather(parts) for pp in rp), key=lambda pp: pp[0]):
        for c, st in enumerate(part["stats"]):
            mx[c] += st["max"]
            md[c] += st["med"]
            ra[c] += st["ratio"]
            ab[c] += st["abs"]
            if conds[c][1]:
                pm += st["pmax"]
        nll += part["nll"]
        count += part["count"]
    top_dims = torch.topk(ab, min(top, ab.shape[-1]), dim=-1).indices.numpy().astype(np.int64)
    tok = getattr(model, "tokenizer", None)
    return OutlierReport(
        conditions=tuple(c for c, _ in conds),
        prefix=tuple(pre),
        prefix_tokens=tuple(tok.decode([i]) for i in pre) if tok is not None else tuple(str(i) for i in pre),
        prefix_method=method,
        max_abs=mx / n,
        median_abs=md / n,
        ratio=ra / n,
        top_dims=top_dims,
        prefix_max=pm / n,
        quant_labels=tuple(qlabels),
        loss=nll / max(count, 1),
        n=n,
        length=T,
        provenance=provenance(model, tokens),
    )
