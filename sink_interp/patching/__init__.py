"""Activation and attribution patching of attention heads, built for sinks.

:func:`patch_heads` replaces one head's activation at a time with its value from another
input and reports a metric of the logits for every (layer, head):

* ``direction="noise"`` (default) runs the **clean** input and writes in the **corrupted**
  run's activation: the metric moves from its clean value towards the corrupted one when
  the head matters. ``direction="denoise"`` runs the corrupted input and writes in the
  clean activation (how much of the clean behaviour one head restores).
* ``what`` is the activation replaced: the head's output ``z``, its query ``q``, key ``k``
  or value ``v``, its ``pattern`` (query rows ``positions``), or the sink sites
  ``k-sink`` / ``v-sink`` (key / value at key position 0, or ``positions``) and
  ``pattern-sink`` (the pattern's column at key position 0, or ``positions``; rows are
  not renormalised).
* ``method="exact"`` runs the patched model. It is cheaper than one forward per head:
  the base run's residual entering layer ``l`` is the same for every head of ``l``, so each
  patched forward starts at layer ``l`` (the blocks below are skipped, after a once-per-model
  check that this reproduces the model's own logits), and several heads' conditions share
  one forward (the base input repeated, replica ``i`` patched at head ``h_i``).
* ``method="attribution"`` estimates every head at once from one forward of each input
  and one backward (attribution patching, AtP: ``(a_other - a_base) . dmetric/da`` at the
  base run, summed over positions and head dims). For ``q``, ``k`` and ``k-sink`` the
  softmax is not linearised: the patterns are recomputed with the patched queries/keys
  (the QK fix of AtP*, Kramár et al. 2024) and the estimate goes through the pattern
  change; the plain linear estimate is kept in ``estimate_linear``. Sink heads are where
  this matters: their pattern is saturated, so a gradient through the softmax sees almost
  nothing of a large change.
* ``method="ig"`` and ``"atp*"``: integrated gradients and AtP with GradDrop (:mod:`sink_interp.attribution`).
  Estimates live in ``estimate`` (``values`` holds exact numbers only).
* ``method="fast"`` / ``"verified"``: estimate every head, then patch exactly the best-screened ones: a fixed budget
  (10 % of the heads), or until no head left could beat the 5th largest exact effect; ``verified`` names them.
* ``method="both"``: exact values, the attribution estimate beside them, and their
  agreement (:meth:`PatchReport.agreement`).

Grouped-query models: ``z``, ``q`` and ``pattern`` are patched per query head; keys and
values are shared by the query heads of a KV group, so ``k``/``v`` sites are patched both
per KV head (``kv_values``, every query head of the group sees the patched key/value) and
per query head (``values``, only that query head sees it).

Normalised effect: ``(patched - base) / (other - base)``, with ``base`` the metric of the run
that is patched (clean for noising) and ``other`` that of the input the activation comes from:
1 means the head alone carries the whole difference, 0 nothing. It is refused (NaN and one warning)
when the clean-corrupted gap is smaller than ``GAP_TOL`` or has the sign the metric says is wrong
(:meth:`PatchReport.gap_problem`): dividing by a tiny or inverted gap flips signs and makes ratios above 1.

The package: the names each argument accepts, the sites and the named metrics in ``sites``, :class:`PatchReport`
in ``report``, running the patched model (forwards that start at a layer, stacked conditions, their hooks,
exact checks of screened heads) in ``run``, :func:`patch_heads` and the sink recipes in ``heads``.

Example:
    >>> import torch
    >>> from sink_interp import tiny_model, patch_heads
    >>> model = tiny_model()
    >>> clean = torch.randint(4, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    >>> corrupted = torch.randint(4, 128, (2, 8), generator=torch.Generator().manual_seed(1))
    >>> rep = patch_heads(model, clean, corrupted, "logprob", progress=False)
    >>> rep.values.shape, list(rep.to_frame().columns[:3])
    ((2, 4), ['layer', 'head', 'kv_head'])
"""

from .heads import RECIPE_DIRECTION, corrupt_tokens, patch_heads, patch_sink
from .report import PatchReport
from .run import can_start_at_layer
from .sites import CORRUPTIONS, DIRECTIONS, GAP_TOL, METHODS, METRIC_EXPECT, METRICS, SITES, Metric, named_metric

__all__ = [
    "CORRUPTIONS",
    "DIRECTIONS",
    "GAP_TOL",
    "METHODS",
    "METRICS",
    "METRIC_EXPECT",
    "RECIPE_DIRECTION",
    "SITES",
    "Metric",
    "PatchReport",
    "can_start_at_layer",
    "corrupt_tokens",
    "named_metric",
    "patch_heads",
    "patch_sink",
]
