"""Probe sets: the inputs sink scores are measured on.

``probe_tokens(model, source, n, length, bos, seed)`` returns a :class:`ProbeSet`: the
``[n, length]`` tensor of token ids itself (a ``torch.Tensor`` subclass: ``model(probe)`` runs
on it; ``probe.tokens`` is the plain tensor) and how they were made (``probe.info``).
``source`` is one of:

* ``"natural"`` — natural English shipped with the library
  (``sink_interp/assets/natural.jsonl``: Wikipedia, the Python documentation and
  the KJV Bible; see ``NOTICE.md`` there), read like a user JSONL file;
* ``"random"`` — ids drawn uniformly from the non-special vocabulary;
* ``"repeat"`` — one token repeated ``length`` times, a different token per sample;
* a path to a JSONL file with a ``"text"`` field per line (the format of the
  official ``probe_valid_natural.jsonl``);
* ``"natural-concat"`` — the natural text with ``concat=True`` (long contexts).

With ``concat=True`` passages are joined (in file order, separated by a blank
line, ``"\n\n"``) until a row is full, so rows can be far longer than any one
passage (T = 8192 for SmolLM2 from the shipped file); each row starts at the
beginning of a passage, like the short probes, and the rest of the passage that
overflows a row is dropped.

Text is tokenised without special tokens and truncated to ``length``; with
``bos=True`` the BOS id takes the first position and the text fills the other
``length - 1`` (the total length stays ``length``, as in the official code).
The returned :class:`ProbeSet` carries ``probe.info`` (source, BOS policy, seed,
skipped lines), which :func:`sink_interp.measure_sinks` and every other analysis record;
``probe[:, 1:]``, other indexing and every torch operation give plain tensors (``probe.rows(idx)``,
``probe.to(device)`` and the other moves and copies keep the facts).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._internal.errors import check_positive_int
from ._internal.probe import ProbeSet  # built here and re-exported: sink_interp.data.ProbeSet

SOURCES = ("natural", "random", "repeat", "natural-concat")


def natural_path() -> Path:
    """Path of the natural-text probe file shipped with the library."""
    return Path(str(resources.files("sink_interp") / "assets" / "natural.jsonl"))


def read_jsonl_texts(path: str | Path) -> list[str]:
    """The ``"text"`` field of every line of a JSONL file, with errors that name the line."""
    return read_jsonl_texts_splits(path, splits=False)[0]


def read_jsonl_texts_splits(path: str | Path, splits: bool = True) -> tuple[list[str], list[str] | None]:
    """``(texts, splits)`` of a JSONL file: the ``"text"`` of every line and, when the lines carry one,
    their ``"split"`` (``"train"`` or ``"val"``; every line must then have it), else ``None``
    (always ``None`` with ``splits=False``, which ignores the field)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(
            f'data file {str(path)!r} is a folder; fix: pass the path of a JSONL file inside it (a "text" field per line)'
        )
    if not p.is_file():
        raise FileNotFoundError(
            f"data file {str(path)!r} does not exist; pass 'natural', 'random', 'repeat' or the path of a JSONL file"
        )
    texts: list[str] = []
    found: list[Any] = []
    with p.open("rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{p}:{i}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); fix: save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f'{p}:{i}: not valid JSON ({e.msg}); each line must be an object like {{"text": "..."}}'
                ) from None
            if not isinstance(obj, dict) or "text" not in obj:
                raise ValueError(f'{p}:{i}: line has no "text" field; each line must be an object like {{"text": "..."}}')
            if not isinstance(obj["text"], str):
                raise ValueError(f'{p}:{i}: "text" must be a string, got {type(obj["text"]).__name__}')
            texts.append(obj["text"])
            sp = obj.get("split") if splits else None
            if sp is not None and sp not in ("train", "val"):
                raise ValueError(f'{p}:{i}: "split" must be "train" or "val", got {sp!r}')
            found.append(sp)
    if not texts:
        raise ValueError(f'{p} is empty: it holds no JSONL lines with a "text" field')
    if all(sp is None for sp in found):
        return texts, None
    if any(sp is None for sp in found):
        i = found.index(None)
        raise ValueError(
            f'{p}: document {i + 1} has no "split" field while others have one; fix: give every line a "split" or none'
        )
    return texts, found


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            ids.add(int(v))
    return ids


