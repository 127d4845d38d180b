"""Files are data, never a risk: reading what a user, a colleague or an attacker may have placed in a folder.

Each function reads one kind of file and turns every way it can be wrong into one ``ValueError`` line
that names the file and the fix: JSON (not UTF-8, not JSON, not an object), safetensors (a header that
is not one, a file cut short: checked from the header before any tensor is read), ``torch.load``
(tensors and plain containers only: a pickle that needs code is refused, never run). It also holds the
facts of which files a checkpoint folder's weights are (its index, else ``model.safetensors``, never
a glob), the manifest a writer keeps of what it wrote (name, size, SHA-256), and two path checks: an
output that is one of the inputs, and a folder named in a file that must stay inside a root.

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "config.json").write_text('{"vocab_size": 8')
    >>> try:
    ...     read_json(d / "config.json")
    ... except ValueError as e:
    ...     print(str(e)[len(str(d)) + 1 :])
    config.json is not valid JSON (Expecting ',' delimiter at line 1, column 17); fix: restore it from the checkpoint's source
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

from . import vocab

#: the weights file of a checkpoint saved in one piece, and the index of one saved in shards (Hugging Face names)
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
#: a safetensors header larger than this is refused (the safetensors library's own limit is 100 MB)
MAX_HEADER = 100_000_000


def read_json(path: str | os.PathLike[str], fix: str = "restore it from the checkpoint's source", kind: type = dict) -> Any:
    """The JSON value in ``path`` (a ``kind``, default an object), or one ``ValueError`` naming the file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{p} is missing; fix: {fix}") from None
    except OSError as e:
        raise ValueError(f"{p} cannot be read ({e.strerror or e}); fix: {fix}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p} is not UTF-8 text (byte {e.start}); fix: {fix}") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"{p} is nested too deeply to be what it names; fix: {fix}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); fix: {fix}") from None
    except ValueError as e:
        raise ValueError(f"{p} is not valid JSON ({e}); fix: {fix}") from None
    if not isinstance(value, kind):
        raise ValueError(f"{p} holds a JSON {type(value).__name__}, not a JSON {kind.__name__}; fix: {fix}")
    return value


def read_jsonl(path: str | os.PathLike[str], fix: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file that a process appends to (``metrics.jsonl``).

    A last line that is not JSON is what a process stopped in the middle of an append leaves: it is
    dropped with a one-line warning naming the file. Any other line that is not a JSON object is one
    ``ValueError`` naming the file, the line and ``fix``.
    """
    import warnings

    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise ValueError(f"{p} cannot be read ({e.strerror or e}); fix: {fix}") from None
    lines = [(i, line) for i, line in enumerate(text.split("\n"), start=1) if line.strip()]
    out = []
    for j, (i, line) in enumerate(lines):
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as e:
            if j == len(lines) - 1:
                warnings.warn(
                    f"{p}: its last line (line {i}) is cut off, as a process stopped while writing it leaves it; "
                    "dropped (a run resumes from its checkpoint and writes it again)",
                    stacklevel=3,
                )
                break
            raise ValueError(f"{p}, line {i}: not JSON ({e}); fix: {fix}") from None
        if not isinstance(value, dict):
            raise ValueError(f"{p}, line {i}: a JSON {type(value).__name__}, not an object; fix: {fix}")
        out.append(value)
    return out


def read_metrics_lines(path: str | os.PathLike[str], fix: str) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (:func:`read_jsonl`), old key names read as the new ones
    (:func:`sink_interp._internal.vocab.upgrade`): the one reader behind ``training.read_metrics`` and the
    training-curve views.
    """
    return [vocab.upgrade("metrics", m) for m in read_jsonl(path, fix=fix)]


def check_safetensors(path: str | os.PathLike[str]) -> None:
    """Refuse (one line) a safetensors file whose header is not one, or that is shorter or longer than its header says.

    Reads 8 bytes and the header only: a truncated checkpoint is named before any tensor is read.
    """
    p = Path(path)
    fix = "copy the checkpoint again (or save it again) from a good source"
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{p} is cut short ({size} bytes, not even a safetensors header); fix: {fix}")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise ValueError(
                f"{p} is not a complete safetensors file (its header claims {n} bytes, the file has {size}); fix: {fix}"
            )
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ValueError(f"{p} is not a safetensors file (its header is not JSON); fix: {fix}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{p} is not a safetensors file (its header is not a JSON object); fix: {fix}")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(x, int) and x >= 0 for x in offsets)):
            raise ValueError(f"{p} is not a safetensors file (tensor {name!r} has no data offsets); fix: {fix}")
        end = max(end, offsets[1])
    if 8 + n + end != size:
        what = "cut short" if 8 + n + end > size else "longer than its header says"
        raise ValueError(f"{p} is {what}: {size} bytes, its header describes {8 + n + end}; fix: {fix}")


