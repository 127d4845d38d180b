"""KV-cache eviction policies at a fixed budget: which keys survive, and what that costs in next-token loss.

A policy is a cache algorithm: at query ``t`` the cache holds the keys it kept for ``t - 1`` plus the
new token ``t``; when that is more than ``budget`` keys, one key other than ``t`` is evicted, and an
evicted key never comes back. So query ``t`` sees ``min(t + 1, budget)`` keys, and the kept sets
satisfy ``K(t) ⊆ K(t - 1) ∪ {t}``. That is what makes one masked forward pass (each query sees its
``K(t)``, each token's hidden states computed with its own cache) equal token-by-token decoding with
a cache that evicts those keys (the tests check it against a Hugging Face cache). Positions are the
tokens' original ones (as H2O and FastGen keep them; :func:`sink_interp.streaming_ppl` re-indexes
positions inside the cache the StreamingLLM way).

Policies (``budget`` ``B``; which key goes when the cache is over budget):

* ``window``: the oldest key (the last ``B`` tokens stay);
* ``sinks+window`` (StreamingLLM): the oldest key after the first ``n_sinks``, which always stay;
* ``fastgen`` (FastGen's special + punctuation + local): the oldest ordinary token, else the oldest
  punctuation token, else the oldest special token (BOS and the tokenizer's special tokens);
* ``h2o`` (heavy hitters): per layer and KV head, the key with the least attention accumulated so far
  (summed over the query heads of its group; ties: the oldest), the last ``recent`` keys protected
  (default ``B // 2``); ``h2o+sinks``: the first ``n_sinks`` keys protected too;
* a user policy: ``priority(tokens) -> [b, T]`` (the lowest, then oldest, goes; ``PriorityPolicy``) or
  ``keep(tokens, budget) -> [T, T] / [b, T, T]`` bool, checked to be such a cache (``MaskPolicy``).

The eviction runs through the layer pipeline (:mod:`sink_interp.pipeline`) at the scores stage: a
layer's own sliding window and soft-cap stay as the model computes them (a key outside the model's
window stays hidden whatever the cache holds); ``h2o`` refuses layers with their own sliding window.

Example:
    >>> import torch
    >>> from sink_interp import tiny_model
    >>> rep = kv_policies(tiny_model(), torch.randint(4, 128, (2, 16)), budgets=(4, 16), n_sinks=1, progress=False)
    >>> rep.loss("window", 16) == rep.full_loss
    True
"""

from __future__ import annotations

import math
import string
import unicodedata
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ._internal.errors import check_positive_int
from ._internal.probe import ProbeSet
from ._internal.provenance import Provenance
from ._internal.report import FieldError, Provenanced, Report, check_range, summary_head, summary_tail
from .architecture import check_model_tokens, describe_attention
from .interventions import Intervention
from .kernels import visible_mask
from .pipeline import Ctx
from .provenance import provenance
from .quant import condition_losses

__all__ = [
    "H2O",
    "FastGen",
    "KVEvict",
    "KVPolicy",
    "KVReport",
    "MaskPolicy",
    "PriorityPolicy",
    "SinksWindow",
    "Window",
    "kv_policies",
    "make_policy",
    "resolve_budget",
]


def resolve_budget(budget: int | float, T: int) -> int:
    """Keys each query may see: an int ``>= 1``, or a fraction in ``(0, 1]`` of ``T`` (rounded up).

    Example:
        >>> resolve_budget(0.25, 512), resolve_budget(64, 512), resolve_budget(1.0, 512)
        (128, 64, 512)
    """
    if isinstance(budget, bool):
        raise ValueError(f"budget must be an int >= 1 or a fraction in (0, 1], got {budget!r}")
    if isinstance(budget, (int, np.integer)):
        if budget < 1:
            raise ValueError(f"budget must be >= 1 key, got {budget}")
        return int(budget)
    if isinstance(budget, (float, np.floating)) and 0 < budget <= 1:
        return max(1, math.ceil(float(budget) * T - 1e-9))
    raise ValueError(f"budget must be an int >= 1 (keys) or a fraction in (0, 1] of the length, got {budget!r}")


# --------------------------------------------------------------------------- the cache simulation