def model_bos_id(model: Any) -> int:
    from .models import special_token_ids

    bos = special_token_ids(model).get("bos")
    if bos is None:
        raise ValueError("bos=True but neither the model's tokenizer nor its config names a BOS token; fix: bos=False")
    return int(bos)


def text_tokenizer(model: Any) -> Any:
    from .models import tokenizer_missing

    why = tokenizer_missing(model)
    if why is not None:
        raise ValueError(
            f"text needs a tokenizer and this model has none ({why}); fix: pass token ids, "
            "use source='random' or 'repeat' (CLI: --data random), or put the tokenizer files in the checkpoint folder"
        )
    return model.tokenizer


def probe_tokens(
    model: Any,
    source: str | Path = "natural",
    n: int = 100,
    length: int = 64,
    bos: bool = False,
    seed: int = 0,
    concat: bool = False,
) -> ProbeSet:
    """An ``[n, length]`` probe set of token ids for ``model``, with how it was made.

    Args:
        model: a TransformerBridge with a tokenizer.
        source: ``"natural"``, ``"random"``, ``"repeat"`` or a JSONL path.
        n: number of samples.
        length: tokens per sample, BOS included when ``bos=True`` (>= 2).
        bos: put the tokenizer's BOS id first.
        seed: seed for ``"random"`` and ``"repeat"`` (text sources keep file order).
        concat: for text sources, join passages until each row is full (long contexts).

    Returns:
        A :class:`ProbeSet`: the ``[n, length]`` long tensor of ids itself (run a model on it:
        ``model(probe)``; ``probe.tokens`` is the plain tensor), with ``probe.info`` the facts
        (``"source"``, ``"bos"``, ``"n"``, ``"length"``, ``"seed"``; for text sources
        also ``"concat"`` and ``"skipped"``/``"lines_read"`` or ``"separator"``/``"passages_per_row"``)
        that every analysis given the probe set records. Indexing (``probe[:, 1:]``) gives the
        plain tensor.

    Examples:
        >>> from sink_interp import tiny_model
        >>> model = tiny_model()
        >>> probe = probe_tokens(model, "repeat", n=3, length=5, bos=True)
        >>> probe
        ProbeSet(source='repeat', n=3, length=5, bos=True, seed=0)
        >>> probe.shape, probe.info["bos"]
        (torch.Size([3, 5]), True)
        >>> model(probe).shape  # a probe set is the token tensor: the model runs on it
        torch.Size([3, 5, 128])
        >>> bool((probe[:, 1:] == probe[:, 1:2]).all())
        True
    """
    n = check_positive_int(n, "n")
    length = check_positive_int(length, "length", minimum=2)
    if isinstance(bos, str) or not isinstance(bos, (bool, int)):
        raise ValueError(f"bos must be True or False, got {bos!r}")
    bos = bool(bos)
    body = length - 1 if bos else length
    d_vocab = int(model.cfg.d_vocab)
    info: dict[str, Any] = {"bos": bos, "n": n, "length": length, "seed": seed}
    gen = torch.Generator().manual_seed(int(seed))
    src = str(source)

    if src in ("random", "repeat"):
        from .models import special_token_ids

        special = _special_ids(getattr(model, "tokenizer", None)) if getattr(model, "tokenizer", None) is not None else set()
        special |= set(special_token_ids(model).values())
        allowed = torch.tensor([i for i in range(d_vocab) if i not in special], dtype=torch.long)
        if src == "random":
            idx = torch.randint(0, len(allowed), (n, body), generator=gen)
            toks = allowed[idx]
        else:
            if n > len(allowed):
                raise ValueError(
                    f"source='repeat' uses a different token per sample; n={n} exceeds the {len(allowed)} non-special tokens"
                )
            pick = allowed[torch.randperm(len(allowed), generator=gen)[:n]]
            toks = pick[:, None].expand(n, body).clone()
        info["source"] = src
    else:
        if src == "natural-concat":
            concat = True
            src = "natural"
        if src == "natural":
            path = natural_path()
            info["source"] = "natural-concat" if concat else "natural"
        else:
            path = Path(src).expanduser()
            if not path.exists() and src not in SOURCES:
                raise FileNotFoundError(f"data source {src!r} is neither one of {SOURCES} nor an existing JSONL file")
            info["source"] = str(path)
        texts = read_jsonl_texts(path)
        tok = text_tokenizer(model)
        info["concat"] = bool(concat)
        if concat:
            toks = _concat_rows(tok, texts, n, body, path, info)
            texts = []
        rows: list[list[int]] = []
        skipped = 0
        for text in texts:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if len(ids) < body:
                skipped += 1
                continue
            rows.append(ids[:body])
            if len(rows) == n:
                break
        if not concat:
            if len(rows) < n:
                raise ValueError(
                    f"{path} has only {len(rows)} lines with at least {body} tokens ({skipped} shorter lines skipped, "
                    f"{len(texts)} lines in all) but n={n} were asked; fix: lower n or length, add longer texts, "
                    "or join passages with concat=True (source 'natural-concat')"
                )
            info["skipped"] = skipped
            info["lines_read"] = len(rows) + skipped
            toks = torch.tensor(rows, dtype=torch.long)
        _check_natural(tok, toks, info["source"])

    if bos:
        toks = torch.cat([torch.full((n, 1), model_bos_id(model), dtype=torch.long), toks], dim=1)
    return ProbeSet(toks.contiguous(), info)


