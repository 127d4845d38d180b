"""Trace the sink mechanism, link by link, as numbers.

The chain (Sun et al. 2024; Gu et al. 2025; Guo et al. 2024; the notes seed):

1. **spike** — a few residual dims at the sink token hold massive values;
2. **writer** — one block's MLP (or attention) writes them;
   **gated_mlp** — for a gated MLP with ``SiLU(z) ~ z``, the write is a
   quadratic form ``x^T S x`` whose spectrum is dominated by one eigenvalue;
3. **norm** — the attention norm divides the sink by a huge scale, turning it
   into a near-constant, sparse vector; the gain ``g`` weighs the spike dims;
4. **wk** — ``g ⊙ W_K`` maps those few dims into the sink key;
5. **qk_norm** — in models with QK-norm (Qwen3, Gemma-3, OLMo-2) the key
   norm rescales every key to about the same length, so the sink key must
   stand out by direction, not by size;
6. **rope** — after rotation, queries point at the sink key: a large
   ``cos(q_t, k_sink)`` against a small ``cos(q_t, k_j)``;
7. **manifold** — sink keys sit in a low-dimensional subspace at a large
   angle from the other keys; sink values are small (value drain).

Which hooks carry q and k, where the rotation happens, the norm's gain
convention (Gemma's ``1 + w``) and whether the block has a norm before
attention at all come from :func:`sink_interp.describe_attention`. Links a
model does not have are listed in ``TraceReport.skipped`` with the reason
(``norm`` in OLMo-2, which normalises after attention; ``qk_norm`` without
QK-norm; ``gated_mlp`` for non-gated or mixture-of-experts MLPs).

:func:`trace_sink` measures each link on a probe set and returns a
:class:`TraceReport`; every number of every link has a one-line doc
(``TraceReport.explain()``, ``TraceReport.to_frame()``), and
``TraceReport.story()`` tells the chain in words.

The package exports :func:`trace_sink`, :class:`TraceReport` and the link records; one module per job:

* :mod:`~sink_interp.trace.tracer`: :func:`trace_sink`, which runs the passes and calls each link;
* :mod:`~sink_interp.trace.links`: one function per link (:func:`spike_link`, :func:`writer_link`,
  :func:`gated_mlp_link`, :func:`norm_link`, :func:`wk_link`, :func:`qk_norm_link`,
  :func:`rope_link`, :func:`manifold_link`), each computable and testable alone;
* :mod:`~sink_interp.trace.reducers`: the forward passes (:class:`TraceReducer`, run by
  :func:`collect_trace`; :class:`GatedMLPReducer`);
* :mod:`~sink_interp.trace.report`: :class:`TraceReport` and the link records;
* :mod:`~sink_interp.trace.story`: the chain in words (:func:`story_text`, :func:`explain_text`);
* :mod:`~sink_interp.trace.maths`: pairwise cosines, uncentred PCA, subspaces and angles.

Example:
    >>> import torch
    >>> from sink_interp import tiny_model, trace_sink
    >>> rep = trace_sink(tiny_model(), torch.randint(4, 128, (4, 12)), progress=False)
    >>> sorted(rep.links), sorted(rep.skipped)
    (['gated_mlp', 'manifold', 'norm', 'rope', 'spike', 'wk', 'writer'], ['qk_norm'])
"""

from .report import (
    LINKS,
    GatedMLPLink,
    KeyLink,
    Link,
    ManifoldLink,
    NormLink,
    QKNormLink,
    RopeLink,
    SpikeLink,
    TraceReport,
    WriterLink,
)
from .tracer import trace_sink

__all__ = [
    "LINKS",
    "GatedMLPLink",
    "KeyLink",
    "Link",
    "ManifoldLink",
    "NormLink",
    "QKNormLink",
    "RopeLink",
    "SpikeLink",
    "TraceReport",
    "WriterLink",
    "trace_sink",
]