def evict_by_priority(
    priority: Float[Tensor, "b T"], budget: int, protect: Bool[Tensor, "b T"] | None = None
) -> Bool[Tensor, "b T T"]:
    """``[b, T, T]``: the keys each query sees under a cache of ``budget`` keys that evicts the lowest ``priority``
    (ties: the oldest) among keys other than the newest, never a ``protect``-ed one unless nothing else is left.

    Example:
        >>> evict_by_priority(torch.tensor([[5.0, 0, 0, 0, 0]]), 3)[0].int()
        tensor([[1, 0, 0, 0, 0],
                [1, 1, 0, 0, 0],
                [1, 1, 1, 0, 0],
                [1, 0, 1, 1, 0],
                [1, 0, 0, 1, 1]], dtype=torch.int32)
    """
    b, T = priority.shape
    dev = priority.device
    keep = torch.zeros(b, T, dtype=torch.bool, device=dev)
    out = torch.zeros(b, T, T, dtype=torch.bool, device=dev)
    pos = torch.arange(T, device=dev)
    # rank of each entry by (priority, position): a stable sort of the priorities keeps ties in position order
    order = torch.argsort(priority.double(), dim=1, stable=True)
    rank = torch.empty_like(priority, dtype=torch.float64).scatter_(1, order, pos.double()[None].expand(b, T).contiguous())
    if protect is not None:
        rank = rank + protect.double() * T
    rows = torch.arange(b, device=dev)
    for t in range(T):
        keep[:, t] = True
        if t >= budget:
            cand = keep & (pos < t)[None]
            victim = torch.where(cand, rank, torch.full_like(rank, float("inf"))).argmin(1)
            keep[rows, victim] = False
        out[:, t] = keep
    return out


def check_cache_mask(mask: Bool[Tensor, "b T T"], budget: int, what: str = "the policy") -> None:
    """Refuse a visibility mask that no cache of ``budget`` keys could give (then one masked pass is not decoding).

    Each query sees itself, no later key, at most ``budget`` keys, and no key that an earlier query's cache
    had already evicted (``K(t) ⊆ K(t - 1) ∪ {t}``).
    """
    T = mask.shape[-1]
    m = mask.bool()
    eye = torch.eye(T, dtype=torch.bool, device=m.device)
    if not bool(m[..., eye].all()):
        raise ValueError(
            f"{what}: a query does not see its own key; a cache always holds the newest token. Fix: keep[t, t] = True"
        )
    if bool((m & ~torch.ones(T, T, dtype=torch.bool, device=m.device).tril()).any()):
        raise ValueError(f"{what}: a query sees a later key; a cache holds only past tokens. Fix: keep only j <= t")
    over = int(m.sum(-1).max())
    if over > budget:
        raise ValueError(
            f"{what}: a query sees {over} keys, more than the budget {budget}. Fix: keep at most budget keys per row"
        )
    back = m[..., 1:, :] & ~m[..., :-1, :] & ~eye[1:]
    if bool(back.any()):
        idx = back.nonzero()[0].tolist()
        t, j = idx[-2] + 1, idx[-1]
        raise ValueError(
            f"{what}: key {j} is hidden from query {t - 1} but seen by query {t}; an evicted key never returns to a cache, "
            "so one masked pass would not be decoding. Fix: once a key is dropped, keep it dropped"
        )


# --------------------------------------------------------------------------- policies


class KVPolicy:
    """Base class: which keys each query sees at a budget. Static policies implement :meth:`static_mask`;
    dynamic ones (H2O) :meth:`layer_mask`, which sees the layer's scores."""

    name = "policy"
    dynamic = False
    n_sinks = 0
    #: evicts only when the cache is over budget (so a budget >= T is the model itself, with no score edited)
    only_over_budget = True

    def bind(self, model: Any) -> None:
        """Check the policy against ``model`` (called once per evaluation)."""

    def static_mask(self, tokens: Tensor, budget: int) -> Bool[Tensor, "b T T"]:  # pragma: no cover - abstract
        raise NotImplementedError

    def layer_mask(self, layer: int, scores: Tensor, budget: int, group: int, sink: Tensor | None) -> Bool[Tensor, "b G T T"]:
        raise NotImplementedError  # pragma: no cover - abstract

    def to_record(self) -> dict[str, Any]:
        return {"name": self.name}

    def __repr__(self) -> str:
        return self.name


