"""What an intervention does: loss, KL to the clean model, and the sinks, in one forward pass each.

:func:`compare` runs the clean model and then every intervention on the same
batches. For each it reports

* ``loss``: mean next-token cross-entropy (nats) over all predicted positions,
  and ``delta_loss`` against the clean model;
* ``kl``: mean ``KL(p_clean || p_intervened)`` of the next-token distributions;
* ``top1``: share of positions whose arg-max prediction is unchanged;
* ``sink_rate_1`` (``Sink_1``: percent of (sample, layer, head) with ``alpha_1 > eps``),
  ``mean_alpha_1``, and ``sink_rate_2`` (``Sink_2``: a sink that moved to the second token shows
  there), of the attention pattern the model actually used (after the
  intervention; patterns whose rows do not sum to 1 are scored through the
  proxy ``A / sum A``, see :mod:`sink_interp.metrics`), and the sink mass
  ``1 - sum_j A[t, j]`` (attention given to no token: a virtual key, a sink
  logit, a removed key).

Each intervention costs one forward pass per batch (a logits reducer and
:class:`~sink_interp.metrics.SinkScoreReducer` share it); the clean pass is run
once per batch and its log-probabilities are kept only for that batch.

:func:`scan_heads` applies one intervention to each head in turn;
:func:`sink_interp.fit.fit_bias` fits a key bias, a key+value bias or sink
logits that take over from a masked sink.

Example:
    >>> import torch
    >>> from sink_interp import tiny_model, compare, ZeroValue, MaskKey
    >>> model = tiny_model()
    >>> rep = compare(model, torch.randint(4, 128, (4, 12)), {"zero v": ZeroValue(), "mask": MaskKey()}, progress=False)
    >>> rep.to_frame()["label"].tolist()
    ['clean', 'zero v', 'mask']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ._internal import distributed as dist
from ._internal.errors import check_eps, check_positive_int
from ._internal.probe import ProbeSet
from ._internal.provenance import Provenance
from ._internal.report import ModelRun, Provenanced, Report, register_record, summary_head, summary_tail
from ._internal.vocab import RENAMED
from .architecture import check_model_tokens
from .capture import Reducer, run_reducers
from .interventions import Intervention, flatten_interventions, intervene
from .metrics import SinkScoreReducer
from .provenance import provenance

# --------------------------------------------------------------------------- next-token reducer


class NextTokenReducer(Reducer):
    """Next-token loss (and KL / top-1 agreement to reference log-probs) from the logits of each batch.

    ``reference``: the clean log-probabilities ``[b, T-1, V]`` of the batch run
    (the engine calls :meth:`update_logits` once per batch; give one batch at a
    time). ``keep=True`` keeps this run's log-probabilities in :attr:`kept`.
    Per-position sums are kept in :attr:`nll_pos` (``[T-1]``).
    """

    needs_logits = True
    rows = ("nll_sample",)
    sums = ("nll_sum", "kl_sum", "top1_sum", "count", "nll_pos")

    @property
    def shardable(self) -> bool:  # type: ignore[override]
        return self.reference is None and not self.keep  # a reference and kept log-probs belong to one batch

    def __init__(self, reference: Tensor | None = None, keep: bool = False):
        self.reference = reference
        self.keep = keep
        self.kept: Tensor | None = None

    def hook_names(self, model: Any) -> list[str]:
        return []

    def begin(self, model: Any, n_samples: int, length: int) -> None:
        self.n = 0
        self.nll_sum = 0.0
        self.kl_sum = 0.0
        self.top1_sum = 0.0
        self.count = 0
        self.nll_pos = torch.zeros(max(length - 1, 0), dtype=torch.float64)
        self.nll_sample = torch.zeros(n_samples, dtype=torch.float64)

    def update(self, name: str, tensor: Tensor) -> None:  # pragma: no cover - no hooks
        pass

    def update_logits(self, logits: Tensor) -> None:
        lp = torch.log_softmax(logits[:, :-1].detach().float(), dim=-1)
        tgt = self.batch_tokens[:, 1:].to(lp.device)
        nll = -lp.gather(-1, tgt[..., None])[..., 0]  # [b, T-1]
        self.nll_sum += float(nll.sum())
        self.count += nll.numel()
        self.nll_pos += nll.sum(0).double().cpu()
        s = self.batch_start
        self.nll_sample[s : s + nll.shape[0]] = nll.mean(-1).double().cpu()
        if self.reference is not None:
            ref = self.reference.to(lp.device)
            kl = (ref.exp() * (ref - lp)).sum(-1).clamp_min(0.0)  # >= 0; float error can give -1e-9
            self.kl_sum += float(kl.sum())
            self.top1_sum += float((ref.argmax(-1) == lp.argmax(-1)).float().sum())
        if self.keep:
            self.kept = lp

    def result(self) -> dict[str, float]:
        c = max(self.count, 1)
        return {"loss": self.nll_sum / c, "kl": self.kl_sum / c, "top1": self.top1_sum / c}


# --------------------------------------------------------------------------- results


@register_record
@dataclass(frozen=True, eq=False)
class Effect:
    """One intervention's effect (one row of :class:`EffectReport`).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, compare, MaskKey
        >>> rep = compare(tiny_model(), torch.randint(4, 128, (2, 8)), {"mask": MaskKey()}, progress=False)
        >>> eff = rep.effects[1]
        >>> eff.label, "sink_rate_1" in eff.row(), eff.kl > 0
        ('mask', True, True)
    """

    label: str
    description: str
    loss: float
    delta_loss: float
    kl: float
    top1: float
    sink_rate_1: float
    mean_alpha_1: float
    sink_rate_2: float
    sink_mass: float
    score: str
    head_alpha_1: Float[np.ndarray, "layer head"] = field(repr=False)
    loss_pos: Float[np.ndarray, " pos"] = field(repr=False, default_factory=lambda: np.zeros(0))
    meta: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {
            "label": self.label,
            **self.meta,
            "loss": self.loss,
            "delta_loss": self.delta_loss,
            "kl": self.kl,
            "top1": self.top1,
            "sink_rate_1": self.sink_rate_1,
            "mean_alpha_1": self.mean_alpha_1,
            "sink_rate_2": self.sink_rate_2,
            "sink_mass": self.sink_mass,
            "score": self.score,
            "description": self.description,
        }


@dataclass(frozen=True, eq=False, repr=False)
class EffectReport(Provenanced, ModelRun, Report):
    """Effects of several interventions against the clean model, on the same tokens.

    ``effects[0]`` is the clean model. ``report["label"]`` gives one :class:`Effect`.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, compare, MaskKey
        >>> rep = compare(tiny_model(), torch.randint(4, 128, (2, 8)), [MaskKey()], progress=False)
        >>> rep.clean.kl, rep.effects[1].kl > 0
        (0.0, True)
    """

    effects: tuple[Effect, ...]
    provenance: Provenance
    eps: float
    n: int
    length: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def clean(self) -> Effect:
        return self.effects[0]

    @property
    def labels(self) -> list[str]:
        return [e.label for e in self.effects]

    def __getitem__(self, label: str) -> Effect:
        for e in self.effects:
            if e.label == label:
                return e
        raise KeyError(f"no effect labelled {label!r}; labels: {self.labels}")

    def to_frame(self) -> pd.DataFrame:
        """One row per intervention (clean first): loss, delta_loss, kl, top1, sink_rate_1, mean_alpha_1, sink_rate_2, sink_mass."""
        return pd.DataFrame([e.row() for e in self.effects])

    def loss_by_position(self, buckets: Sequence[int] = (1, 2, 4, 8, 16, 32)) -> pd.DataFrame:
        """Mean next-token loss per intervention in position buckets ``[0, b1), [b1, b2), ..., [b_last, T-1)``.

        Position ``t`` is the loss of predicting token ``t + 1`` from tokens ``0..t``.
        """
        P = len(self.clean.loss_pos)
        edges = sorted({0, *[b for b in buckets if 0 < b < P], P})
        cols = [f"{a}-{b - 1}" if b - a > 1 else str(a) for a, b in zip(edges[:-1], edges[1:])]
        rows = []
        for e in self.effects:
            rows.append({"label": e.label, **{c: float(e.loss_pos[a:b].mean()) for c, a, b in zip(cols, edges[:-1], edges[1:])}})
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, Any]:
        return {
            **summary_head(self, "eps", "n", "length", "dtype", "device"),
            "effects": [e.row() for e in self.effects],
            **summary_tail(self),
        }

    def table(
        self,
        columns: Sequence[str] = (
            "label",
            "loss",
            "delta_loss",
            "kl",
            "top1",
            "sink_rate_1",
            "mean_alpha_1",
            "sink_rate_2",
            "sink_mass",
        ),
    ) -> str:
        """A plain-text table (what the CLI prints; the sink rates headed ``Sink_1``, ``Sink_2`` as in the paper)."""
        df = self.to_frame()
        columns = [RENAMED["Effect"].get(c, c) for c in columns]
        cols = [c for c in columns if c in df.columns]
        out = df[cols].rename(columns={"sink_rate_1": "Sink_1", "sink_rate_2": "Sink_2"})
        return out.to_string(index=False, float_format=lambda x: f"{x:.4f}")

    def __repr__(self) -> str:
        return (
            f"EffectReport(model={self.model!r}, data={self.data!r}, n={self.n}, length={self.length}, "
            f"{len(self.effects) - 1} interventions, clean loss={self.clean.loss:.4f})"
        )


# --------------------------------------------------------------------------- compare


Item = tuple[str, list[Intervention], dict[str, Any]]


def _items(interventions: Any) -> list[Item]:
    out: list[Item] = []
    if isinstance(interventions, Intervention):
        interventions = [interventions]
    if isinstance(interventions, Mapping):
        pairs = list(interventions.items())
    else:
        pairs = [(None, x) for x in interventions]
    for label, x in pairs:
        ivs = flatten_interventions([x])
        if label is None:
            label = " + ".join(iv.label for iv in ivs) if ivs else "clean"
        out.append((str(label), ivs, {}))
    labels = [x[0] for x in out]
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup or "clean" in labels:
        raise ValueError(
            f"intervention labels must be unique and not 'clean'; repeated: {dup or ['clean']}. Fix: pass a dict label -> intervention"
        )
    return out


def _compare_batch_size(model: Any, length: int) -> int:
    from .capture import auto_batch_size

    per_sample = 3 * 4 * int(model.cfg.d_vocab) * length  # clean + current log-probs (+ logits), float32
    return int(max(1, min(auto_batch_size(model, length), 256e6 // max(per_sample, 1), 32)))


class _Acc:
    def __init__(self) -> None:
        self.nll = 0.0
        self.kl = 0.0
        self.top1 = 0.0
        self.count = 0
        self.alpha1: list[Tensor] = []
        self.alpha2: list[Tensor] = []
        self.rows: list[Tensor] = []
        self.nll_pos: Tensor | None = None
        self.n = 0
        self.proxy: set[str] = set()

    @staticmethod
    def part(r: NextTokenReducer, s: SinkScoreReducer | None) -> dict[str, Any]:
        """One batch's contribution (picklable: ranks send it to each other)."""
        d: dict[str, Any] = {k: getattr(r, k) for k in ("nll_sum", "kl_sum", "top1_sum", "count", "nll_pos")}
        d["n"] = len(r.nll_sample)
        if s is not None:
            alpha, row = s.result()
            d.update(alpha1=alpha[..., 0].clone(), alpha2=alpha[..., 1].clone(), row=row, proxy=set(s.proxy_layers.values()))
        return d

    def add(self, p: dict[str, Any]) -> None:
        """Fold one batch's :meth:`part` (in batch order, in one process and on several ranks alike)."""
        self.nll += p["nll_sum"]
        self.kl += p["kl_sum"]
        self.top1 += p["top1_sum"]
        self.count += p["count"]
        self.nll_pos = p["nll_pos"].clone() if self.nll_pos is None else self.nll_pos + p["nll_pos"]
        self.n += p["n"]
        if "alpha1" in p:
            self.alpha1.append(p["alpha1"])
            self.alpha2.append(p["alpha2"])
            self.rows.append(p["row"])
            self.proxy |= p["proxy"]

    def effect(
        self, label: str, description: str, clean_loss: float | None, eps: float, meta: dict[str, Any], reference: bool
    ) -> Effect:
        c = max(self.count, 1)
        loss = self.nll / c
        if self.alpha1:
            a1 = torch.cat(self.alpha1).numpy()  # [n, L, H]
            rows = torch.cat(self.rows).numpy()
            sink1, mean1, mass = float(100 * (a1 > eps).mean()), float(a1.mean()), float((1 - rows).mean())
            sink2 = float(100 * (torch.cat(self.alpha2).numpy() > eps).mean())
            head = a1.mean(0)
        else:
            sink1 = mean1 = mass = sink2 = float("nan")
            head = np.zeros((0, 0))
        return Effect(
            label=label,
            description=description,
            loss=loss,
            delta_loss=0.0 if clean_loss is None else loss - clean_loss,
            kl=self.kl / c if reference else 0.0,
            top1=self.top1 / c if reference else 1.0,
            sink_rate_1=sink1,
            mean_alpha_1=mean1,
            sink_rate_2=sink2,
            sink_mass=mass,
            score="softmax" if not self.proxy else "proxy:" + "+".join(sorted(self.proxy)),
            head_alpha_1=head,
            loss_pos=(self.nll_pos / max(self.n, 1)).numpy() if self.nll_pos is not None else np.zeros(0),
            meta=meta,
        )


