"""One base for every result: JSON that loads back into the same type, arrays included.

A report is a dataclass that subclasses :class:`Report`. ``to_json`` writes what
``summary()`` gives (the headline numbers and provenance, readable by eye and by
any JSON reader, as before) plus a ``"report"`` block that holds every field of
the dataclass, arrays as exact little-endian bytes (zlib, base64). :func:`load_report`
reads it back into the class it came from; the loaded report's ``summary()``,
tables and views are those of the original. Fields renamed since a file was
written are read under their new names (:data:`vocab.RENAMED`).

Example:
    >>> from dataclasses import dataclass
    >>> import numpy as np
    >>> @dataclass(frozen=True)
    ... class Toy(Report):
    ...     values: np.ndarray
    ...     label: str
    ...     def summary(self):
    ...         return {"label": self.label, "mean": float(self.values.mean())}
    >>> r = Toy(np.arange(6.0).reshape(2, 3), "x")
    >>> back = loads_report(r.to_json())
    >>> type(back).__name__, back.summary() == r.summary(), np.array_equal(back.values, r.values)
    ('Toy', True, True)
"""

from __future__ import annotations

import base64
import dataclasses
import json
import zlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from . import vocab
from .provenance import Provenance, dumps, write_atomic

FORMAT = "sink_interp.report/1"

#: report class name -> class (filled by subclassing :class:`Report`)
REPORT_TYPES: dict[str, type] = {}
#: names of plain dataclasses that may appear inside reports (Effect, link records...)
RECORD_TYPES: dict[str, type] = {}


#: class name -> ``from_record(dict)``, for objects that are not dataclasses (interventions with fitted tensors)
CODECS: dict[str, Any] = {}


def register_codec(cls: type, from_record: Any) -> None:
    """Let ``cls`` instances travel inside a report: stored as ``obj.to_record()``, rebuilt by ``from_record(record)``."""
    CODECS[cls.__name__] = from_record


def register_record(cls: type) -> type:
    """Let instances of the dataclass ``cls`` travel inside a report's JSON (use as a class decorator)."""
    RECORD_TYPES[cls.__name__] = cls
    return cls