class PriorityPolicy(KVPolicy):
    """A static policy from a priority per token: the lowest (then the oldest) is evicted first.

    ``priority(tokens [b, T]) -> [b, T]`` floats; ``protect`` (optional, same signature, bool) never evicted.

    Example:
        >>> import torch
        >>> keep_odd = PriorityPolicy(lambda toks: (toks % 2).float(), name="odd ids")
        >>> keep_odd.static_mask(torch.tensor([[3, 2, 4, 6]]), 2)[0, 3].int().tolist()
        [1, 0, 0, 1]
    """

    def __init__(
        self, priority: Callable[[Tensor], Tensor], protect: Callable[[Tensor], Tensor] | None = None, name: str = "custom"
    ):
        self.priority, self.protect, self.name = priority, protect, name

    def static_mask(self, tokens: Tensor, budget: int) -> Bool[Tensor, "b T T"]:
        p = torch.as_tensor(self.priority(tokens), dtype=torch.float64).to(tokens.device)
        if p.shape != tokens.shape:
            raise ValueError(
                f"{self.name}: priority(tokens) must have the tokens' shape {tuple(tokens.shape)}, got {tuple(p.shape)}"
            )
        prot = None if self.protect is None else torch.as_tensor(self.protect(tokens)).bool().to(tokens.device)
        return evict_by_priority(p, budget, prot)


class Window(PriorityPolicy):
    """The last ``budget`` tokens (a sliding window over the cache)."""

    def __init__(self) -> None:
        super().__init__(lambda toks: torch.zeros(toks.shape, dtype=torch.float64), name="window")


class SinksWindow(PriorityPolicy):
    """StreamingLLM: the first ``n_sinks`` tokens always, the most recent ones in the rest of the budget."""

    def __init__(self, n_sinks: int = 4):
        self.n_sinks = check_positive_int(n_sinks, "n_sinks", minimum=1)
        super().__init__(
            lambda toks: torch.zeros(toks.shape, dtype=torch.float64),
            protect=lambda toks: (torch.arange(toks.shape[1]) < self.n_sinks)[None].expand(toks.shape[0], -1),
            name="sinks+window",
        )

    def to_record(self) -> dict[str, Any]:
        return {"name": self.name, "n_sinks": self.n_sinks}


_PUNCT_CACHE: weakref.WeakKeyDictionary[Any, tuple[set[int], set[int]]] = weakref.WeakKeyDictionary()


def _is_punct(text: str) -> bool:
    s = text.strip()
    return bool(s) and all(c in string.punctuation or unicodedata.category(c).startswith("P") for c in s)


def special_and_punctuation_ids(model: Any) -> tuple[set[int], set[int]]:
    """The model's special token ids (tokenizer's and config's BOS/EOS/PAD) and its punctuation-only token ids
    (a token whose text, stripped, is made of punctuation characters; ``"\\n"`` tokens count as punctuation too)."""
    try:
        return _PUNCT_CACHE[model]
    except (KeyError, TypeError):
        pass
    from .models import special_token_ids

    special = {int(v) for v in special_token_ids(model).values() if v is not None}
    punct: set[int] = set()
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        special |= {int(i) for i in getattr(tok, "all_special_ids", []) or []}
        V = int(model.cfg.d_vocab)
        texts = tok.batch_decode([[i] for i in range(V)])
        punct = {i for i, s in enumerate(texts) if i not in special and (_is_punct(s) or (s and not s.strip() and "\n" in s))}
    try:
        _PUNCT_CACHE[model] = (special, punct)
    except TypeError:  # pragma: no cover
        pass
    return special, punct


