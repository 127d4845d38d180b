"""sink_interp: find, explain and switch off attention sinks in language models.

Examples:
    >>> from sink_interp import load_model, probe_tokens, measure_sinks
    >>> model = load_model("tiny-gqa")
    >>> report = measure_sinks(model, probe_tokens(model, "random", n=4, length=16), progress=False)
    >>> report.alpha.shape
    (4, 2, 4, 16)
"""

from . import pages as _pages
from . import views as _views
from ._internal.report import load_report
from .architecture import AttentionSpec, describe_attention
from .capture import Keep, NonFiniteError, Reduce, Reducer, attach_hooks, hook_snapshot, run_reducers
from .data import probe_tokens
from .effects import Effect, EffectReport, compare, scan_heads
from .fit import FitReport, fit_bias
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
from .metrics import SinkReport, measure_sinks, sink_alpha
from .models import ModelInfo, known_models, load_model, model_info, tiny_model
from .pages import build_report, show_attention  # orchestration: runs the model, then the views
from .patching import PatchReport, patch_heads, patch_sink
from .streaming import StreamReport, long_tokens, streaming_ppl
from .tasks import BigramBackcopy, TextCorpus
from .trace import TraceReport, trace_sink
from .training import TrainConfig, TrainResult, load_trained, preset, train
from .views import (  # also fills the registry through which reports find their views
    View,
    alpha_tokens_view,
    attention_view,
    concat,
    effect_bars,
    head_heatmap,
    key_manifold_view,
    massive_activation_view,
    training_curves,
    view_for,
)
from .zoo import tiny_checkpoint

# Names that lived in sink_interp.views before the pages that run a model moved up to sink_interp.pages:
# the old import paths keep working (views itself imports nothing from above it).
for _name in ("build_report", "show_attention", "attention_patterns_for", "layout_report", "ReportContext", "REPORT_SECTIONS"):
    setattr(_views, _name, getattr(_pages, _name))
del _name

__version__ = "0.1.0"

__all__ = [
    "AblateDims",
    "AttentionKernel",
    "AttentionMask",
    "AttentionSpec",
    "BigramBackcopy",
    "Calibrate",
    "Effect",
    "EffectReport",
    "FitReport",
    "Intervention",
    "KVBias",
    "Keep",
    "LongContextReport",
    "MaskKey",
    "MassiveReport",
    "ModelInfo",
    "NonFiniteError",
    "PatchReport",
    "Reduce",
    "Reducer",
    "ScaleAttention",
    "SinkLogit",
    "SinkReport",
    "StreamReport",
    "StreamingWindow",
    "TextCorpus",
    "TraceReport",
    "TrainConfig",
    "TrainResult",
    "View",
    "ZeroValue",
    "alpha_tokens_view",
    "attach_hooks",
    "attention_view",
    "build_report",
    "compare",
    "concat",
    "describe_attention",
    "effect_bars",
    "fit_bias",
    "head_heatmap",
    "hook_snapshot",
    "intervene",
    "key_manifold_view",
    "known_models",
    "load_model",
    "load_report",
    "load_trained",
    "long_context_sinks",
    "long_tokens",
    "massive_activation_view",
    "massive_activations",
    "measure_sinks",
    "model_info",
    "patch_heads",
    "patch_sink",
    "preset",
    "probe_tokens",
    "run_reducers",
    "scan_heads",
    "show_attention",
    "sink_alpha",
    "sink_heads",
    "streaming_ppl",
    "tiny_checkpoint",
    "tiny_model",
    "trace_sink",
    "train",
    "training_curves",
    "view_for",
]
