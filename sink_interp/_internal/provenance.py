"""What produced a number: library versions and run settings."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from . import distributed


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """Versions of the packages that change the numbers."""
    out = {"python": platform.python_version()}
    for pkg in ("sink_interp", "torch", "transformer-lens", "transformers", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def check_writable(path: str | os.PathLike[str], name: str = "path") -> Path:
    """Check that a file can be written at ``path`` before any work: not a folder, and its folder writable.

    Missing parent folders are fine when the nearest existing one is writable (they are created on
    write). Raises ``ValueError`` naming ``name`` and the user's path.

    Examples:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> check_writable(d, "--json")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: --json: ... is a folder; fix: give a file name inside it, e.g. .../out.json
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(
            f"{name}: {str(path)!r} is a folder; fix: give a file name inside it, e.g. {p / ('out' + (p.suffix or '.json'))}"
        )
    if p.exists() and not p.is_file():
        raise ValueError(f"{name}: {str(path)!r} exists and is not a regular file; fix: choose another path")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{name}: cannot create a file under {str(parent)!r}, which is not a folder; fix: choose another path")
    try:  # the only reliable test of "can I create a file here" (permissions, read-only mounts, root)
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".check", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{name}: cannot write {str(path)!r} ({e.strerror or e}); fix: choose a writable folder") from None
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{name}: {str(path)!r} exists and is read-only; fix: choose another path or make it writable")
    return p


def write_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written).

    Errors name ``path``, not the temporary file. Inside ``sink_interp.distributed()`` only rank 0 writes.
    """
    path = Path(path).expanduser()
    if not distributed.is_main():
        return path
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {str(path)!r}: it is a folder; fix: give a file name inside it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {str(path)!r}: {e.strerror or e}; fix: choose a writable folder") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the result the usual permissions
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise OSError(e.errno, f"cannot write {str(path)!r}: {e.strerror or e}") from None
        raise
    return path


def to_jsonable(obj: Any) -> Any:
    """Numpy/torch scalars and arrays to plain Python for ``json.dumps``."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, float) and (obj != obj):  # NaN -> null
        return None
    try:
        import torch

        from .probe import ProbeSet

        if isinstance(obj, torch.Tensor) and not isinstance(obj, ProbeSet):  # a ProbeSet is left as is, as before
            return to_jsonable(obj.detach().cpu().numpy())
    except ImportError:  # pragma: no cover
        pass
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), indent=2)


@dataclass(frozen=True)
class Provenance:
    """What produced a result: the model and its facts, the data and its probe, the BOS policy, the mask, the versions
    and the distributed run (world size and backend inside ``sink_interp.distributed()``).

    Built by :func:`sink_interp.provenance.provenance`; every report gives it back as ``report.provenance``.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, measure_sinks
        >>> rep = measure_sinks(tiny_model(), torch.randint(4, 128, (2, 8)), progress=False)
        >>> p = rep.provenance
        >>> p.model.startswith("tiny-gqa"), p.data, p.model_info["n_layers"]
        (True, 'tokens', 2)
    """

    model: str
    model_info: dict[str, Any]
    data: str
    bos: bool | None
    probe: dict[str, Any] | None = None
    mask: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=versions)
    #: the run of ``sink_interp.distributed()`` it was part of (``{"world_size": ..., "backend": ...}``); None outside
    distributed: dict[str, Any] | None = None


def distributed_run() -> dict[str, Any] | None:
    """The world size and backend when called inside ``sink_interp.distributed()``; None outside."""
    ctx = distributed.current()
    return None if ctx is None else ctx.info()


@dataclass(frozen=True)
class LseEngine:
    """How sink scores were read without a T x T map (``method="lse"``): ``engine`` ``"fused"`` (the model's own
    attention ``kernel``, the row LSE from ``lse``) or ``"hooks"`` (the bridge's q and k, ``why_not_fused``); the batch
    size and the self-check against the model's own scores on a short slice.

    Example:
        >>> e = LseEngine.from_info({"engine": "hooks", "why_not_fused": "no kernel", "batch_size": 2})
        >>> e.engine, e.info()
        ('hooks', {'engine': 'hooks', 'why_not_fused': 'no kernel', 'batch_size': 2})
    """

    engine: str
    kernel: tuple[str, ...] = ()
    lse: tuple[str, ...] = ()
    why_not_fused: str | None = None
    batch_size: int | None = None
    self_check: str | None = None

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> LseEngine:
        """From the dict form (what a summary's ``extra["lse"]`` holds)."""
        return cls(
            engine=str(info["engine"]),
            kernel=tuple(info.get("kernel") or ()),
            lse=tuple(info.get("lse") or ()),
            why_not_fused=info.get("why_not_fused"),
            batch_size=info.get("batch_size"),
            self_check=info.get("self_check"),
        )

    def info(self) -> dict[str, Any]:
        """The dict form: ``engine``, then for a fused engine ``kernel`` and ``lse``, then the facts that are set."""
        out: dict[str, Any] = {"engine": self.engine}
        if self.engine == "fused" or self.kernel:
            out.update(kernel=list(self.kernel), lse=list(self.lse))
        for key in ("why_not_fused", "batch_size", "self_check"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out