class FastGen(PriorityPolicy):
    """FastGen's special + punctuation + local: ordinary tokens go first (oldest first), then punctuation, then special.

    ``special`` / ``punctuation``: token ids (default: read from the model's tokenizer when bound).
    """

    def __init__(self, special: Sequence[int] | None = None, punctuation: Sequence[int] | None = None):
        self.special = None if special is None else {int(i) for i in special}
        self.punctuation = None if punctuation is None else {int(i) for i in punctuation}
        super().__init__(self._priority, name="fastgen")

    def bind(self, model: Any) -> None:
        if self.special is None or self.punctuation is None:
            sp, pu = special_and_punctuation_ids(model)
            self.special = sp if self.special is None else self.special
            self.punctuation = pu if self.punctuation is None else self.punctuation

    def _priority(self, toks: Tensor) -> Tensor:
        if self.special is None or self.punctuation is None:
            raise ValueError(
                "FastGen needs its special and punctuation ids: bind it to a model first, or pass special=, punctuation="
            )
        t = toks.cpu()
        sp = (
            torch.isin(t, torch.tensor(sorted(self.special), dtype=t.dtype))
            if self.special
            else torch.zeros_like(t, dtype=torch.bool)
        )
        pu = (
            torch.isin(t, torch.tensor(sorted(self.punctuation), dtype=t.dtype))
            if self.punctuation
            else torch.zeros_like(t, dtype=torch.bool)
        )
        return torch.where(sp, 2.0, torch.where(pu, 1.0, 0.0)).double()

    def to_record(self) -> dict[str, Any]:
        return {"name": self.name, "n_special": len(self.special or ()), "n_punctuation": len(self.punctuation or ())}


class MaskPolicy(KVPolicy):
    """A user policy as a mask: ``keep(tokens [b, T], budget) -> [T, T] or [b, T, T]`` bool (query row, key column),
    checked to be what a cache of ``budget`` keys can hold (:func:`check_cache_mask`).

    Example:
        >>> import torch
        >>> every_other = MaskPolicy(lambda toks, B: torch.ones(toks.shape[1], toks.shape[1]).tril().bool(), name="all")
        >>> every_other.static_mask(torch.zeros(1, 3, dtype=torch.long), 3).shape
        torch.Size([1, 3, 3])
    """

    only_over_budget = False  # a user mask may drop keys before the cache is full

    def __init__(self, keep: Callable[[Tensor, int], Tensor], name: str = "custom"):
        self.keep, self.name = keep, name

    def static_mask(self, tokens: Tensor, budget: int) -> Bool[Tensor, "b T T"]:
        b, T = tokens.shape
        m = torch.as_tensor(self.keep(tokens, budget)).bool().to(tokens.device)
        if m.dim() == 2:
            m = m[None].expand(b, T, T)
        if tuple(m.shape) != (b, T, T):
            raise ValueError(f"{self.name}: keep(tokens, budget) must be [T, T] or [b, T, T] = {(b, T, T)}, got {tuple(m.shape)}")
        check_cache_mask(m, budget, f"policy {self.name!r}")
        return m


class H2O(KVPolicy):
    """Heavy hitters (H2O): evict the key with the least attention received so far, per layer and KV head.

    The attention a key has received is summed over every query that saw it (the rows of the cache as it
    was) and over the query heads that share its KV head; the last ``recent`` keys (default half the budget)
    and, with ``n_sinks``, the first ``n_sinks`` keys are never evicted. Ties go to the oldest key.
    """

    dynamic = True

    def __init__(self, n_sinks: int = 0, recent: int | float = 0.5):
        self.n_sinks = check_positive_int(n_sinks, "n_sinks", minimum=0)
        self.recent = recent
        self.name = "h2o+sinks" if n_sinks else "h2o"

    def bind(self, model: Any) -> None:
        spec = describe_attention(model)
        windowed = [la.layer for la in spec.layers if la.window is not None]
        if windowed:
            raise ValueError(
                f"policy h2o: layers {windowed[:4]} of this {spec.family} model have their own sliding window, where the "
                "heavy-hitter budget is not defined; fix: use window, sinks+window or fastgen on this model"
            )

    def recent_keys(self, budget: int) -> int:
        r = self.recent
        n = int(r) if isinstance(r, (int, np.integer)) and not isinstance(r, bool) else max(1, int(float(r) * budget))
        return max(1, min(n, budget - self.n_sinks))

    def layer_mask(self, layer: int, scores: Tensor, budget: int, group: int, sink: Tensor | None) -> Bool[Tensor, "b G T T"]:
        b, H, T, _ = scores.shape
        G = H // group
        s = scores.float().reshape(b, G, group, T, T)
        vis = visible_mask(scores).reshape(b, G, group, T, T)
        r = self.recent_keys(budget)
        if self.n_sinks + r > budget:
            raise ValueError(
                f"policy {self.name}: n_sinks {self.n_sinks} + recent {r} exceed the budget {budget}; fix: a larger budget"
            )
        pos = torch.arange(T, device=scores.device)
        keep = torch.zeros(b, G, T, dtype=torch.bool, device=scores.device)
        acc = torch.zeros(b, G, T, dtype=torch.float64, device=scores.device)
        out = torch.zeros(b, G, T, T, dtype=torch.bool, device=scores.device)
        sink_col = None
        if sink is not None:
            sink_col = sink.float().to(scores.device).reshape(1, G, group, 1)
        inf = torch.tensor(float("inf"), dtype=torch.float64, device=scores.device)
        for t in range(T):
            keep[..., t] = True
            if t >= budget:
                cand = keep & (pos <= t - r)[None, None] & (pos >= self.n_sinks)[None, None]
                victim = torch.where(cand, acc, inf).argmin(-1, keepdim=True)  # ties: the oldest (argmin is first)
                keep.scatter_(-1, victim, False)
            out[..., t, :] = keep
            row = s[..., t, :]  # [b, G, group, T]
            ok = vis[..., t, :] & keep[:, :, None, :]
            row = row.masked_fill(~ok, float("-inf"))
            if sink_col is not None:
                w = torch.softmax(torch.cat([row, sink_col.expand(b, G, group, 1)], -1), -1)[..., :-1]
            else:
                w = torch.softmax(row, -1)
            acc += w.sum(2).double()
        return out

    def to_record(self) -> dict[str, Any]:
        return {"name": self.name, "n_sinks": self.n_sinks, "recent": self.recent}


