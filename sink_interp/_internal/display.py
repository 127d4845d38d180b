"""How a report reaches its view without importing the view layer.

The view layer (:mod:`sink_interp.views.adapters`) registers one drawing
function per report class name; a report's ``_repr_html_`` asks here. The
analyses import only this module, never :mod:`sink_interp.views`, so the view
layer can sit above them. The package names the module that fills the registry
(:mod:`sink_interp._internal.providers`); it is imported the first time a view
is looked up, so a report finds its view however it was made.

Example:
    >>> from sink_interp._internal import display
    >>> class Thing:
    ...     def _repr_html_(self):
    ...         return display.html_of(self, fallback=lambda: "<p>no view</p>")
    >>> Thing()._repr_html_()
    '<p>no view</p>'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import providers

#: report class name -> ``fn(report, **kw)`` returning an object with ``_repr_html_`` (a view)
REGISTRY: dict[str, Callable[..., Any]] = {}


def register_view(type_name: str, fn: Callable[..., Any]) -> None:
    """Draw objects whose class (or a base class) is named ``type_name`` with ``fn(obj, **kw)``."""
    REGISTRY[type_name] = fn


def view_fn(obj: Any) -> Callable[..., Any] | None:
    """The drawing function registered for ``obj``'s class or the nearest base class; None when there is none."""
    providers.load("views")
    for cls in type(obj).__mro__:
        if cls.__name__ in REGISTRY:
            return REGISTRY[cls.__name__]
    return None


def view_of(obj: Any, **kw: Any) -> Any:
    """The view of ``obj`` (``LookupError`` when no view is registered for its class)."""
    fn = view_fn(obj)
    if fn is None:
        raise LookupError(f"no view registered for {type(obj).__name__}; known: {sorted(REGISTRY)}")
    return fn(obj, **kw)


def html_of(obj: Any, fallback: Callable[[], str | None] | None = None, **kw: Any) -> str | None:
    """HTML of ``obj``'s view; ``fallback()`` when no view is registered (``LookupError`` without one)."""
    if fallback is not None and view_fn(obj) is None:
        return fallback()
    return view_of(obj, **kw)._repr_html_()
