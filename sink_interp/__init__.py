"""sink_interp: find, explain and switch off attention sinks in language models.

Examples:
    >>> from sink_interp import load_model, probe_tokens, measure_sinks
    >>> model = load_model("tiny-gqa")
    >>> report = measure_sinks(model, probe_tokens(model, "random", n=4, length=16), progress=False)
    >>> report.alpha.shape
    (4, 2, 4, 16)
"""

from .capture import Keep, Reduce, Reducer, attach_hooks, hook_snapshot, run_reducers
from .data import probe_tokens
from .effects import Effect, EffectReport, FitReport, compare, fit_bias, scan_heads
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
)
from .metrics import SinkReport, measure_sinks, sink_alpha
from .streaming import StreamReport, long_tokens, streaming_ppl
from .models import ModelInfo, known_models, load_model, model_info, tiny_model
from .tasks import BigramBackcopy, TextCorpus
from .training import TrainConfig, TrainResult, load_trained, preset, train

__version__ = "0.1.0"

__all__ = [
    "BigramBackcopy",
    "AblateDims",
    "AttentionKernel",
    "Calibrate",
    "Effect",
    "EffectReport",
    "FitReport",
    "Intervention",
    "KVBias",
    "MaskKey",
    "ScaleAttention",
    "SinkLogit",
    "StreamReport",
    "StreamingWindow",
    "ZeroValue",
    "compare",
    "fit_bias",
    "intervene",
    "scan_heads",
    "streaming_ppl",
    "long_tokens",
    "Keep",
    "ModelInfo",
    "Reduce",
    "Reducer",
    "SinkReport",
    "TextCorpus",
    "TrainConfig",
    "TrainResult",
    "attach_hooks",
    "hook_snapshot",
    "known_models",
    "load_model",
    "load_trained",
    "measure_sinks",
    "model_info",
    "preset",
    "probe_tokens",
    "run_reducers",
    "sink_alpha",
    "tiny_model",
    "train",
]
