"""What produced a result: the model, its facts, the data, the BOS policy, the mask, the library versions and the
distributed run.

Every analysis builds one :class:`Provenance` with :func:`provenance` and stores it in
its report (``report.provenance`` gives it back, also for a report read with
:func:`sink_interp.load_report`), because each of these changes the numbers.

Example:
    >>> from sink_interp import tiny_model, probe_tokens
    >>> m = tiny_model()
    >>> p = provenance(m, probe_tokens(m, "random", n=2, length=8, bos=True))
    >>> p.model.startswith("tiny-gqa"), p.data, p.bos, p.probe["length"]
    (True, 'random', True, 8)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._internal.probe import ProbeSet, as_tokens, probe_of
from ._internal.provenance import Provenance, distributed_run
from .models import model_info


def bos_policy(model: Any, tokens: Tensor | ProbeSet) -> bool | None:
    """Whether ``tokens`` start with BOS: as the :class:`ProbeSet` says, else read from the first column."""
    probe = probe_of(tokens)
    if probe is not None and "bos" in probe.info:
        return bool(probe.info["bos"])
    bos_id = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    if bos_id is None:
        return None
    t = torch.as_tensor(as_tokens(tokens))
    return bool((t[:, 0] == bos_id).all().item())


def provenance(model: Any, tokens: Tensor | ProbeSet, *, mask: Any = None) -> Provenance:
    """The :class:`Provenance` of running ``model`` on ``tokens`` (a :class:`ProbeSet` carries its source and facts).

    The data is labelled with the probe's source (``"tokens"`` for a plain tensor, or a probe set without one)
    and its BOS policy is the probe's (:func:`bos_policy`); ``mask`` is an :class:`sink_interp.AttentionMask` the
    model attended with (recorded when it is not causal). Called inside ``sink_interp.distributed()``, it records
    the run (world size and backend, :func:`~sink_interp._internal.provenance.distributed_run`).
    """
    probe = probe_of(tokens)
    info = probe.info if probe is not None else None
    data = str(info["source"]) if info is not None and "source" in info else "tokens"
    mask_dict = None
    if mask is not None and not getattr(mask, "is_causal", True):
        mask_dict = mask.to_dict()
    mi = model_info(model)
    return Provenance(
        model=mi.name,
        model_info=mi.to_dict(),
        data=data,
        bos=bos_policy(model, tokens),
        probe=info,
        mask=mask_dict,
        distributed=distributed_run(),
    )