POLICIES = ("window", "sinks+window", "fastgen", "h2o", "h2o+sinks")


def make_policy(name: str | KVPolicy, n_sinks: int = 4) -> KVPolicy:
    """A policy by name (``window``, ``sinks+window``, ``fastgen``, ``h2o``, ``h2o+sinks``), or the policy itself.

    ``"sinks+window:1"`` / ``"h2o+sinks:1"`` name the number of sink tokens (default ``n_sinks``), so that one
    evaluation compares several (the policy keeps that name).

    Example:
        >>> make_policy("sinks+window", n_sinks=1).n_sinks, make_policy("h2o+sinks:2").name
        (1, 'h2o+sinks:2')
    """
    if isinstance(name, KVPolicy):
        return name
    if isinstance(name, str) and ":" in name and name.split(":", 1)[0] in ("sinks+window", "h2o+sinks"):
        base, _, k = name.partition(":")
        if not k.isdigit() or int(k) < 1:
            raise ValueError(f"KV policy {name!r}: the number after ':' is the sink tokens kept, an integer >= 1")
        pol = make_policy(base, int(k))
        pol.name = name
        return pol
    if name == "window":
        return Window()
    if name == "sinks+window":
        return SinksWindow(n_sinks)
    if name == "fastgen":
        return FastGen()
    if name == "h2o":
        return H2O(0)
    if name == "h2o+sinks":
        return H2O(n_sinks)
    raise ValueError(
        f"unknown KV policy {name!r}; known: {', '.join(POLICIES)}, or a KVPolicy object (PriorityPolicy, MaskPolicy)"
    )


# --------------------------------------------------------------------------- the intervention