def compare(
    model: Any,
    tokens: Tensor | ProbeSet,
    interventions: Mapping[str, Any] | Sequence[Any] | Intervention,
    *,
    eps: float = 0.3,
    sinks: bool = True,
    batch_size: int | None = None,
    progress: bool = True,
    _meta: Sequence[dict[str, Any]] | None = None,
) -> EffectReport:
    """Measure each intervention against the clean model on ``tokens``.

    Args:
        model: a TransformerBridge.
        tokens: ``[n, length]`` token ids (a tensor or a :class:`~sink_interp.ProbeSet`, whose facts the report records),
            e.g. :func:`sink_interp.probe_tokens`.
        interventions: a dict ``label -> intervention`` (or a list of interventions;
            a list/tuple item is a composition applied together).
        eps: sink threshold for ``Sink_1``.
        sinks: also measure the sink scores (one more reducer in the same forward).
        batch_size: samples per forward (default: small enough for two sets of log-probs).
        progress: one progress bar over all forward passes.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, compare, AttentionKernel
        >>> rep = compare(tiny_model(), torch.randint(4, 128, (2, 8)), {"sigmoid": AttentionKernel("sigmoid")}, progress=False)
        >>> rep["sigmoid"].delta_loss != 0
        True
    """
    eps = check_eps(eps)
    toks = check_model_tokens(model, tokens, min_length=2)
    items = _items(interventions)
    if _meta is not None:
        items = [(lab, ivs, dict(m)) for (lab, ivs, _), m in zip(items, _meta)]
    n, T = toks.shape
    bs = (
        dist.decide(lambda: _compare_batch_size(model, T)) if batch_size is None else check_positive_int(batch_size, "batch_size")
    )
    n_batches = (n + bs - 1) // bs
    accs = {"clean": _Acc(), **{lab: _Acc() for lab, _, _ in items}}
    from tqdm.auto import tqdm

    inputs = {"tokens": toks, "batch_size": bs, "model": model, "eps": eps, "interventions": items}
    mine = dist.shard(n_batches, inputs)  # whole batches per rank inside sink_interp.distributed()
    parts: list[tuple[int, dict[str, dict[str, Any]]]] = []  # (batch, label -> its contribution)
    bar = tqdm(
        total=len(mine) * (1 + len(items)), desc="compare", unit="forward", disable=not (progress and dist.is_main()), leave=False
    )
    failed: BaseException | None = None
    try:
        with dist.local():
            for b in mine:
                batch = toks[b * bs : (b + 1) * bs]
                clean = NextTokenReducer(keep=True)
                sr = SinkScoreReducer() if sinks else None
                run_reducers(model, batch, [clean] + ([sr] if sr else []), batch_size=len(batch), progress=False)
                got = {"clean": _Acc.part(clean, sr)}
                ref = clean.kept
                bar.update(1)
                for lab, ivs, _ in items:
                    r = NextTokenReducer(reference=ref)
                    s = SinkScoreReducer() if sinks else None
                    with intervene(model, *ivs):
                        run_reducers(model, batch, [r] + ([s] if s else []), batch_size=len(batch), progress=False)
                    got[lab] = _Acc.part(r, s)
                    bar.set_postfix_str(lab[:30])
                    bar.update(1)
                parts.append((b, got))
                del ref, clean
    except Exception as e:  # noqa: BLE001 - re-raised on every rank
        failed = e
    finally:
        bar.close()
    dist.raise_any(failed)
    for _, got in sorted((bp for rank_parts in dist.gather(parts) for bp in rank_parts), key=lambda bp: bp[0]):
        for lab, p in got.items():
            accs[lab].add(p)
    clean_eff = accs["clean"].effect("clean", "no intervention", None, eps, {}, reference=False)
    effects = [clean_eff] + [
        accs[lab].effect(lab, " + ".join(iv.describe() for iv in ivs), clean_eff.loss, eps, meta, reference=True)
        for lab, ivs, meta in items
    ]
    return EffectReport(
        effects=tuple(effects),
        eps=eps,
        n=n,
        length=T,
        provenance=provenance(model, tokens),
    )


