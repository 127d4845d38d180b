"""MkDocs hook: build the API page from sink_interp.__all__ (tutorials come in through the docs/tutorials symlink)."""

from __future__ import annotations


def on_page_markdown(markdown, page, config, files):
    """Expand the API_REFERENCE marker into one mkdocstrings block per public name."""
    if "<!-- API_REFERENCE -->" not in markdown:
        return markdown
    import sink_interp

    blocks = [f"::: sink_interp.{name}\n" for name in sink_interp.__all__]
    by_module: dict[str, list[str]] = {}
    for name, module in SUBMODULE_API.items():
        by_module.setdefault(module, []).append(name)
    for module in sorted(by_module):
        blocks.append(f"## `sink_interp.{module}`\n")
        blocks += [f"::: sink_interp.{module}.{name}\n" for name in by_module[module]]
    return markdown.replace("<!-- API_REFERENCE -->", "\n".join(blocks))


#: the building blocks the API page lists under their submodule (imported from there, not from the top level)
SUBMODULE_API = {
    "AttentionSpec": "architecture",
    "Keep": "capture",
    "Reduce": "capture",
    "Reducer": "capture",
    "attach_hooks": "capture",
    "add_hooks": "capture",
    "AttachedHooks": "capture",
    "hook_snapshot": "capture",
    "run_reducers": "capture",
    "Effect": "effects",
    "FitReport": "fit",
    "ModelInfo": "models",
    "model_info": "models",
    "sink_alpha": "metrics",
    "SinkSummary": "metrics",
    "LayerPipeline": "pipeline",
    "BigramBackcopy": "tasks",
    "TextCorpus": "tasks",
    "View": "views",
    "alpha_tokens_view": "views",
    "attention_view": "views",
    "concat": "views",
    "effect_bars": "views",
    "head_heatmap": "views",
    "key_manifold_view": "views",
    "massive_activation_view": "views",
    "training_curves": "views",
    "view_for": "views",
    "tiny_checkpoint": "models",
    # sinks in practice (docs/kvcache.md)
    **dict.fromkeys(["kv_policies", "KVEvict", "KVReport", "KVPolicy", "PriorityPolicy", "MaskPolicy"], "kvcache"),
    **dict.fromkeys(["kv_quant", "KVQuant", "QuantReport", "fake_quant"], "quant"),
    **dict.fromkeys(["activation_outliers", "find_prefix", "OutlierReport"], "outliers"),
}


def on_page_content(html, page, config, files):
    """Point a tutorial's repository-relative links at the site's pages.

    A notebook links ``02_trace_mechanism.ipynb`` or ``../training.md`` so the links work on
    GitHub and in Jupyter (``../docs/training.md`` from ``tutorials/``); mkdocs-jupyter renders
    each notebook as ``tutorials/<name>/index.html``, where those links need to be
    ``../02_trace_mechanism/`` and ``../../training/``.
    """
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    import re

    def fix(m):
        href = m.group(1)
        if "://" in href or href.startswith("#"):
            return m.group(0)
        path, _, anchor = href.partition("#")
        anchor = f"#{anchor}" if anchor else ""
        if path.endswith(".ipynb") and "/" not in path:
            return f'href="../{path[: -len(".ipynb")]}/{anchor}"'
        if path.endswith(".md"):
            target = path[: -len(".md")].replace("../docs/", "../", 1)
            target = target[: -len("index")] if target.endswith("index") else target + "/"
            return f'href="../{target}{anchor}"'
        return m.group(0)

    return re.sub(r'href="([^"]+)"', fix, html)