class KVEvict(Intervention):
    """Attention that reads a cache of ``budget`` keys managed by ``policy`` (see the module docstring).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, intervene
        >>> m = tiny_model()
        >>> ev = KVEvict(SinksWindow(1), 4)
        >>> x = torch.randint(4, 128, (1, 8)); ev.set_batch(x)
        >>> with intervene(m, ev):
        ...     _, cache = m.run_with_cache(x, names_filter="blocks.0.attn.hook_pattern")
        >>> p = cache["blocks.0.attn.hook_pattern"]
        >>> (p[0, 0, 7] > 0).int().tolist()
        [1, 0, 0, 0, 0, 1, 1, 1]
    """

    has_positions = False

    def __init__(
        self, policy: KVPolicy | str, budget: int | float, *, layers: Sequence[int] | None = None, name: str | None = None
    ):
        super().__init__(layers=layers, heads=None, positions=(), name=name)
        self.policy = make_policy(policy)
        self.budget_arg = budget
        resolve_budget(budget, 1 << 30)  # checks the argument now
        self._tokens: Tensor | None = None
        self._static: Tensor | None = None

    def bind(self, model: Any) -> None:
        super().bind(model)
        self.policy.bind(model)

    def set_batch(self, tokens: Tensor) -> None:
        """The token ids of the batch about to run (static policies build the batch's mask from them once)."""
        self._tokens = tokens
        self._static = None

    def _budget(self, T: int) -> int:
        return resolve_budget(self.budget_arg, T)

    def keep_mask(self, layer: int, scores: Tensor) -> Bool[Tensor, "b G T T"]:
        """``[b, G or 1, T, T]``: the keys each query's cache holds at ``layer`` (G: KV heads of a dynamic policy)."""
        b, H, T, _ = scores.shape
        B = self._budget(T)
        if self.policy.dynamic:
            la = self.attention(layer)
            return self.policy.layer_mask(layer, scores, B, la.group, la.sink_logits())
        if self._static is None or self._static.shape[-1] != T or self._static.shape[0] != b:
            toks = self._tokens
            if toks is None or toks.shape != (b, T):
                raise ValueError(
                    f"KVEvict({self.policy.name}) needs the batch's token ids: call .set_batch(tokens) before each forward "
                    "(kv_policies does)"
                )
            self._static = self.policy.static_mask(toks.to(scores.device), B)[:, None]
        return self._static

    def edit_scores(self, layer: int, scores: Tensor, ctx: Ctx) -> Tensor:
        T = scores.shape[-1]
        if self._budget(T) >= T and self.policy.only_over_budget:
            return scores  # nothing is ever evicted
        keep = self.keep_mask(layer, scores)  # [b, G or 1, T, T]
        if keep.shape[1] > 1:
            keep = keep.repeat_interleave(scores.shape[1] // keep.shape[1], dim=1)
        if bool(keep[..., torch.ones(T, T, dtype=torch.bool, device=keep.device).tril()].all()):
            return scores
        return scores.masked_fill(~keep, torch.finfo(scores.dtype).min)

    def describe(self) -> str:
        return f"KVEvict({self.policy.name}, budget {self.budget_arg})"


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True, eq=False, repr=False)
class KVReport(Provenanced, Report):
    """Next-token loss per KV policy and budget, against the full cache.

    ``nll[p, k, t]``: mean loss of predicting token ``t + 1`` under ``policies[p]`` at ``budgets[k]`` keys;
    ``nll_full[t]``: the model's own (full cache).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> rep = kv_policies(tiny_model(), torch.randint(4, 128, (1, 12)), policies=("window",), budgets=(0.5,), progress=False)
        >>> rep.budgets, rep.to_frame().columns.tolist()[:4]
        ((6,), ['policy', 'budget', 'fraction', 'loss'])
    """

    policies: tuple[str, ...]
    budgets: tuple[int, ...]
    nll: Float[np.ndarray, "policy budget pos"]
    nll_full: Float[np.ndarray, " pos"]
    n_sinks: int
    policy_info: tuple[dict[str, Any], ...]
    provenance: Provenance
    n: int
    length: int
    seconds: Float[np.ndarray, "policy budget"] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def _check(self) -> None:
        if self.nll.shape[:2] != (len(self.policies), len(self.budgets)):
            raise FieldError(
                "nll", f"has shape {self.nll.shape[:2]} for {len(self.policies)} policies x {len(self.budgets)} budgets"
            )
        if self.nll_full.shape[0] != self.nll.shape[2]:
            raise FieldError("nll_full", f"has {self.nll_full.shape[0]} positions, nll {self.nll.shape[2]}")
        check_range("nll", self.nll, 0.0, None)
        check_range("nll_full", self.nll_full, 0.0, None)

    @property
    def full_loss(self) -> float:
        """The model's own mean loss (full cache)."""
        return float(self.nll_full.mean())

    def loss(self, policy: str, budget: int | float, start: int = 0) -> float:
        """Mean loss of ``policy`` at ``budget`` (keys, or the fraction of the length) over positions ``>= start``."""
        if policy == "full":
            return float(self.nll_full[start:].mean())
        if policy not in self.policies:
            raise KeyError(f"no policy {policy!r}; the report has {list(self.policies)}")
        B = resolve_budget(budget, self.length)
        if B not in self.budgets:
            raise KeyError(f"no budget {budget!r} ({B} keys); the report has {list(self.budgets)}")
        return float(self.nll[self.policies.index(policy), self.budgets.index(B), start:].mean())

    def to_frame(self) -> pd.DataFrame:
        """One row per (policy, budget): loss, perplexity, loss minus the full cache's, seconds."""
        full = self.full_loss
        rows = []
        for p, name in enumerate(self.policies):
            for k, B in enumerate(self.budgets):
                lo = float(self.nll[p, k].mean())
                rows.append(
                    {
                        "policy": name,
                        "budget": B,
                        "fraction": B / self.length,
                        "loss": lo,
                        "ppl": float(np.exp(lo)),
                        "delta_loss": lo - full,
                        **({"seconds": float(self.seconds[p, k])} if self.seconds is not None else {}),
                    }
                )
        return pd.DataFrame(rows)

    def table(self) -> pd.DataFrame:
        """Loss with budgets as rows and policies as columns (and the full cache)."""
        pv = self.to_frame().pivot(index="budget", columns="policy", values="loss")[list(self.policies)]
        pv["full"] = self.full_loss
        return pv

    def summary(self) -> dict[str, Any]:
        return {
            **summary_head(self, "n", "length", "n_sinks"),
            "positions": "original (tokens keep their positions in the cache)",
            "full_loss": self.full_loss,
            "policies": [dict(d) for d in self.policy_info],
            "results": self.to_frame().to_dict(orient="records"),
            "dtype": self.model_info.get("dtype"),
            "device": self.model_info.get("device"),
            **summary_tail(self),
        }

    def __repr__(self) -> str:
        return f"KVReport({self.model!r}, n={self.n}, length={self.length}, policies {list(self.policies)}, budgets {list(self.budgets)})"