CONCAT_SEPARATOR = "\n\n"

#: a text probe whose most common token id fills more than this share of it is refused
MAX_TOP_TOKEN_SHARE = 0.5


def _check_natural(tok: Any, toks: Tensor, source: str) -> None:
    """Refuse text that the tokenizer turned into (mostly) one id, e.g. ``<unk>``: that is a repeated-token probe."""
    ids, counts = torch.unique(toks, return_counts=True)
    share = float(counts.max()) / toks.numel()
    if share <= MAX_TOP_TOKEN_SHARE:
        return
    top = int(ids[counts.argmax()])
    unk = getattr(tok, "unk_token_id", None)
    what = "the unknown token" if unk is not None and top == unk else "one token"
    raise ValueError(
        f"text probe {source!r} tokenises to {100 * share:.0f}% {what} (id {top}) with this model's tokenizer "
        f"({len(tok)} tokens): that is a repeated-token probe, not text; fix: use a model whose tokenizer covers the "
        "text, or say what you mean with --data repeat / random (source='repeat' / 'random')"
    )


def _concat_rows(tok: Any, texts: list[str], n: int, body: int, path: Path, info: dict[str, Any]) -> Tensor:
    """``n`` rows of ``body`` tokens, each joining whole passages from where the last row stopped."""
    sep = tok(CONCAT_SEPARATOR, add_special_tokens=False)["input_ids"]
    rows: list[list[int]] = []
    passages: list[int] = []
    i = 0
    while len(rows) < n and i < len(texts):
        row: list[int] = []
        used = 0
        while len(row) < body and i < len(texts):
            if row:
                row.extend(sep)
            row.extend(tok(texts[i], add_special_tokens=False)["input_ids"])
            i += 1
            used += 1
        if len(row) >= body:
            rows.append(row[:body])
            passages.append(used)
    if len(rows) < n:
        raise ValueError(
            f"{path} holds only enough text for {len(rows)} rows of {body} tokens when passages are joined, "
            f"but n={n} were asked; fix: lower n or length"
        )
    info["separator"] = CONCAT_SEPARATOR
    info["passages_per_row"] = passages
    info["lines_read"] = i
    return torch.tensor(rows, dtype=torch.long)
