"""sink_interp: find, explain and switch off attention sinks in language models.

Example:
    >>> from sink_interp import load_model, probe_tokens, measure_sinks
    >>> model = load_model("tiny-gqa")
    >>> report = measure_sinks(model, probe_tokens(model, "random", n=4, length=16), progress=False)
    >>> report.alpha.shape
    (4, 2, 4, 16)
"""

from .capture import Keep, Reduce, Reducer, attach_hooks, hook_snapshot, run_reducers
from .data import probe_tokens
from .longctx import LongContextReport, long_context_sinks
from .masks import AttentionMask
from .metrics import SinkReport, measure_sinks, sink_alpha
from .models import ModelInfo, known_models, load_model, model_info, tiny_model

__version__ = "0.1.0"

__all__ = [
    "AttentionMask",
    "Keep",
    "LongContextReport",
    "ModelInfo",
    "Reduce",
    "Reducer",
    "SinkReport",
    "attach_hooks",
    "hook_snapshot",
    "known_models",
    "load_model",
    "long_context_sinks",
    "measure_sinks",
    "model_info",
    "probe_tokens",
    "run_reducers",
    "sink_alpha",
    "tiny_model",
]