def kv_policies(
    model: Any,
    tokens: Tensor | ProbeSet,
    policies: Sequence[str | KVPolicy] = POLICIES,
    budgets: Sequence[int | float] = (0.125, 0.25, 0.5, 1.0),
    *,
    n_sinks: int = 4,
    batch_size: int = 1,
    progress: bool = True,
) -> KVReport:
    """Next-token loss of each KV-cache ``policy`` at each ``budget``, and of the full cache.

    Args:
        model: a TransformerBridge.
        tokens: ``[n, T]`` token ids.
        policies: names (``window``, ``sinks+window``, ``fastgen``, ``h2o``, ``h2o+sinks``) or :class:`KVPolicy` objects.
        budgets: keys per query: ints, or fractions in ``(0, 1]`` of ``T``.
        n_sinks: first tokens kept by ``sinks+window`` and ``h2o+sinks``.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> rep = kv_policies(tiny_model(), torch.randint(4, 128, (1, 16)), ("window", "sinks+window"), (8,), n_sinks=1, progress=False)
        >>> rep.table().columns.tolist()
        ['window', 'sinks+window', 'full']
    """
    toks = check_model_tokens(model, tokens, min_length=2)
    n, T = toks.shape
    pols = [make_policy(p, n_sinks) for p in policies]
    if not pols:
        raise ValueError("policies must name at least one policy, e.g. ('window', 'sinks+window')")
    names = [p.name for p in pols]
    if len(set(names)) != len(names):
        raise ValueError(f"policy names must be unique, got {names}; give custom policies a name=")
    Bs = sorted({min(resolve_budget(b, T), T) for b in budgets})
    if not Bs:
        raise ValueError("budgets must name at least one budget, e.g. (0.25, 0.5, 1.0)")
    for p in pols:
        if p.n_sinks and Bs[0] <= p.n_sinks:
            raise ValueError(f"policy {p.name}: budget {Bs[0]} leaves no room beside {p.n_sinks} sinks; fix: budgets > n_sinks")
    conds: list[tuple[str, list[Intervention]]] = [("full", [])]
    for p in pols:
        for B in Bs:
            conds.append((f"{p.name} @ {B}", [KVEvict(p, B)]))
    settings = {"policies": [p.to_record() for p in pols], "budgets": Bs}
    nll, secs = condition_losses(
        model, toks, conds, batch_size=batch_size, progress=progress, desc="kv policies", settings=settings
    )
    return KVReport(
        policies=tuple(names),
        budgets=tuple(Bs),
        nll=nll[1:].reshape(len(pols), len(Bs), T - 1),
        nll_full=nll[0],
        n_sinks=int(n_sinks),
        policy_info=tuple(p.to_record() for p in pols),
        n=n,
        length=T,
        seconds=np.asarray(secs[1:], dtype=float).reshape(len(pols), len(Bs)),
        provenance=provenance(model, tokens),
    )
