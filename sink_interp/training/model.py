"""Small Llama-style models for the sink laboratory, behind a ``TransformerBridge``.

:func:`build_model` makes a stock Hugging Face ``LlamaForCausalLM`` (RoPE) or
``SmolLM3ForCausalLM`` with ``no_rope_layers=[0] * L`` (no rotary anywhere: the
base for NoPE, ALiBi, sinusoidal and learned positions) -- RMSNorm, SwiGLU, no
biases -- boots it as a ``TransformerBridge`` and attaches the config's knobs
as permanent hooks (:mod:`sink_interp.training.knobs`). Training runs *through
the bridge*, so the model that is trained is exactly the model every analysis
sees (measured: the bridge adds no cost at this size; see ``docs/training.md``).

:func:`save_trained` writes a Hugging Face directory (``config.json``,
weights, tokenizer) plus ``sink_knobs.pt`` and ``sink_interp_train.json``;
:func:`load_trained` (and :func:`sink_interp.load_model` on such a directory)
restores the bridge with its knobs.
"""

from __future__ import annotations

import json
import math
import os
import re
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._internal import files
from ..models import register_folder_loader
from .config import TrainConfig
from .knobs import KnobParams, KnobRuntime

MARKER = "sink_interp_train.json"
FORMAT_VERSION = 1
NORM_EPS = 1e-5  # TinyLlama / official lit_gpt configs

_LABS: weakref.WeakKeyDictionary[nn.Module, LabModel] = weakref.WeakKeyDictionary()