def scan_heads(
    model: Any,
    tokens: Tensor | ProbeSet,
    make: Callable[..., Intervention] = None,  # type: ignore[assignment]
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    **compare_kw: Any,
) -> EffectReport:
    """Apply ``make(layers=[l], heads=[h])`` to each head in turn ("zero the sink value in each head").

    Default ``make`` is :class:`~sink_interp.ZeroValue`. The report's frame has
    ``layer`` and ``head`` columns; rows are labelled ``"L{l}H{h}"``.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, scan_heads, MaskKey
        >>> rep = scan_heads(tiny_model(), torch.randint(4, 128, (2, 8)), MaskKey, layers=[0], progress=False)
        >>> rep.to_frame()[["layer", "head"]].dropna().shape
        (4, 2)
    """
    from .interventions import ZeroValue

    make = ZeroValue if make is None else make
    L, H = int(model.cfg.n_layers), int(model.cfg.n_heads)
    layers = list(range(L)) if layers is None else list(layers)
    heads = list(range(H)) if heads is None else list(heads)
    items: dict[str, Any] = {}
    meta = []
    for layer in layers:
        for h in heads:
            items[f"L{layer}H{h}"] = make(layers=[layer], heads=[h])
            meta.append({"layer": layer, "head": h})
    return compare(model, tokens, items, _meta=meta, **compare_kw)
