"""One base for every result: JSON that loads back into the same type, arrays included.

A report is a dataclass that subclasses :class:`Report`. ``to_json`` writes what
``summary()`` gives (the headline numbers and provenance, readable by eye and by
any JSON reader, as before) plus a ``"report"`` block that holds every field of
the dataclass, arrays as exact little-endian bytes (zlib, base64). :func:`load_report`
reads it back into the class it came from; the loaded report's ``summary()``,
tables and views are those of the original. Fields renamed since a file was
written are read under their new names (:data:`vocab.RENAMED`).

One module, over 800 lines, because it is one cohesive thing: the file format (encoding arrays and records,
the class registry, the upgrade of older layouts) and the base classes that every report shares (``Report``,
``ModelRun``, ``Provenanced``, the summary head and tail) read and write the same structure, and a change to one
is a change to the other.

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
import binascii
import dataclasses
import functools
import json
import math
import re
import zlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from . import display, providers, vocab
from .errors import check_eps
from .provenance import LseEngine, Provenance, dumps, write_atomic

FORMAT = "sink_interp.report/1"

#: report class name -> class (filled by subclassing :class:`Report`)
REPORT_TYPES: dict[str, type] = {}
#: names of plain dataclasses that may appear inside reports (Effect, link records, the provenance...)
RECORD_TYPES: dict[str, type] = {"Provenance": Provenance, "LseEngine": LseEngine}


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
    """Inverse of :func:`encode` (no size limit: for data this process made; files go through :func:`load_report`)."""
    return _Reader("the data", 1 << 62).decode(obj, "")


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
    #: fields that may hold NaN (entries that were not measured); every other float field and array is finite
    _nan_fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        REPORT_TYPES[cls.__name__] = cls

    def summary(self) -> dict[str, Any]:  # pragma: no cover - every report defines it
        raise NotImplementedError

    def _repr_html_(self) -> str | None:
        """The view registered for this class in :mod:`~sink_interp._internal.display` (the view layer draws every
        report: a figure and its table of numbers); None when none is registered (Jupyter then shows ``repr``)."""
        return display.html_of(self, fallback=lambda: None)

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
    def _upgrade(cls, fields: dict[str, Any]) -> dict[str, Any]:
        """Stored ``fields`` of an older version under today's names (before the unknown and missing ones are refused)."""
        return fields

    def _check(self) -> None:
        """Checks of a loaded report beyond its fields' types, sizes and finiteness (:func:`check_fields`): ranges,
        and sizes that must agree with other fields. Raise :class:`FieldError` naming the field."""

    @classmethod
    def _from_summary(cls, d: dict[str, Any]) -> Any:
        """Rebuild from a summary-only JSON written before reports carried their fields; None when it cannot be done."""
        return None


class Provenanced:
    """A report that stores its :class:`Provenance` in one field, ``provenance``; ``model``, ``bos``, ``data``,
    ``model_info``, ``versions`` and ``distributed`` read from it (mixed into such reports; files written when these
    were fields of their own, or sat in ``extra``, load into it, see :func:`old_provenance`)."""

    provenance: Provenance

    @property
    def model(self) -> str:
        return self.provenance.model

    @property
    def bos(self) -> bool | None:
        return self.provenance.bos

    @property
    def data(self) -> str:
        return self.provenance.data

    @property
    def model_info(self) -> dict[str, Any]:
        return self.provenance.model_info

    @property
    def versions(self) -> dict[str, str]:
        return self.provenance.versions

    @property
    def distributed(self) -> dict[str, Any] | None:
        """The run of ``sink_interp.distributed()`` that produced the report (world size, backend); None outside."""
        return self.provenance.distributed


