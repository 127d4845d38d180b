"""See sinks: CircuitsVis attention views, layer x head maps, massive-activation and key-manifold plots,
intervention bars, training curves and a standalone offline HTML report.

Every function returns a :class:`View`: it shows itself inline in Jupyter and
Colab (no network access, no CDN) and ``view.save("fig.html")`` writes one
standalone HTML file that works offline. Views combine with ``+`` or
:func:`concat`; a page carries the CircuitsVis bundle once.

Example:
    >>> import numpy as np
    >>> from sink_interp.views import head_heatmap, training_curves, concat
    >>> page = concat(head_heatmap(np.random.rand(3, 4)), training_curves([{"step": 0, "val_loss": 3.0}]))
    >>> page.n_widgets
    0
"""

from ._page import (
    View,
    Widget,
    circuitsvis_bundle,
    concat,
    json_for_html,
    safe_token,
    section,
)
from .adapters import (
    ADAPTERS,
    effect_report_view,
    massive_report_view,
    register_view,
    trace_report_view,
    train_result_view,
    view_for,
)
from .attention import (
    alpha_from_pattern,
    alpha_tokens_view,
    attention_patterns_for,
    attention_view,
    find_sink_positions,
    show_attention,
    token_strings,
)
from .figures import (
    effect_bars,
    head_heatmap,
    key_manifold_view,
    massive_activation_view,
    pca_2d,
    read_metrics,
    trace_chain_view,
    training_curves,
)
from .report import (
    REPORT_SECTIONS,
    ReportContext,
    build_report,
    layer_rate_view,
    layout_report,
    pending,
    sink_report_html,
    sink_report_view,
)

__all__ = [
    "ADAPTERS",
    "REPORT_SECTIONS",
    "ReportContext",
    "View",
    "Widget",
    "alpha_from_pattern",
    "alpha_tokens_view",
    "attention_patterns_for",
    "attention_view",
    "build_report",
    "circuitsvis_bundle",
    "concat",
    "effect_bars",
    "effect_report_view",
    "find_sink_positions",
    "head_heatmap",
    "json_for_html",
    "key_manifold_view",
    "layer_rate_view",
    "layout_report",
    "massive_activation_view",
    "massive_report_view",
    "pca_2d",
    "pending",
    "read_metrics",
    "register_view",
    "safe_token",
    "section",
    "show_attention",
    "sink_report_html",
    "sink_report_view",
    "token_strings",
    "trace_chain_view",
    "trace_report_view",
    "train_result_view",
    "training_curves",
    "view_for",
]