def load_tensors(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The tensors of a safetensors file (checked first by :func:`check_safetensors`), or one line naming it."""
    from safetensors.torch import load_file

    check_safetensors(path)
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - the library's errors (SafetensorError) become one line naming the file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(
            f"{path} does not load as safetensors ({first}); fix: copy the checkpoint again from a good source"
        ) from None


def torch_load(path: str | os.PathLike[str], fix: str) -> Any:
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and plain containers only.

    A file that needs code to load (a pickle of an object, a planted payload) is refused in one line, and
    nothing in it runs; the line never suggests turning the safe loader off.
    """
    import pickle

    import torch

    p = Path(path)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{p} is missing; fix: {fix}") from None
    except pickle.UnpicklingError:
        raise ValueError(
            f"{p} holds more than tensors and plain data (it would need code to load); refused, nothing in it was run; fix: {fix}"
        ) from None
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: one line naming it
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ValueError(f"{p} is not a torch file of tensors ({type(e).__name__}: {first}); fix: {fix}") from None


def weight_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The weights files of a checkpoint folder: those its index names, else ``model.safetensors``.

    Like Hugging Face's own loader, other ``*.safetensors`` files in the folder are never read. An index
    that names a file outside the folder, or a file that is missing, is refused in one line.
    """
    d = Path(folder)
    index = d / WEIGHTS_INDEX
    if index.is_file():
        weight_map = read_json(index, fix="save the checkpoint again").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{index} has no weight_map of tensor names to files; fix: save the checkpoint again")
        names = sorted(set(weight_map.values()))
        for name in names:
            if Path(name).name != name or name in ("", ".", ".."):
                raise ValueError(f"{index} names the file {name!r}, which is not in the folder; fix: save the checkpoint again")
        files = [d / name for name in names]
    else:
        files = [d / WEIGHTS]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{d} lacks the weights file {missing[0]}; fix: copy the whole checkpoint folder again")
    return files


def digest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file (what a manifest records of it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"size": os.path.getsize(path), "sha256": h.hexdigest()}


def manifest(folder: str | os.PathLike[str], names: list[str] | set[str]) -> dict[str, dict[str, Any]]:
    """``{name: digest}`` of the files ``names`` in ``folder``: the record of what a writer wrote there."""
    return {n: digest(Path(folder) / n) for n in sorted(names)}


def unchanged(folder: str | os.PathLike[str], name: str, record: Any) -> bool:
    """Whether ``folder/name`` is still the file a :func:`manifest` recorded (a regular file, same size and SHA-256)."""
    p = Path(folder) / name
    if not isinstance(record, dict) or p.is_symlink() or not p.is_file():
        return False
    return p.stat().st_size == record.get("size") and digest(p)["sha256"] == record.get("sha256")


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file (links and ``..`` resolved; also a file that does not exist yet)."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    return pa.resolve() == pb.resolve()


def inside(root: str | os.PathLike[str], rel: str, what: str, fix: str) -> Path:
    """``root / rel``, refused (one line naming ``what``) unless ``rel`` is relative and stays inside ``root``.

    Links are followed: a folder that resolves outside ``root`` is refused as well.
    """
    r = Path(root).expanduser()
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or Path(rel).drive:
        raise ValueError(f"{what} is {rel!r}; it must be a relative folder inside {r}; fix: {fix}")
    p = r / rel
    if ".." in Path(rel).parts or not p.resolve().is_relative_to(r.resolve()):
        raise ValueError(f"{what} is {rel!r}, which leads outside {r}; fix: {fix}")
    return p


__all__ = [
    "WEIGHTS",
    "WEIGHTS_INDEX",
    "check_safetensors",
    "digest",
    "inside",
    "load_tensors",
    "manifest",
    "read_json",
    "read_jsonl",
    "same_file",
    "torch_load",
    "unchanged",
    "weight_files",
]