@dataclass
class LabModel:
    """A trainable model: the bridge, the wrapped HF model, the knob parameters and hooks."""

    bridge: Any
    hf: nn.Module
    params: KnobParams
    runtime: KnobRuntime
    cfg: TrainConfig
    tokenizer: Any
    named: list[tuple[str, Tensor]]  # clean HF names -> live tensors (parameters and persistent buffers)

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named if isinstance(p, nn.Parameter)]

    def state_dict(self) -> dict[str, Tensor]:
        """Clean (HF-named) tensors, detached copies."""
        return {n: t.detach().clone() for n, t in self.named}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        names = {n for n, _ in self.named}
        missing, unexpected = sorted(names - set(state)), sorted(set(state) - names)
        if missing or unexpected:
            raise ValueError(f"state does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        with torch.no_grad():
            for n, t in self.named:
                t.copy_(state[n].to(t.device, t.dtype))

    def n_params(self) -> int:
        return sum(p.numel() for _, p in self.named_parameters())


def _hf_config(cfg: TrainConfig, d_vocab: int) -> Any:
    from transformers import LlamaConfig, SmolLM3Config

    act = {"swiglu": "silu", "geglu": "gelu", "reglu": "relu"}.get(cfg.ffn, "silu")
    common = dict(
        vocab_size=d_vocab,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads or cfg.n_heads,
        max_position_embeddings=cfg.seq_len,
        rms_norm_eps=NORM_EPS,
        hidden_act=act,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if cfg.pos == "rope":
        hc = LlamaConfig(rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta}, **common)
    else:
        hc = SmolLM3Config(no_rope_layers=[0] * cfg.n_layers, use_sliding_window=False, **common)
    return hc


def _official_init(model: nn.Module, cfg: TrainConfig) -> None:
    """The official runs' initialisation: N(0, sqrt(2 / 5 / fan_in)) for embeddings and linears,
    N(0, 1 / sqrt(d_mlp) / L) for the MLP output projection (GPT-NeoX)."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (nn.Embedding, nn.Linear)):
                nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / 5.0 / module.weight.size(1)))
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            if name.endswith("mlp.down_proj"):
                nn.init.normal_(module.weight, mean=0.0, std=1.0 / math.sqrt(module.weight.size(1)) / cfg.n_layers)


def build_hf_model(cfg: TrainConfig, d_vocab: int) -> tuple[nn.Module, KnobParams]:
    """The Hugging Face model (eager attention) and its knob parameters, initialised from ``cfg.seed``."""
    from transformers import LlamaForCausalLM, SmolLM3ForCausalLM

    torch.manual_seed(cfg.seed)
    hc = _hf_config(cfg, d_vocab)
    hc._attn_implementation = "eager"
    cls = LlamaForCausalLM if cfg.pos == "rope" else SmolLM3ForCausalLM
    model = cls(hc)
    if cfg.init == "official":
        _official_init(model, cfg)
    params = KnobParams(cfg, n_ctx=cfg.seq_len)
    model.model.sink_knobs = params
    model.config.architectures = [cls.__name__]  # the bridge picks its adapter from this
    return model, params


def build_model(
    cfg: TrainConfig,
    d_vocab: int,
    tokenizer: Any,
    device: str | torch.device | None = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LabModel:
    """Build the model of ``cfg`` behind a ``TransformerBridge`` with its knobs attached.

    Example:
        >>> from sink_interp.training import preset
        >>> from sink_interp.tasks import BigramBackcopy
        >>> task = BigramBackcopy(n_vocab=16, source="random", seq_len=16)
        >>> lab = build_model(preset("bb-kbias", seq_len=16, d_model=32, n_heads=2, d_mlp=64), task.d_vocab, task.tokenizer())
        >>> lab.bridge.cfg.n_layers, "model.sink_knobs.k_bias" in dict(lab.named)
        (2, True)
    """
    from .. import metrics as _metrics
    from ..architecture import register_attention_facts
    from ..models import LOADED_AS, bridge_class, quiet_loading, resolve_device

    hf, params = build_hf_model(cfg, d_vocab)
    named = list(hf.state_dict(keep_vars=True).items())  # before the bridge renames the modules
    norm_weights = [(layer.input_layernorm.weight, layer.post_attention_layernorm.weight) for layer in hf.model.layers]
    dev = resolve_device(device)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with quiet_loading():
        bridge = bridge_class().boot_transformers(
            f"sink-lab-{cfg.name}", hf_model=hf, tokenizer=tokenizer, device=str(dev), dtype=dtype
        )
        bridge = bridge.to(device=dev, dtype=dtype)
    runtime = KnobRuntime(bridge, cfg, params, norm_weights, NORM_EPS).attach()
    LOADED_AS[bridge] = f"sink-lab:{cfg.name}"
    att, other = runtime.knob_names()
    register_attention_facts(bridge, positional=cfg.pos, attention_knobs=att, other_knobs=other)
    register = getattr(_metrics, "register_score", None)
    if register is not None:
        register(bridge, cfg.metric_score)
    lab = LabModel(bridge=bridge, hf=hf, params=params, runtime=runtime, cfg=cfg, tokenizer=tokenizer, named=named)
    _LABS[bridge] = lab
    return lab


def lab_of(model: Any) -> LabModel | None:
    """The :class:`LabModel` behind a trained bridge (None for other models)."""
    return _LABS.get(model)


def trained_config(model: Any) -> TrainConfig | None:
    """The :class:`TrainConfig` a bridge was trained with (None for other models)."""
    lab = _LABS.get(model)
    return None if lab is None else lab.cfg


# --------------------------------------------------------------------------- export


def save_trained(lab: LabModel, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """Write a Hugging Face directory plus the knobs; :func:`load_trained` reads it back.

    The weights load into a plain ``LlamaForCausalLM``/``SmolLM3ForCausalLM``
    too (the knob parameters live in ``sink_knobs.pt``), which is exactly the
    trained model when the config uses no knob (softmax, pre-norm, RoPE/NoPE).
    An existing ``path`` is replaced only when it is an earlier save holding
    nothing else (:func:`replace_problem`); anything else raises
    ``FileExistsError`` and is left as it was.
    """
    import shutil
    import tempfile

    from .._internal.provenance import dumps, versions

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        state = lab.state_dict()
        knob_state = {k[len("model.sink_knobs.") :]: v for k, v in state.items() if k.startswith("model.sink_knobs.")}
        hf_state = {k: v for k, v in state.items() if not k.startswith("model.sink_knobs.")}
        from transformers import LlamaForCausalLM, SmolLM3ForCausalLM

        hc = _hf_config(lab.cfg, int(lab.bridge.cfg.d_vocab))
        cls = LlamaForCausalLM if lab.cfg.pos == "rope" else SmolLM3ForCausalLM
        clean = cls(hc)
        clean.load_state_dict(hf_state, strict=True)
        clean.config.architectures = [cls.__name__]
        from ..models import quiet_loading

        with quiet_loading():  # no "Writing model shards" progress bar
            clean.save_pretrained(str(tmp))
        lab.tokenizer.save_pretrained(str(tmp))
        torch.save(knob_state, tmp / "sink_knobs.pt")
        meta = {
            "format": FORMAT_VERSION,
            "train_config": lab.cfg.to_dict(),
            "versions": versions(),
            **(extra or {}),
            # what this save wrote (name, size, SHA-256): the only files a later save or --fresh may remove
            "files": files.manifest(tmp, [e.name for e in tmp.iterdir()]),
        }
        (tmp / MARKER).write_text(dumps(meta))
        problem = replace_problem(path, written={e.name for e in tmp.iterdir()})
        if problem:
            raise FileExistsError(f"{path} exists and {problem}; nothing was replaced; fix: move it away or choose another path")
        aside = None
        if path.exists():  # an earlier save (checked above): moved aside, then removed once the new one is in place
            aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, aside / path.name)
        os.replace(tmp, path)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


#: What a save wrote before saves recorded their files (sink_interp <= 0.x): exact names, and weight shards.
_OLD_SAVE_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "merges.txt",
        "model.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "chat_template.json",
        "sink_knobs.pt",
    }
)
_OLD_SHARD = re.compile(r"^model-[0-9]{5}-of-[0-9]{5}\.safetensors$")


def saved_files(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The files the save in ``path`` wrote, ``{name: record}`` from its :data:`MARKER` (None: a save that kept no record).

    A record is ``{"size", "sha256"}``; a save older than the records gives its known file names with record None.
    """
    p = Path(path)
    try:
        meta = json.loads((p / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    recorded = meta.get("files") if isinstance(meta, dict) else None
    if isinstance(recorded, dict):
        return recorded
    return {e.name: None for e in p.iterdir() if e.name in _OLD_SAVE_FILES or _OLD_SHARD.match(e.name)}


def _ours(path: Path, name: str, record: Any) -> bool:
    """Whether ``path/name`` is a file the save wrote and nobody changed since (records: same size and SHA-256)."""
    f = path / name
    if f.is_symlink() or not f.is_file():
        return False
    return record is None or files.unchanged(path, name, record)


def replace_problem(path: str | os.PathLike[str], written: set[str] | frozenset[str] = frozenset()) -> str | None:
    """Why :func:`save_trained` must not replace ``path`` (None: absent, empty, or a model it wrote, unchanged).

    A directory is replaced (or cleared by ``--fresh``) only when it carries :data:`MARKER` and holds
    nothing but the files that save recorded in it (name, size and SHA-256: a file changed since is the
    user's). A user's file or folder inside it is never deleted, whatever its name. ``written`` is kept
    for callers of older versions and not used.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_dir():
        return "is not a folder"
    names = sorted(e.name for e in path.iterdir())
    if not names:
        return None
    if not (path / MARKER).is_file():
        return f"is not a model directory sink_interp wrote (no {MARKER})"
    recorded = saved_files(path) or {}
    foreign = [n for n in names if n != MARKER and not (n in recorded and _ours(path, n, recorded[n]))]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        return f"holds {shown}, which its save did not write (or which changed since)"
    return None


def remove_save(path: str | os.PathLike[str]) -> bool:
    """Remove a save of ours file by file (only when :func:`replace_problem` finds nothing else); True when removed."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink() or replace_problem(path):
        return False
    for entry in list(path.iterdir()):  # names from the folder itself: a record never points outside it
        entry.unlink()
    path.rmdir()  # empty now: anything else would have been named by replace_problem
    return True


def is_trained_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path).expanduser() / MARKER).is_file()


def load_trained(path: str | os.PathLike[str], device: str | torch.device | None = "cpu") -> LabModel:
    """Load a directory written by :func:`save_trained` (or a run's ``model/``) with its knobs.

    Example:
        >>> import tempfile, torch
        >>> from sink_interp.training import preset, train
        >>> cfg = preset("bb-kbias", steps=1, eval_every=1, d_model=32, d_mlp=64, batch_size=2, probe_n=2, eval_batches=1)
        >>> lab = load_trained(train(cfg, tempfile.mkdtemp(), progress=False).model_dir)
        >>> lab.cfg.k_bias, lab.bridge(torch.tensor([[1, 5, 6, 7]]), return_type="logits").shape
        (True, torch.Size([1, 4, 68]))
    """
    from transformers import AutoTokenizer

    p = Path(path).expanduser()
    if not is_trained_dir(p):
        raise FileNotFoundError(
            f"{p} is not a trained sink_interp model directory (no {MARKER}); train one with sink-interp train"
        )
    fix = "train the run again, or copy the model folder again from where it was trained"
    meta = files.read_json(p / MARKER, fix=fix)
    try:
        cfg = TrainConfig.from_dict(meta["train_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{p / MARKER} does not hold a valid train_config ({_first_line(e)}); fix: {fix}") from None
    hf_cfg = files.read_json(p / "config.json", fix=fix)
    vocab = hf_cfg.get("vocab_size")
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1:
        raise ValueError(f"{p / 'config.json'} has vocab_size {vocab!r}, not a whole number >= 1; fix: {fix}")
    try:
        tok = AutoTokenizer.from_pretrained(str(p))
    except Exception as e:  # noqa: BLE001 - a damaged tokenizer file: one line naming the folder
        raise ValueError(f"the tokenizer files in {p} do not load ({type(e).__name__}: {_first_line(e)}); fix: {fix}") from None
    lab = build_model(cfg, vocab, tok, device=device)
    state: dict[str, Tensor] = {}
    for f in files.weight_files(p):  # the index's files, else model.safetensors: never any other *.safetensors
        state.update(files.load_tensors(f))
    if cfg.tie_embeddings and "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    knobs = files.torch_load(p / "sink_knobs.pt", fix=fix)
    if not isinstance(knobs, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in knobs.items()):
        raise ValueError(f"{p / 'sink_knobs.pt'} does not hold the knobs' tensors by name; fix: {fix}")
    state.update({f"model.sink_knobs.{k}": v for k, v in knobs.items()})
    names = {n for n, _ in lab.named}
    state = {k: v for k, v in state.items() if k in names}
    try:
        lab.load_state_dict(state)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"the weights in {p} do not fit its config ({_first_line(e)}); fix: {fix}") from None
    lab.bridge.eval()
    return lab


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _load_bridge(path: Path, device: torch.device) -> Any:
    return load_trained(path, device=device).bridge


register_folder_loader(MARKER, _load_bridge)  # load_model(folder) restores the knobs of a trained model
