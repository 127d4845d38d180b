"""sink_interp: find, explain and switch off attention sinks in language models.

Examples:
    >>> from sink_interp import load_model, probe_tokens, measure_sinks
    >>> model = load_model("tiny-gqa")
    >>> report = measure_sinks(model, probe_tokens(model, "random", n=4, length=16), progress=False)
    >>> report.alpha.shape
    (4, 2, 4, 16)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._internal import providers as _providers

__version__ = "0.1.0"

#: public name -> the submodule that defines it. Nothing heavy is imported by ``import sink_interp``: torch,
#: transformers and pandas load with the first name you use, so the command line answers ``--help`` at once.
_EXPORTS: dict[str, str] = {
    "distributed": "_internal.distributed",
    "load_report": "_internal.report",
    "describe_attention": "architecture",
    "NonFiniteError": "capture",
    "ProbeSet": "data",
    "probe_tokens": "data",
    "EffectReport": "effects",
    "compare": "effects",
    "scan_heads": "effects",
    "FitSettings": "fit",
    "fit_bias": "fit",
    "AblateDims": "interventions",
    "AttentionKernel": "interventions",
    "Calibrate": "interventions",
    "Intervention": "interventions",
    "KVBias": "interventions",
    "MaskKey": "interventions",
    "ScaleAttention": "interventions",
    "SinkLogit": "interventions",
    "StreamingWindow": "interventions",
    "ZeroValue": "interventions",
    "intervene": "interventions",
    "sink_heads": "interventions",
    "LongContextReport": "longctx",
    "long_context_sinks": "longctx",
    "AttentionMask": "masks",
    "MassiveReport": "massive",
    "massive_activations": "massive",
    "SinkReport": "metrics",
    "measure_sinks": "metrics",
    "sink_summary": "metrics",
    "known_models": "models",
    "load_model": "models",
    "tiny_model": "models",
    "build_report": "pages",  # orchestration: runs the model, then the views
    "show_attention": "pages",
    "PatchReport": "patching",
    "patch_heads": "patching",
    "patch_sink": "patching",
    "sink_circuit": "circuits",
    "StreamReport": "streaming",
    "long_tokens": "streaming",
    "streaming_ppl": "streaming",
    "TraceReport": "trace",
    "trace_sink": "trace",
    "TrainConfig": "training",
    "TrainResult": "training",
    "load_trained": "training",
    "preset": "training",
    "train": "training",
}

# Registries of the lower layers that upper modules fill, imported the first time each is read (the lower
# layers never import them): the views register how each report draws itself, the training package how
# load_model reads a trained run's folder, the analyses their report classes (for load_report).
_providers.PROVIDERS.update(
    views=[f"{__name__}.views"],
    folder_loaders=[f"{__name__}.training.model"],
    # load_report finds a report's class by name: the modules that define report classes
    reports=[
        f"{__name__}.{m}"
        for m in (
            "metrics",
            "massive",
            "effects",
            "patching",
            "circuits",
            "streaming",
            "longctx",
            "fit",
            "trace",
            "training.loop",
        )
    ]
    + [f"{__name__}.{m}" for m in ("quant", "kvcache", "outliers")],  # sinks in practice (from sink_interp.quant import kv_quant)
)

if TYPE_CHECKING:  # what static tools (type checkers, the API reference) see
    from ._internal.distributed import distributed
    from ._internal.report import load_report
    from .architecture import describe_attention
    from .capture import NonFiniteError
    from .circuits import sink_circuit
    from .data import ProbeSet, probe_tokens
    from .effects import EffectReport, compare, scan_heads
    from .fit import FitSettings, fit_bias
    from .interventions import (
        AblateDims,
        AttentionKernel,
        Calibrate,
        Intervention,
        KVBias,
        MaskKey,
        ScaleAttention,
        SinkLogit,
        StreamingWindow,
        ZeroValue,
        intervene,
        sink_heads,
    )
    from .longctx import LongContextReport, long_context_sinks
    from .masks import AttentionMask
    from .massive import MassiveReport, massive_activations
    from .metrics import SinkReport, measure_sinks, sink_summary
    from .models import known_models, load_model, tiny_model
    from .pages import build_report, show_attention
    from .patching import PatchReport, patch_heads, patch_sink
    from .streaming import StreamReport, long_tokens, streaming_ppl
    from .trace import TraceReport, trace_sink
    from .training import TrainConfig, TrainResult, load_trained, preset, train

# The public names, by task. Everything else lives in its submodule: the hook engine in
# sink_interp.capture, the views in sink_interp.views, the model facts in sink_interp.models and
# sink_interp.architecture, training tasks in sink_interp.tasks, tiny checkpoints in sink_interp.models (tiny_checkpoint).
__all__ = [
    # load a model and make probe inputs
    "load_model", "tiny_model", "known_models", "probe_tokens", "long_tokens", "ProbeSet",
    # measure and explain sinks
    "measure_sinks", "SinkReport", "sink_summary", "massive_activations", "MassiveReport", "trace_sink", "TraceReport",
    "long_context_sinks", "LongContextReport", "describe_attention",
    # intervene and compare
    "intervene", "Intervention", "ZeroValue", "MaskKey", "ScaleAttention", "Calibrate", "AblateDims",
    "KVBias", "SinkLogit", "AttentionKernel", "StreamingWindow", "AttentionMask", "sink_heads",
    "compare", "scan_heads", "EffectReport", "fit_bias", "FitSettings", "streaming_ppl", "StreamReport",
    # patch heads between a clean and a corrupted input
    "patch_heads", "patch_sink", "PatchReport",
    # the circuit (heads, MLPs, residual paths) behind a sink
    "sink_circuit",
    # train tiny models
    "train", "preset", "TrainConfig", "TrainResult", "load_trained",
    # look, save, load
    "build_report", "show_attention", "load_report", "NonFiniteError",
    # shard the samples over torch.distributed ranks
    "distributed",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value  # later lookups are plain attribute reads
        return value
    raise AttributeError(f"module 'sink_interp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
