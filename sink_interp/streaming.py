"""StreamingLLM evaluation: attention sinks plus a recent window, against window-only and full attention.

:func:`streaming_ppl` scores a text longer than the window three ways, in one
forward pass each (see :class:`~sink_interp.StreamingWindow` for why one pass
equals token-by-token decoding with a rolling KV cache):

* ``full``: ordinary causal attention over the whole text;
* ``sinks + window``: each query sees the first ``n_sinks`` tokens and the last
  ``window`` tokens, RoPE positions taken as indices in the cache (StreamingLLM);
* ``window only``: each query sees the last ``n_sinks + window`` tokens (the same
  cache size, no sinks);

and, with ``original_positions=True``, sinks + window with the tokens' original
positions (only the mask changes), to show whether re-indexing matters.
It reports perplexity per position bucket; the interesting buckets are those
after ``n_sinks + window``, where the cache is full and tokens are evicted.

Example:
    >>> import torch
    >>> from sink_interp import tiny_model
    >>> rep = streaming_ppl(tiny_model(), torch.randint(4, 128, (2, 40)), n_sinks=2, window=8, progress=False)
    >>> rep.to_frame().columns.tolist()
    ['condition', 'start', 'end', 'ppl', 'nll']
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ._internal.errors import check_positive_int
from ._internal.probe import ProbeSet
from ._internal.provenance import Provenance
from ._internal.report import FieldError, Provenanced, Report, check_range, summary_head, summary_tail
from .architecture import check_model_tokens, describe_attention
from .capture import run_reducers
from .effects import NextTokenReducer
from .interventions import StreamingWindow, intervene
from .provenance import provenance


def long_tokens(model: Any, length: int = 1536, n: int = 8, bos: bool = False, path: str | None = None) -> ProbeSet:
    """``[n, length]`` token ids of long natural texts (a :class:`~sink_interp.ProbeSet`): the passages of one article joined.

    Reads the shipped ``natural.jsonl`` (or ``path``), joins the passages that
    share ``source`` and ``title`` (blank line between; their order within the
    article was not kept when the corpus was built) and keeps the ``n`` longest
    documents with at least ``length`` tokens, truncated to ``length``. ``info["documents"]``
    names them (``"source:title"``), ``info["source"]`` is ``"long:natural"`` (or ``"long:<path>"``).

    Example:
        >>> from sink_interp import tiny_model
        >>> t = long_tokens(tiny_model(), length=512, n=2)
        >>> docs = t.info["documents"]
        >>> t.shape, docs[0].split(":")[0]
        (torch.Size([2, 512]), 'wikipedia')
    """
    from .data import model_bos_id, natural_path, text_tokenizer

    length = check_positive_int(length, "length", minimum=2)
    n = check_positive_int(n, "n")
    p = natural_path() if path is None else path
    if not Path(p).expanduser().is_file():
        raise FileNotFoundError(
            f'data file {str(path)!r} does not exist; long texts come from a JSONL file with "text" '
            '(and "source"/"title" to join an article\'s passages); fix: pass such a file, or omit it for the shipped corpus'
        )
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    with open(p, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            obj = json.loads(line)
            groups[(str(obj.get("source", "")), str(obj.get("title", i)))].append(obj["text"])
    from .models import tokenizer_missing

    why = tokenizer_missing(model)
    if why is not None:
        raise ValueError(
            f"long_tokens reads natural text, which needs a tokenizer, and this model has none ({why}); "
            "fix: pass your own [n, length] token ids to streaming_ppl, or put the tokenizer files in the checkpoint folder"
        )
    tok = text_tokenizer(model)
    body = length - 1 if bos else length
    docs = []
    for key, texts in groups.items():
        ids = tok("\n\n".join(texts), add_special_tokens=False)["input_ids"]
        if len(ids) >= body:
            docs.append((len(ids), key, ids[:body]))
    docs.sort(key=lambda d: (-d[0], d[1]))
    if len(docs) < n:
        raise ValueError(
            f"only {len(docs)} documents in {p} have at least {body} tokens, but n={n} were asked; fix: lower n or length"
        )
    rows = [d[2] for d in docs[:n]]
    toks = torch.tensor(rows, dtype=torch.long)
    if bos:
        toks = torch.cat([torch.full((n, 1), model_bos_id(model), dtype=torch.long), toks], dim=1)
    info = {
        "source": f"long:{'natural' if path is None else p}",
        "bos": bos,
        "n": n,
        "length": length,
        "documents": [f"{d[1][0]}:{d[1][1]}" for d in docs[:n]],
    }
    return ProbeSet(toks, info)


@dataclass(frozen=True, eq=False, repr=False)
class StreamReport(Provenanced, Report):
    """Per-position next-token loss of each attention condition on long texts.

    ``nll[c, t]`` is the mean (over samples) loss of predicting token ``t + 1``
    under condition ``conditions[c]``. ``bucket`` is the width of the position
    buckets in :meth:`to_frame`.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, streaming_ppl
        >>> rep = streaming_ppl(tiny_model(), torch.randint(4, 128, (1, 24)), n_sinks=1, window=6, progress=False)
        >>> rep.full_from, rep.conditions[0]
        (7, 'full')
    """

    conditions: tuple[str, ...]
    nll: Float[np.ndarray, "condition pos"]
    n_sinks: int
    window: int
    bucket: int
    provenance: Provenance
    n: int
    length: int
    positional: str
    extra: dict[str, Any] = field(default_factory=dict)

    def _check(self) -> None:
        if self.nll.shape[0] != len(self.conditions):
            raise FieldError("conditions", f"names {len(self.conditions)} conditions, but nll holds {self.nll.shape[0]}")
        for name, low in (("n", 1), ("window", 1), ("bucket", 1), ("n_sinks", 0), ("length", 2)):
            if getattr(self, name) < low:
                raise FieldError(name, f"is {getattr(self, name)}; it is at least {low}")
        check_range("nll", self.nll, 0.0, None)

    @property
    def full_from(self) -> int:
        """First query position at which tokens have been evicted (the cache is full)."""
        return self.n_sinks + self.window

    def ppl(self, condition: str, start: int = 0, end: int | None = None) -> float:
        """Perplexity of ``condition`` over predicted positions ``start <= t < end``."""
        c = self.conditions.index(condition)
        x = self.nll[c, start:end]
        return float(np.exp(x.mean())) if x.size else float("nan")

    def to_frame(self) -> pd.DataFrame:
        """One row per (condition, position bucket): perplexity and mean loss."""
        rows = []
        P = self.nll.shape[1]
        for c, name in enumerate(self.conditions):
            for s in range(0, P, self.bucket):
                e = min(P, s + self.bucket)
                x = self.nll[c, s:e]
                rows.append({"condition": name, "start": s, "end": e, "ppl": float(np.exp(x.mean())), "nll": float(x.mean())})
        return pd.DataFrame(rows)

    def pivot(self) -> pd.DataFrame:
        """Perplexity with position buckets as rows and conditions as columns."""
        df = self.to_frame()
        df["positions"] = df["start"].astype(str) + "-" + df["end"].astype(str)
        out = df.pivot(index="positions", columns="condition", values="ppl")
        order = df.drop_duplicates("positions")["positions"].tolist()
        return out.loc[order, list(self.conditions)]

    def summary(self) -> dict[str, Any]:
        after = self.full_from
        return {
            **summary_head(self, "n", "length", "n_sinks", "window", "bucket", "positional"),
            "dtype": self.model_info.get("dtype"),
            "device": self.model_info.get("device"),
            "ppl_all": {c: self.ppl(c) for c in self.conditions},
            f"ppl_from_{after}": {c: self.ppl(c, after) for c in self.conditions},
            "buckets": self.to_frame().to_dict(orient="records"),
            **summary_tail(self),
        }

    def __repr__(self) -> str:
        parts = ", ".join(f"{c}: {self.ppl(c, self.full_from):.2f}" for c in self.conditions)
        return f"StreamReport({self.model!r}, n={self.n}, length={self.length}, ppl after position {self.full_from}: {parts})"


def streaming_ppl(
    model: Any,
    tokens: Tensor | ProbeSet,
    n_sinks: int = 4,
    window: int = 256,
    *,
    bucket: int | None = None,
    original_positions: bool = True,
    batch_size: int = 1,
    progress: bool = True,
) -> StreamReport:
    """Perplexity per position bucket: full attention, sinks + window (StreamingLLM), window only.

    Args:
        model: a TransformerBridge (RoPE or NoPE for cache positions; with learned
            absolute positions or partial RoPE, as in Pythia, only the original-position
            conditions run).
        tokens: ``[n, T]`` token ids with ``T`` well above ``n_sinks + window``
            (a tensor or a :class:`~sink_interp.ProbeSet`, e.g. :func:`long_tokens`).
        n_sinks: number of first tokens kept (the attention sinks).
        window: number of recent tokens kept (the query included).
        bucket: width of the position buckets (default ``window``).
        original_positions: also run n_sinks + window with the original positions.
        batch_size: texts per forward pass.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> rep = streaming_ppl(tiny_model(), torch.randint(4, 128, (1, 30)), n_sinks=1, window=4, bucket=10, progress=False)
        >>> rep.pivot().shape
        (3, 4)
    """
    sinks = check_positive_int(n_sinks, "n_sinks", minimum=0)
    window = check_positive_int(window, "window")
    toks = check_model_tokens(model, tokens, min_length=2)
    n, T = toks.shape
    if T <= sinks + window:
        raise ValueError(
            f"tokens have length {T} but n_sinks + window = {sinks + window}: nothing is ever evicted. "
            "Fix: use a longer text (e.g. long_tokens(model, length=...)) or a smaller window"
        )
    bucket = window if bucket is None else check_positive_int(bucket, "bucket")
    kind = describe_attention(model).positional
    conds: dict[str, list[Any]] = {"full": []}
    # cache positions re-rotate q by the model's RoPE; with learned absolute positions, ALiBi or a
    # relative-position bias only the original-position conditions are defined
    if kind in ("learned", "alibi", "relative", "t5"):
        conds[f"{sinks} sinks + window {window} (original positions)"] = [
            StreamingWindow(window, sinks, rope_positions="original")
        ]
        conds[f"window only ({sinks + window})"] = [StreamingWindow(sinks + window, 0, rope_positions="original")]
    else:
        conds[f"{sinks} sinks + window {window}"] = [StreamingWindow(window, sinks, rope_positions="cache")]
        conds[f"window only ({sinks + window})"] = [StreamingWindow(sinks + window, 0)]
        if original_positions and sinks:
            conds[f"{sinks} sinks + window {window} (original positions)"] = [
                StreamingWindow(window, sinks, rope_positions="original")
            ]
    from tqdm.auto import tqdm

    nll = np.zeros((len(conds), T - 1))
    bar = tqdm(total=len(conds), desc="streaming", unit="condition", disable=not progress, leave=False)
    try:
        for c, (_name, ivs) in enumerate(conds.items()):
            r = NextTokenReducer()
            with intervene(model, *ivs):
                run_reducers(model, toks, [r], batch_size=batch_size, progress=False)
            nll[c] = (r.nll_pos / n).numpy()
            bar.update(1)
    finally:
        bar.close()
    return StreamReport(
        conditions=tuple(conds),
        nll=nll,
        n_sinks=sinks,
        window=window,
        bucket=bucket,
        n=n,
        length=T,
        positional=kind,
        provenance=provenance(model, tokens),
    )
