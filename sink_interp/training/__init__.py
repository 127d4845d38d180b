"""Train small models with the paper's knobs and watch attention sinks emerge.

    >>> from sink_interp.training import preset, train
    >>> cfg = preset("bb-softmax", steps=1000)          # doctest: +SKIP
    >>> result = train(cfg, "runs/bb-softmax")          # doctest: +SKIP
    >>> result.final["sink_rate"]                       # doctest: +SKIP

Modules: :mod:`.config` (``TrainConfig``, presets), :mod:`.model` (Llama-style
models behind a ``TransformerBridge``), :mod:`.knobs` (the knobs as hooks),
:mod:`.evaluate` (sink / value-drain / residual-peak statistics),
:mod:`.loop` (``train``), :mod:`.reproduce` (the paper's findings).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: name -> submodule; imported on first use, so ``sink_interp.training.config`` (the presets the command line
#: lists in its help) loads without torch
_EXPORTS = {
    **dict.fromkeys(["PRESETS", "TrainConfig", "preset", "preset_table"], "config"),
    "probe_stats": "evaluate",
    **dict.fromkeys(["KnobParams", "KnobRuntime", "allowed_mask", "runtime_of"], "knobs"),
    **dict.fromkeys(["RunDirError", "TrainResult", "make_sampler", "make_task", "read_metrics", "train"], "loop"),
    **dict.fromkeys(["LabModel", "build_model", "lab_of", "load_trained", "save_trained", "trained_config"], "model"),
}

if TYPE_CHECKING:
    from .config import PRESETS, TrainConfig, preset, preset_table
    from .evaluate import probe_stats
    from .knobs import KnobParams, KnobRuntime, allowed_mask, runtime_of
    from .loop import RunDirError, TrainResult, make_sampler, make_task, read_metrics, train
    from .model import LabModel, build_model, lab_of, load_trained, save_trained, trained_config


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "KnobParams",
    "KnobRuntime",
    "LabModel",
    "PRESETS",
    "RunDirError",
    "TrainConfig",
    "TrainResult",
    "allowed_mask",
    "build_model",
    "lab_of",
    "load_trained",
    "make_sampler",
    "make_task",
    "preset",
    "preset_table",
    "probe_stats",
    "read_metrics",
    "runtime_of",
    "save_trained",
    "train",
    "trained_config",
]
