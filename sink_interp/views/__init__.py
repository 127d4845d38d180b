"""See sinks: CircuitsVis attention views, layer x head maps, massive-activation and key-manifold plots,
intervention bars, training curves and a standalone offline HTML report.

Every function returns a :class:`View`: it shows itself inline in Jupyter and
Colab (no network access, no CDN) and ``view.save("fig.html")`` writes one
standalone HTML file that works offline. Views combine with ``+`` or
:func:`concat`; a page carries the CircuitsVis bundle once.

Views are functions of arrays and of reports' plain data: they run no model
and import none of the analyses (reports find their view through
:mod:`sink_interp._internal.display`, which :mod:`.adapters` fills). Pages
that run a model first, ``build_report`` and ``show_attention``, are in
:mod:`sink_interp.pages`.

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
from .adapters import register_view, view_for
from .attention import (
    alpha_tokens_view,
    attention_view,
    token_strings,
)
from .figures import (
    effect_bars,
    head_heatmap,
    key_manifold_view,
    massive_activation_view,
    patch_heatmap,
    pca_2d,
    trace_chain_view,
    training_curves,
)
from .practice import kv_budget_view, outlier_map_view, quant_bits_view
from .report import (
    layer_rate_view,
    pending,
)

__all__ = [
    "View",
    "Widget",
    "alpha_tokens_view",
    "attention_view",
    "circuitsvis_bundle",
    "concat",
    "effect_bars",
    "head_heatmap",
    "kv_budget_view",
    "outlier_map_view",
    "quant_bits_view",
    "patch_heatmap",
    "json_for_html",
    "key_manifold_view",
    "layer_rate_view",
    "massive_activation_view",
    "pca_2d",
    "pending",
    "register_view",
    "safe_token",
    "section",
    "token_strings",
    "trace_chain_view",
    "training_curves",
    "view_for",
]
