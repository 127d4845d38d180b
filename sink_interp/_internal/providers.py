"""Registries of a lower layer that a higher module fills, and which module fills each.

The analyses never import the layers above them. Where a lower module keeps a registry that an
upper one fills when imported (the views register a drawing function per report class; the
training package registers the loader of its run folders), the package names the filling
module here (``sink_interp/__init__.py``), and the lower module calls :func:`load` before it
reads its registry. ``import sink_interp`` stays cheap, and a registry is full whenever it is
read, whichever names a user imported.

Example:
    >>> PROVIDERS.setdefault("example", []).append("json")
    >>> load("example")  # imports json once; later calls do nothing
    >>> PROVIDERS["example"]
    []
"""

from __future__ import annotations

import importlib

#: registry name -> modules still to import before it is read ("views", "folder_loaders")
PROVIDERS: dict[str, list[str]] = {}


def load(registry: str) -> None:
    """Import the modules that fill ``registry`` (each once)."""
    todo = PROVIDERS.get(registry, [])
    while todo:
        importlib.import_module(todo.pop(0))