def delegated(inner: str, name: str, doc: str | None = None) -> Any:
    """A read-only property ``self.<inner>.<name>``: a fact a report takes from the report it holds.

    Example:
        >>> class Outer:
        ...     n = delegated("inner", "n")
        ...     def __init__(self, inner):
        ...         self.inner = inner
        >>> class Inner:
        ...     n = 3
        >>> Outer(Inner()).n
        3
    """
    return property(lambda self: getattr(getattr(self, inner), name), doc=doc or f"``{inner}.{name}``")


def summary_head(rep: Any, *names: str) -> dict[str, Any]:
    """The first keys of a model run's ``summary()``, in this order: ``model``, ``data``, ``bos``, then the report's
    attributes ``names`` (``"n"``, ``"length"``, ``"dtype"``...) under their own names."""
    return {"model": rep.model, "data": rep.data, "bos": rep.bos, **{name: getattr(rep, name) for name in names}}


def provenance_extra(prov: Provenance | None) -> dict[str, Any]:
    """The first keys of a summary's ``extra``, from the provenance: the probe, a non-causal mask, the distributed run
    (those that are set, in this order)."""
    if prov is None:
        return {}
    facts = {"probe": prov.probe, "mask": prov.mask, "distributed": prov.distributed}
    return {k: v for k, v in facts.items() if v is not None}


def summary_tail(rep: Any, **facts: Any) -> dict[str, Any]:
    """The last keys of a model run's ``summary()``: ``model_info``, ``versions`` and, when it holds anything,
    ``extra``: the provenance's probe, non-causal mask and distributed run (:func:`provenance_extra`), the ``facts``
    that are not None, then what the report's own ``extra`` field holds."""
    extra = provenance_extra(getattr(rep, "provenance", None))
    extra.update({k: v for k, v in facts.items() if v is not None})
    extra.update(getattr(rep, "extra", None) or {})
    return {"model_info": rep.model_info, "versions": rep.versions, **({"extra": extra} if extra else {})}


def from_extra(fields: dict[str, Any], keep: bool = False, **keys: Any) -> dict[str, Any]:
    """``fields`` of a file written when run facts sat in an ``extra`` dict: field ``name`` read as ``fn(extra[key])``
    for each ``name=(key, fn)`` of ``keys`` (the probe and mask that ``extra`` also held are in the provenance).
    ``keep``: the report still has an ``extra`` field, which keeps the keys not moved."""
    if "extra" not in fields:
        return fields
    out = dict(fields)
    extra = dict(out.pop("extra") or {})
    for name, (key, fn) in keys.items():
        value = extra.pop(key, None)
        if value is not None and name not in out:
            out[name] = fn(value)
    if keep:
        out["extra"] = extra
    return out


#: the fields a report held before its provenance was one field
OLD_PROVENANCE_FIELDS = ("model", "bos", "data", "model_info", "versions")


