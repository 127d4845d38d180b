"""Load a model by name (:func:`load_model`): offline names, local folders and Hugging Face ids, with
device placement, tokenizer facts, and the :class:`ModelInfo` every report records."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .._internal import files, providers
from .._internal.errors import require
from .._internal.placement import device_map as _device_map_of
from .._internal.placement import model_device as _model_device
from . import cache as _cache
from .base import LOADED_AS, bridge_class, first_line, quiet_loading, resolve_device, resolve_dtype
from .cache import CacheError
from .tiny import TINY_MODELS, tiny_model

DEFAULT_MODEL = "smollm2-135m"


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


def known_models() -> list[str]:
    """Names :func:`load_model` resolves without a hub: the offline default and the tiny models.

    Examples:
        >>> known_models()[:3]
        ['smollm2-135m', 'tiny-mha', 'tiny-mqa']
    """
    return [DEFAULT_MODEL, *TINY_MODELS]


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
        ckpt = _cache.smollm2_checkpoint(progress=progress)
        try:
            model = _boot_local(str(ckpt), dev, dt, **place)
        except (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError)):
            raise
        except Exception as e:
            if place:  # the checkpoint was verified just now: the placement is what failed
                raise ValueError(_placement_failed(place, e)) from e
            raise CacheError(
                f"the cached SmolLM2 checkpoint in {ckpt} does not load ({type(e).__name__}: {first_line(e)}); "
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
    return f"loading with {given} failed ({type(e).__name__}: {first_line(e)}); fix: check these arguments, or use device=..."


def _looks_like_path(name: str) -> bool:
    """A model name meant as a local folder: starts with ``.``, ``/`` or ``~``, or has a separator a hub id cannot have."""
    seps = {"/", os.sep, os.altsep} - {None}
    if name.startswith((".", "~", *seps)):
        return True
    return name.count("/") >= 2 or any(s in name for s in seps - {"/"})


def _looks_like_hub_id(name: str) -> bool:
    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        return True
    try:
        from transformer_lens.supported_models import MODEL_ALIASES, OFFICIAL_MODEL_NAMES

        return name in OFFICIAL_MODEL_NAMES or any(name in a for a in MODEL_ALIASES.values())
    except Exception:  # pragma: no cover - registry layout changed
        return False


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

        from .._internal.errors import UnsupportedArchitecture

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
    from ..architecture import describe_attention

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
