"""What :func:`~sink_interp.patching.patch_heads` patches and measures: the sites (``z``, ``q``, ``k``, ``v``,
``pattern`` and the sink sites), the named metrics of the logits, and the names each argument accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from .._internal import hooknames

SITES = ("z", "q", "k", "v", "pattern", "k-sink", "v-sink", "pattern-sink")
#: named metrics (see :func:`named_metric`)
METRICS = ("logit_diff", "logprob", "kl")
DIRECTIONS = ("noise", "denoise")
METHODS = ("exact", "attribution", "atp*", "ig", "fast", "verified", "both")
#: normalised effects are refused when ``|clean - corrupted|`` is below this (metric units; see PatchReport.gap_problem)
GAP_TOL = 1e-2
#: the sign of ``clean - corrupted`` each named metric should have: higher on the clean input's behaviour (+1) or lower (-1)
METRIC_EXPECT = {"logit_diff": 1, "logprob": 1, "kl": -1}
#: ways :func:`corrupt_tokens` makes the corrupted input of a sink experiment
CORRUPTIONS = ("bos", "first-token", "shuffle")

Metric = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------- sites


@dataclass(frozen=True)
class Site:
    """One value of ``what``: the activation patched, read from its hook (:func:`site_of` makes it)."""

    what: str
    base: str  # z, q, k, v, pattern
    kv: bool  # the hooked tensor has KV heads (k, v)
    sink: bool  # default positions (0,)

    def hook(self, layer: int) -> str:
        """The hook point of this site in ``layer``."""
        return {"z": hooknames.z, "q": hooknames.q, "k": hooknames.k, "v": hooknames.v, "pattern": hooknames.pattern}[self.base](
            layer
        )

    def index(self, rows: slice, head: int, pos: Any) -> tuple[Any, ...]:
        """Index of head ``head`` at positions ``pos`` (a LongTensor or ``slice(None)``) in the hooked tensor's ``rows``."""
        if self.base == "pattern":
            return (rows, head, slice(None), pos) if self.sink else (rows, head, pos)
        return (rows, pos, head)

    @property
    def qk(self) -> bool:
        """Queries or keys: the attribution goes through a recomputed pattern (AtP*)."""
        return self.base in ("q", "k")


def site_of(what: str) -> Site:
    """The :class:`Site` called ``what`` (one of :data:`SITES`); anything else is a ``ValueError``."""
    if what not in SITES:
        raise ValueError(f"what must be one of {SITES}, got {what!r}")
    base = what.split("-")[0]
    return Site(what, base, base in ("k", "v"), what.endswith("-sink"))


# --------------------------------------------------------------------------- metrics


def named_metric(name: str, clean: Tensor, corrupted: Tensor, clean_logits: Tensor, start: int = 0) -> Metric:
    """The metric called ``name`` as a function of the logits ``[n, T, V]`` (one scalar):

    * ``"logit_diff"``: at the last position that has a next token (``T - 2``), the logit of the
      clean input's last token minus that of the corrupted input's last token, mean over samples
      (needs last tokens that differ);
    * ``"logprob"``: mean log-probability of the clean input's next tokens (all positions);
    * ``"kl"``: mean ``KL(p_clean || p)`` of the next-token distributions, ``p_clean`` from the
      clean run (0 on the clean run).

    ``start``: ``"logprob"`` and ``"kl"`` read the predictions made at positions ``start..T-2`` only (a recipe
    that changes the first tokens leaves out the predictions made from them).

    Example:
        >>> import torch
        >>> clean, corrupted = torch.tensor([[1, 2, 3]]), torch.tensor([[1, 2, 4]])
        >>> logits = torch.zeros(1, 3, 8); logits[0, 1, 3] = 2.0
        >>> float(named_metric("logit_diff", clean, corrupted, logits)(logits))
        2.0
    """
    if name == "logit_diff":
        a, b = clean[:, -1], corrupted[:, -1]
        if bool((a == b).all()):
            raise ValueError(
                "metric='logit_diff' compares the clean and corrupted inputs' last tokens, which are equal here; "
                "fix: metric='logprob' or 'kl', or pass a function of the logits"
            )
        rows = torch.arange(len(a))

        def logit_diff(logits: Tensor) -> Tensor:
            last = logits[:, -2].float()
            return (last[rows, a.to(last.device)] - last[rows, b.to(last.device)]).mean()

        return logit_diff
    if name == "logprob":
        tgt = clean[:, start + 1 :]

        def logprob(logits: Tensor) -> Tensor:
            lp = torch.log_softmax(logits[:, start:-1].float(), -1)
            return lp.gather(-1, tgt.to(lp.device)[..., None]).mean()

        return logprob
    if name == "kl":
        ref = torch.log_softmax(clean_logits[:, start:-1].detach().float(), -1)

        def kl(logits: Tensor) -> Tensor:
            lp = torch.log_softmax(logits[:, start:-1].float(), -1)
            r = ref.to(lp.device)
            return (r.exp() * (r - lp)).sum(-1).mean()

        return kl
    raise ValueError(f"metric must be a function of the logits or one of {METRICS}, got {name!r}")