def old_provenance(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` of a report written in an older layout, with its provenance whole: ``model``, ``bos``, ``data``,
    ``model_info`` and ``versions`` once fields of their own (the probe and mask then read from ``extra``) joined into
    one ``provenance``; the distributed run once a field of its own (``distributed``) or a key of ``extra`` moved into
    it; and the probe, mask and distributed run that ``extra`` repeated taken out of it (other keys stay)."""
    out = dict(fields)
    extra = dict(out["extra"]) if isinstance(out.get("extra"), dict) else None
    if "provenance" not in out and set(OLD_PROVENANCE_FIELDS) & set(out):
        missing = [k for k in ("model", "data", "model_info", "versions") if k not in out]
        if missing:
            raise FieldError(missing[0], "is missing (the report's provenance needs it)")
        out = {k: v for k, v in out.items() if k not in OLD_PROVENANCE_FIELDS}
        out["provenance"] = Provenance(
            model=fields["model"],
            model_info=fields["model_info"],
            data=fields["data"],
            bos=fields.get("bos"),
            probe=(extra or {}).get("probe"),
            mask=(extra or {}).get("mask"),
            versions=fields["versions"],
        )
    prov = out.get("provenance")
    if not isinstance(prov, Provenance):
        return out
    run = out.pop("distributed", None)
    if extra is not None:
        for key in ("probe", "mask"):
            if key in extra and extra[key] == getattr(prov, key):
                del extra[key]
        moved = extra.pop("distributed", None)
        run = moved if run is None else run
        out.pop("extra")
        if extra:  # what is left is the report's own (a report without an extra field reads it in its _upgrade)
            out["extra"] = extra
    if run is not None and prov.distributed is None:
        out["provenance"] = dataclasses.replace(prov, distributed=run)
    return out


class Patched:
    """``base`` and ``other`` of a report that patched between a clean and a corrupted run (mixed into such reports:
    they hold ``clean``, ``corrupted`` and ``direction``)."""

    clean: float
    corrupted: float
    direction: str

    @property
    def base(self) -> float:
        """The metric of the run that is patched: clean for ``"noise"``, corrupted for ``"denoise"``."""
        return self.clean if self.direction == "noise" else self.corrupted

    @property
    def other(self) -> float:
        """The metric of the input the patched activations come from."""
        return self.corrupted if self.direction == "noise" else self.clean


class ModelRun:
    """``dtype`` and ``device`` of the model a report ran, read from its ``model_info`` (mixed into such reports).

    It defines no ``model``/``bos``/``data``/``model_info``/``versions`` attribute, so a report that still keeps
    those as fields of its own can mix it in; a report with one ``provenance`` field mixes in :class:`Provenanced` too.
    """

    model_info: dict[str, Any]

    @property
    def dtype(self) -> str:
        return str(self.model_info.get("dtype"))

    @property
    def device(self) -> str:
        return str(self.model_info.get("device"))


class ReportFileError(ValueError):
    """A report file (or text) that is not a well-formed report: one line naming the file and the field.

    Raised by :func:`load_report` for anything a file holds that :meth:`Report.to_json` would not have
    written: arrays whose shape, dtype or bytes disagree, sizes beyond what the file can honestly hold,
    NaN/Inf, values out of range, missing or unknown fields.
    """


class FieldError(ValueError):
    """A field of a report that fails a check (raised by :meth:`Report._check`; the loader names the file)."""

    def __init__(self, field: str, why: str):
        super().__init__(f"{field}: {why}")
        self.field, self.why = field, why


#: arrays any report may declare (bytes, all arrays together) whatever the size of its file
FLOOR_BYTES = 64 << 20
#: above that, at most this many times the file's own size: zlib inflates a real report's floats
#: about 1-2 times and its integer tables about 5-15 times; a crafted run of zeros inflates ~1000 times
MAX_RATIO = 16
_PIECE = 1 << 24  # bytes inflated at a time
_MAX_DEPTH = 200
_DTYPE = re.compile(r"^[<>|=]?[biufcU][0-9]{1,2}$")
_WRAPPERS = (
    "__ndarray__",
    "__list_array__",
    "__tensor__",
    "__codec__",
    "__record__",
    "__tuple__",
    "__dict__",
    "__items__",
    "__float__",
)
_FIX = "write it again with report.to_json(path) (it was changed or damaged after it was written)"


def _size(n: float) -> str:
    for unit, k in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{int(n)} bytes"


def _join(where: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else str(key)


class _Reader:
    """Decodes one file's report block: every array's size checked before it is inflated, every error naming the field."""

    def __init__(self, source: str, limit: int):
        self.source, self.limit, self.used = source, int(limit), 0

    def fail(self, where: str, why: str, fix: str = _FIX) -> ReportFileError:
        where = where if len(where) <= 100 else where[:100] + "..."
        return ReportFileError(f"{self.source}: field {where or '(top level)'} {why}; fix: {fix}")

    def decode(self, obj: Any, where: str, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise self.fail(where, f"is nested more than {_MAX_DEPTH} levels deep, which no report is")
        if isinstance(obj, list):
            return [self.decode(v, _join(where, i), depth + 1) for i, v in enumerate(obj)]
        if not isinstance(obj, dict):
            return obj
        tags = [k for k in _WRAPPERS if k in obj]
        if not tags:
            return {k: self.decode(v, _join(where, k), depth + 1) for k, v in obj.items()}
        tag = tags[0]
        body = obj[tag]
        if tag == "__ndarray__":
            return self.array(obj, where)
        if tag == "__list_array__":
            items = self.decode(self.need(body, list, where, "holds a list array that is not a list"), where, depth + 1)
            shape = self.shape(obj.get("shape"), where)
            if math.prod(shape) != len(items):
                raise self.fail(where, f"holds {len(items)} values for shape {shape}")
            out = np.empty(len(items), dtype=object)
            out[:] = items
            return out.reshape(shape)
        if tag == "__tensor__":
            arr = self.decode(body, where, depth + 1)
            if not isinstance(arr, np.ndarray) or arr.dtype == object:
                raise self.fail(where, "holds a tensor that is not a numeric array")
            import torch

            return torch.from_numpy(arr)
        if tag == "__codec__":
            if not isinstance(body, str) or body not in CODECS:
                raise self.fail(where, f"holds an object of unknown type {body!r} (known: {sorted(CODECS)})")
            record = self.decode(obj.get("record"), where, depth + 1)
            try:
                return CODECS[body](record)
            except Exception as e:  # noqa: BLE001 - any failure of a damaged record: one line naming the field
                raise self.fail(where, f"does not rebuild a {body} ({type(e).__name__}: {_first_line(e)})") from None
        if tag == "__record__":
            cls = RECORD_TYPES.get(body) or REPORT_TYPES.get(body) if isinstance(body, str) else None
            if cls is None:
                raise self.fail(where, f"holds a record of unknown type {body!r} (known: {sorted(RECORD_TYPES)})")
            fields = self.need(obj.get("fields"), dict, where, f"holds a {body} whose fields are not a JSON object")
            return self.build(cls, body, fields, where, depth)
        if tag == "__tuple__":
            return tuple(self.decode(self.need(body, list, where, "holds a tuple that is not a list"), where, depth + 1))
        if tag == "__dict__":
            body = self.need(body, dict, where, "holds a dict that is not a JSON object")
            return {k: self.decode(v, f"{where}[{k!r}]", depth + 1) for k, v in body.items()}
        if tag == "__items__":
            out = {}
            for i, kv in enumerate(self.need(body, list, where, "holds dict items that are not a list")):
                if not isinstance(kv, list) or len(kv) != 2:
                    raise self.fail(f"{where}[{i}]", "is not a [key, value] pair")
                key = _hashable(self.decode(kv[0], where, depth + 1))
                try:
                    hash(key)
                except TypeError:
                    raise self.fail(f"{where}[{i}]", f"has a key that cannot be a dict key ({type(key).__name__})") from None
                out[key] = self.decode(kv[1], f"{where}[{key!r}]", depth + 1)
            return out
        if body not in ("nan", "inf", "-inf"):  # __float__
            raise self.fail(where, f"holds the float {body!r}; only 'nan', 'inf' and '-inf' are stored this way")
        return float(body)

    def need(self, value: Any, kind: type, where: str, why: str) -> Any:
        if not isinstance(value, kind):
            raise self.fail(where, why)
        return value

    def shape(self, shape: Any, where: str) -> list[int]:
        if not isinstance(shape, list) or len(shape) > 32:
            raise self.fail(where, f"declares the shape {shape!r}, which is not a list of at most 32 sizes")
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise self.fail(where, f"declares the shape {shape!r}; sizes are whole numbers >= 0")
        return shape

    def array(self, obj: dict[str, Any], where: str) -> np.ndarray:
        """One array: dtype and shape checked, its size counted against the limit, then inflated to exactly that size."""
        dt = obj.get("dtype")
        if not isinstance(dt, str) or not _DTYPE.match(dt):
            raise self.fail(where, f"declares the dtype {dt!r}; a report stores numbers and booleans (e.g. '<f4', '<i8', '|b1')")
        dtype = np.dtype(dt)
        shape = self.shape(obj.get("shape"), where)
        nbytes = math.prod(shape) * dtype.itemsize
        if self.used + nbytes > self.limit:
            raise self.fail(
                where,
                f"declares {_size(nbytes)} (shape {shape}, {dtype.name}), beyond what this report may hold: "
                f"{_size(self.limit)} of arrays in all ({MAX_RATIO} x the file's size, at least {_size(FLOOR_BYTES)}); "
                "refused before inflating anything",
                fix="if you trust the file, load_report(path, max_bytes=...) with a larger limit",
            )
        self.used += nbytes
        data = obj.get("__ndarray__")
        if not isinstance(data, str):
            raise self.fail(where, "holds array data that is not base64 text")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise self.fail(where, "holds array data that is not base64 text") from None
        buf = bytearray(nbytes)  # inflated in pieces straight into the array's memory: never more than declared
        view, pos, inflate, rest = memoryview(buf), 0, zlib.decompressobj(), raw
        try:
            while not inflate.eof:
                piece = inflate.decompress(rest, min(_PIECE, nbytes + 1 - pos))
                rest = inflate.unconsumed_tail
                if pos + len(piece) > nbytes:
                    raise self.fail(where, f"holds more bytes than its shape {shape} and dtype {dtype.name} declare ({nbytes})")
                view[pos : pos + len(piece)] = piece
                pos += len(piece)
                if not piece and not rest:
                    break
        except zlib.error as e:
            raise self.fail(where, f"holds array data that is not zlib-compressed ({e})") from None
        if not inflate.eof:
            raise self.fail(where, "holds a cut (truncated) compressed stream")
        if pos != nbytes:
            raise self.fail(where, f"holds {pos} bytes, fewer than its shape {shape} and dtype {dtype.name} declare ({nbytes})")
        if inflate.unused_data:
            raise self.fail(where, "holds bytes after the end of its compressed data")
        arr = np.frombuffer(buf, dtype=dtype)
        return (arr if dtype.isnative else arr.astype(dtype.newbyteorder("="))).reshape(shape)

    def build(self, cls: type, name: str, fields: dict[str, Any], where: str, depth: int) -> Any:
        """``cls`` from its stored fields (old names upgraded): missing and unknown fields are refused by name."""
        decoded = {k: self.decode(v, _join(where, k), depth + 1) for k, v in fields.items()}
        known = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        try:
            decoded = renamed(name, decoded)
            if "provenance" in known:
                decoded = old_provenance(decoded)
            if isinstance(cls, type) and issubclass(cls, Report):
                decoded = cls._upgrade(decoded)
        except FieldError as e:
            raise self.fail(_join(where, e.field), e.why) from None
        except Exception as e:  # noqa: BLE001
            raise self.fail(where, f"has fields that cannot be read ({type(e).__name__}: {_first_line(e)})") from None
        skip = set(getattr(cls, "_json_skip", ()))
        if known:
            unknown = sorted(set(decoded) - set(known))
            missing = [
                n
                for n, f in known.items()
                if n not in decoded
                and n not in skip
                and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
            ]
            if unknown:
                raise self.fail(_join(where, unknown[0]), f"is not a field of {name} (fields: {', '.join(known)})")
            if missing:
                raise self.fail(_join(where, missing[0]), f"is missing (a {name} needs it)")
        try:
            if issubclass(cls, Report):
                return cls._from_fields(decoded)
            return cls(**decoded)
        except ReportFileError:
            raise
        except FieldError as e:
            raise self.fail(_join(where, e.field), e.why) from None
        except Exception as e:  # noqa: BLE001 - a value a constructor refuses: one line naming the record
            raise self.fail(where, f"does not make a {name} ({type(e).__name__}: {_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


# --------------------------------------------------------------------------- checks of what a file held

_ARRAY_ANN = re.compile(r"""^(Float|Int|Bool|Shaped|Num)\[\s*np\.ndarray\s*,\s*["']([^"']*)["']\s*\]$""")
_ANN_KINDS = {"Float": "f", "Int": "iu", "Bool": "b", "Num": "biufc", "Shaped": "biufcUO"}


@functools.cache
def _annotations(cls: type) -> dict[str, str]:
    """Field name -> annotation text (every report module uses ``from __future__ import annotations``)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        for k, v in vars(klass).get("__annotations__", {}).items():
            out[k] = v if isinstance(v, str) else getattr(v, "__name__", "")
    return out


def _split(text: str, sep: str) -> list[str]:
    """``text`` split on ``sep`` outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == sep and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [*parts, cur.strip()]


def _fits(ann: str, v: Any) -> bool | None:
    """Whether ``v`` fits the annotation text ``ann`` (None: an annotation this does not check)."""
    alts = _split(ann, "|")
    if len(alts) > 1:
        got = [_fits(a, v) for a in alts]
        return True if True in got else None if None in got else False
    a = alts[0]
    if a == "None":
        return v is None
    if a == "bool":
        return isinstance(v, bool)
    if a == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if a == "float":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if a == "str":
        return isinstance(v, str)
    if a in ("np.ndarray", "Tensor", "torch.Tensor") or _ARRAY_ANN.match(a):
        return type(v).__name__ in ("ndarray", "Tensor")
    m = re.match(r"^(tuple|dict|list)\[(.*)\]$", a)
    if m:
        kind, args = m.group(1), _split(m.group(2), ",")
        if not isinstance(v, {"tuple": tuple, "dict": dict, "list": list}[kind]):
            return False
        if kind == "dict" and len(args) == 2:
            return all(_fits(args[0], k) is not False and _fits(args[1], x) is not False for k, x in v.items())
        if kind == "tuple" and len(args) == 2 and args[1] == "...":
            return all(_fits(args[0], x) is not False for x in v)
        if kind == "list" and len(args) == 1:
            return all(_fits(args[0], x) is not False for x in v)
        return None
    if a in ("dict", "list", "tuple"):
        return isinstance(v, {"dict": dict, "list": list, "tuple": tuple}[a])
    if a in REPORT_TYPES or a in RECORD_TYPES or a == "Intervention":
        return any(c.__name__ == a for c in type(v).__mro__)
    return None


def _described(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"a {v.dtype.name} array of shape {list(v.shape)}"
    text, name = repr(v), type(v).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name} ({text[:40] + '...' if len(text) > 40 else text})"


def check_range(field: str, values: Any, low: float | None = None, high: float | None = None) -> None:
    """Raise :class:`FieldError` unless every finite value of ``values`` lies in ``[low, high]`` (NaN is checked elsewhere)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if not arr.size:
        return
    lo, hi = float(arr.min()), float(arr.max())
    if (low is not None and lo < low) or (high is not None and hi > high):
        span = f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
        raise FieldError(field, f"holds values from {lo:.6g} to {hi:.6g}, outside {span}")


def check_indices(field: str, values: Any, upper: int | None = None) -> None:
    """Raise :class:`FieldError` unless ``values`` are distinct whole numbers in ``[0, upper)``."""
    vals = list(values)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
        raise FieldError(field, f"holds {vals[:8]!r}; indices are whole numbers")
    bad = [int(v) for v in vals if v < 0 or (upper is not None and v >= upper)]
    if bad or len(set(vals)) != len(vals):
        where = f"[0, {upper})" if upper is not None else "whole numbers >= 0"
        raise FieldError(field, f"holds {vals[:8]!r}; indices are distinct, in {where}")


def _non_finite(v: Any, top: bool = True) -> str | None:
    """How ``v`` holds NaN or Inf: a float field itself, arrays and tensors also inside dicts, lists and tuples (not records)."""
    if isinstance(v, float):
        return None if not top or math.isfinite(v) else f"is {v}"
    if isinstance(v, np.ndarray) and v.dtype.kind in "fc":
        bad = int(v.size - np.isfinite(v).sum())
        return f"holds {bad} NaN/Inf of {v.size} values" if bad else None
    if type(v).__name__ == "Tensor" and v.is_floating_point():
        bad = int(v.numel() - v.isfinite().sum())
        return f"holds {bad} NaN/Inf of {v.numel()} values" if bad else None
    if isinstance(v, dict):
        v = list(v.values())
    if isinstance(v, (list, tuple)):
        for x in v:
            if not dataclasses.is_dataclass(x):
                why = _non_finite(x, top=False)
                if why:
                    return why
    return None


def _records_in(v: Any, where: str) -> list[tuple[Any, str]]:
    """The dataclass instances in ``v`` (itself, or inside dicts, lists and tuples), with where they are."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return [(v, where)]
    if isinstance(v, dict):
        return [r for k, x in v.items() for r in _records_in(x, f"{where}[{k!r}]")]
    if isinstance(v, (list, tuple)):
        return [r for i, x in enumerate(v) for r in _records_in(x, f"{where}[{i}]")]
    return []


def check_fields(obj: Any, where: str = "") -> None:
    """Check a report (or a record inside one) as loaded: types, array kinds and named sizes, NaN/Inf, ranges.

    Generic checks read the field annotations: ``Float[np.ndarray, "n layer head"]`` must be a float
    array of 3 dimensions, and a size named twice (``n``, ``layer``...) must agree across the fields of
    one record. Float arrays and ``float`` fields of a report hold no NaN/Inf, except the fields a
    class lists in ``_nan_fields`` (entries that were not measured), and a field named ``eps`` lies in
    (0, 1). Then the class's own :meth:`Report._check`. Raises :class:`FieldError` naming the field.
    """
    cls = type(obj)
    ann = _annotations(cls)
    nan_ok = set(getattr(cls, "_nan_fields", ()))
    is_report = isinstance(obj, Report)
    sizes: dict[str, tuple[int, str]] = {}
    for f in dataclasses.fields(obj):
        v, w, a = getattr(obj, f.name), _join(where, f.name), ann.get(f.name, "").strip()
        m = _ARRAY_ANN.match(a)
        if m and isinstance(v, np.ndarray):
            kinds = _ANN_KINDS[m.group(1)]
            if v.dtype.kind not in kinds:
                raise FieldError(w, f"holds {v.dtype.name} values where the report keeps {m.group(1).lower()} numbers")
            dims = m.group(2).split()
            if "..." not in dims and not any(d.startswith("*") for d in dims):
                if v.ndim != len(dims):
                    raise FieldError(w, f"has shape {list(v.shape)}, not the {len(dims)} dimensions [{', '.join(dims)}]")
                for d, size in zip(dims, v.shape):
                    if d.isdigit() and int(d) != size:
                        raise FieldError(w, f"has shape {list(v.shape)}; its dimension [{m.group(2)}] must have {d} entries")
                    if d.isidentifier() and d != "_":
                        if d in sizes and sizes[d][0] != size:
                            raise FieldError(
                                w,
                                f"has {size} entries along '{d}' (shape {list(v.shape)}), but {sizes[d][1]} has {sizes[d][0]}",
                            )
                        sizes.setdefault(d, (size, w))
        elif a and _fits(a, v) is False:
            raise FieldError(w, f"holds {_described(v)}, not {a}")
        if f.name not in nan_ok and (is_report or not isinstance(v, float)):
            why = _non_finite(v)
            if why:
                raise FieldError(w, f"{why}; a report holds finite numbers only")
        if is_report and f.name == "eps" and isinstance(v, (int, float)) and not isinstance(v, bool):
            try:
                check_eps(v)
            except ValueError:
                raise FieldError(w, f"is {v!r}; the sink threshold eps lies strictly between 0 and 1") from None
        for rec, rw in _records_in(v, w):
            check_fields(rec, rw)
    if is_report:
        try:
            obj._check()
        except FieldError as e:
            raise FieldError(_join(where, e.field), e.why) from None


def loads_report(text: str, source: str = "the text", *, max_bytes: int | None = None) -> Report:
    """The report whose :meth:`Report.to_json` text is ``text`` (see :func:`load_report`); ``source`` names it in errors."""
    providers.load("reports")
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0):
        raise ValueError(f"max_bytes must be a whole number of bytes >= 0 (or None), got {max_bytes!r}")
    limit = max(FLOOR_BYTES, MAX_RATIO * len(text)) if max_bytes is None else max_bytes
    try:
        d = json.loads(text)
    except RecursionError:
        raise ReportFileError(
            f"{source} is nested too deeply to be a report; fix: pass a file written by a report's to_json"
        ) from None
    except ValueError as e:  # JSONDecodeError, and ints beyond Python's digit limit
        where = f" at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        msg = e.msg if isinstance(e, json.JSONDecodeError) else _first_line(e)
        raise ReportFileError(f"{source} is not JSON ({msg}{where}); fix: pass a file written by a report's to_json") from None
    if not isinstance(d, dict):
        raise ReportFileError(
            f"{source} holds no report (a JSON {type(d).__name__}); fix: pass a file written by a report's to_json"
        )
    reader = _Reader(source, limit)
    block = d.get("report")
    if isinstance(block, dict) and "type" in block:
        name = block["type"]
        cls = REPORT_TYPES.get(name) if isinstance(name, str) else None
        if cls is None:
            raise ReportFileError(f"{source} holds a {name!r}, which this version does not know; known: {sorted(REPORT_TYPES)}")
        fields = reader.need(block.get("fields"), dict, "report.fields", "is not a JSON object")
        rep = reader.build(cls, name, fields, "", 0)
    else:
        rep = None
        for cls in REPORT_TYPES.values():
            try:
                rep = cls._from_summary(d)  # type: ignore[attr-defined]
            except Exception as e:  # noqa: BLE001 - a damaged old file: one line
                raise ReportFileError(
                    f"{source}: a {cls.__name__} summary that does not make a report ({type(e).__name__}: {_first_line(e)}); "
                    f"fix: {_FIX}"
                ) from None
            if rep is not None:
                break
        if rep is None:
            raise ReportFileError(
                f"{source} has no 'report' block and is not a summary this version can rebuild a report from "
                "(older files kept only the summary, without the arrays); fix: write it again with report.to_json(path)"
            )
    try:
        check_fields(rep)
    except FieldError as e:
        raise reader.fail(e.field, e.why) from None
    return rep


def load_report(path: str | Path, *, max_bytes: int | None = None) -> Report:
    """Read a report written by ``to_json`` back into its own type (SinkReport, MassiveReport, ...), arrays included.

    A file is data, never a risk: its arrays may declare at most ``max_bytes`` in all (default: 16 times
    the file's size, at least 64 MiB), checked before anything is inflated, and every array is inflated
    to exactly the size its shape and dtype declare. Shapes, dtypes, NaN/Inf and ranges are checked
    (:func:`check_fields`). Anything else gives one :class:`ReportFileError` (a ``ValueError``) that
    names the file and the field.

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
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ReportFileError(
            f"{p} is not UTF-8 text (byte {e.start}: {data[e.start : e.start + 1]!r}); fix: pass a file written by a report's to_json"
        ) from None
    return loads_report(text, source=str(p), max_bytes=max_bytes)