def encode(obj: Any) -> Any:
    """``obj`` as JSON-ready data that :func:`decode` turns back into an equal object."""
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        if arr.dtype == object:
            return {"__list_array__": encode(arr.tolist()), "shape": list(arr.shape)}
        raw = zlib.compress(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes(), 6)
        return {
            "__ndarray__": base64.b64encode(raw).decode("ascii"),
            "dtype": arr.dtype.newbyteorder("<").str,
            "shape": list(arr.shape),
        }
    if isinstance(obj, np.generic):
        return encode(obj.item())
    try:
        import torch

        from .probe import ProbeSet

        if isinstance(obj, ProbeSet):  # a tensor that would lose its facts as one: refused, as before it was a tensor
            raise TypeError(
                "ProbeSet is not registered to travel inside a report; store probe.info (its facts) "
                "and, if needed, probe.tokens (the plain ids)"
            )
        if isinstance(obj, torch.Tensor):
            return {"__tensor__": encode(obj.detach().cpu().numpy())}
    except ImportError:  # pragma: no cover
        pass
    if type(obj).__name__ in CODECS and hasattr(obj, "to_record"):
        return {"__codec__": type(obj).__name__, "record": encode(obj.to_record())}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        name = type(obj).__name__
        if name not in RECORD_TYPES and name not in REPORT_TYPES:
            raise TypeError(f"{name} is not registered to travel inside a report; decorate it with register_record")
        return {"__record__": name, "fields": {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v) for v in obj]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: encode(v) for k, v in obj.items()}}
        return {"__items__": [[encode(k), encode(v)] for k, v in obj.items()]}
    if isinstance(obj, list):
        return [encode(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return {"__float__": "nan"}
    if isinstance(obj, float) and obj in (float("inf"), float("-inf")):
        return {"__float__": "inf" if obj > 0 else "-inf"}
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a report")


def decode(obj: Any) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__ndarray__" in obj:
        raw = zlib.decompress(base64.b64decode(obj["__ndarray__"]))
        dtype = np.dtype(obj["dtype"])
        return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(obj["shape"])
    if "__list_array__" in obj:
        out = np.empty(len(obj["__list_array__"]), dtype=object)
        out[:] = decode(obj["__list_array__"])
        return out.reshape(obj["shape"])
    if "__tensor__" in obj:
        import torch

        return torch.from_numpy(decode(obj["__tensor__"]))
    if "__codec__" in obj:
        name = obj["__codec__"]
        if name not in CODECS:
            raise ValueError(f"unknown object type {name!r} in the report; known: {sorted(CODECS)}")
        return CODECS[name](decode(obj["record"]))
    if "__record__" in obj:
        name = obj["__record__"]
        cls = RECORD_TYPES.get(name) or REPORT_TYPES.get(name)
        if cls is None:
            raise ValueError(f"unknown record type {name!r} in the report; known: {sorted(RECORD_TYPES)}")
        return cls(**renamed(name, {k: decode(v) for k, v in obj["fields"].items()}))
    if "__tuple__" in obj:
        return tuple(decode(v) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {k: decode(v) for k, v in obj["__dict__"].items()}
    if "__items__" in obj:
        return {_hashable(decode(k)): decode(v) for k, v in obj["__items__"]}
    if "__float__" in obj:
        return float(obj["__float__"])
    return {k: decode(v) for k, v in obj.items()}


def renamed(type_name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` of a ``type_name`` record with the field names of older versions renamed (:data:`vocab.RENAMED`)."""
    return vocab.upgrade(type_name, fields) if type_name in vocab.RENAMED else fields


def _hashable(x: Any) -> Any:
    return tuple(_hashable(v) for v in x) if isinstance(x, list) else x


class Report:
    """Base of every result: ``summary()``, ``to_json(path)``, inline display, and :func:`load_report`.

    Subclasses are dataclasses and implement ``summary()`` (headline numbers and provenance).
    ``to_json`` writes the summary plus every field; fields listed in ``_json_skip`` are left out
    (rebuilt by ``_restore`` on load, e.g. from a file next to the report).
    """

    _json_skip: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        REPORT_TYPES[cls.__name__] = cls

    def summary(self) -> dict[str, Any]:  # pragma: no cover - every report defines it
        raise NotImplementedError

    @property
    def provenance(self) -> Provenance:
        """What produced this report: model and its facts, data and probe, BOS policy, mask, versions."""
        extra = getattr(self, "extra", None) or {}
        if not hasattr(self, "model_info"):  # LongContextReport, FitReport: the report they hold knows
            for name in ("sink_report", "effects"):
                inner = getattr(self, name, None)
                if isinstance(inner, Report):
                    return inner.provenance
        return Provenance(
            model=str(getattr(self, "model", "")),
            model_info=dict(getattr(self, "model_info", {}) or {}),
            data=str(getattr(self, "data", "")),
            bos=getattr(self, "bos", None),
            probe=extra.get("probe"),
            mask=extra.get("mask"),
            versions=dict(getattr(self, "versions", {}) or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """The summary, plus a ``"report"`` block with every field (what :meth:`to_json` writes)."""
        fields = {f.name: encode(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in self._json_skip}  # type: ignore[arg-type]
        return {**self.summary(), "report": {"format": FORMAT, "type": type(self).__name__, "fields": fields}}

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text of :meth:`to_dict`; written atomically to ``path`` if given. :func:`load_report` reads it back."""
        text = dumps(self.to_dict())
        if path is not None:
            write_atomic(path, text)
        return text

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> Any:
        return cls(**fields)

    @classmethod
    def _from_summary(cls, d: dict[str, Any]) -> Any:
        """Rebuild from a summary-only JSON written before reports carried their fields; None when it cannot be done."""
        return None


class ModelRun:
    """``dtype`` and ``device`` of the model a report ran, read from its ``model_info`` (mixed into such reports)."""

    model_info: dict[str, Any]

    @property
    def dtype(self) -> str:
        return str(self.model_info.get("dtype"))

    @property
    def device(self) -> str:
        return str(self.model_info.get("device"))


def loads_report(text: str, source: str = "the text") -> Report:
    """The report whose :meth:`Report.to_json` text is ``text`` (see :func:`load_report`)."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{source} is not JSON ({e.msg} at line {e.lineno}); fix: pass a file written by a report's to_json"
        ) from None
    if not isinstance(d, dict):
        raise ValueError(f"{source} holds no report (a JSON {type(d).__name__}); fix: pass a file written by a report's to_json")
    block = d.get("report")
    if isinstance(block, dict) and "type" in block:
        name = block["type"]
        cls = REPORT_TYPES.get(name)
        if cls is None:
            raise ValueError(f"{source} holds a {name!r}, which this version does not know; known: {sorted(REPORT_TYPES)}")
        return cls._from_fields(renamed(name, {k: decode(v) for k, v in block["fields"].items()}))
    for cls in REPORT_TYPES.values():
        rebuilt = cls._from_summary(d)  # type: ignore[attr-defined]
        if rebuilt is not None:
            return rebuilt
    raise ValueError(
        f"{source} has no 'report' block and is not a summary this version can rebuild a report from "
        "(older files kept only the summary, without the arrays); fix: write it again with report.to_json(path)"
    )


def load_report(path: str | Path) -> Report:
    """Read a report written by ``to_json`` back into its own type (SinkReport, MassiveReport, ...), arrays included.

    Example:
        >>> import tempfile, torch
        >>> from sink_interp import tiny_model, measure_sinks
        >>> rep = measure_sinks(tiny_model(), torch.randint(4, 128, (2, 8)), progress=False)
        >>> path = tempfile.mkdtemp() + "/sinks.json"
        >>> _ = rep.to_json(path)
        >>> back = load_report(path)
        >>> type(back).__name__, back.summary() == rep.summary(), bool((back.alpha == rep.alpha).all())
        ('SinkReport', True, True)
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"report path {str(path)!r} is a folder; fix: pass the JSON file a report's to_json wrote")
    if not p.is_file():
        raise FileNotFoundError(f"report file {str(path)!r} does not exist")
    return loads_report(p.read_text(encoding="utf-8"), source=str(p))
