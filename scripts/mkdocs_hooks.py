"""MkDocs hook: build the API page from sink_interp.__all__ (tutorials come in through the docs/tutorials symlink)."""

from __future__ import annotations

def on_page_markdown(markdown, page, config, files):
    """Expand the API_REFERENCE marker into one mkdocstrings block per public name."""
    if "<!-- API_REFERENCE -->" not in markdown:
        return markdown
    import sink_interp

    blocks = [f"::: sink_interp.{name}\n" for name in sink_interp.__all__]
    return markdown.replace("<!-- API_REFERENCE -->", "\n".join(blocks))
