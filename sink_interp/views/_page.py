"""Views that render inline in Jupyter/Colab and save as standalone offline HTML.

A :class:`View` is a tree of HTML fragments, CircuitsVis widgets and other
views. Rendering it emits, once per page (or once per notebook output):

* a small style sheet scoped to ``.si-root``;
* a small script for hover read-outs (our own, no CDN);
* if the tree holds any CircuitsVis widget: the CircuitsVis bundle from the
  installed wheel (``circuitsvis/dist/cdn/iife.js``) inlined ONE time, then a
  loop that draws every widget from its JSON props.

Nothing is fetched from the network, and rendering makes no network call
(CircuitsVis' own ``_repr_html_`` probes google.com on every render; we do not
use it). Widget props are JSON in ``<script type="application/json">`` with
``<``, ``>`` and ``&`` written as ``\\u003c`` etc., so no data can close the
script; token strings are made HTML-safe with :func:`safe_token` (CircuitsVis
inserts them with ``innerHTML``).
"""

from __future__ import annotations

import html
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Union

from .._internal.provenance import to_jsonable, write_atomic

CV_COMPONENTS = (
    "AttentionHeads",
    "AttentionPattern",
    "AttentionPatterns",
    "ColoredTokens",
    "ColoredTokensMulti",
)


def esc(text: Any) -> str:
    """HTML-escape any value (quotes included)."""
    return html.escape(str(text), quote=True)


def safe_token(token: str) -> str:
    """A token string that is safe as HTML and still readable as canvas text.

    CircuitsVis inserts token strings with ``innerHTML`` in its token lists
    (``"<bos>"`` would vanish as an unknown tag, ``"<img onerror=...>"`` would
    run) but draws the same strings as plain text on its canvas axes, where
    ``&lt;`` would show literally. So ``<`` and ``>`` are replaced by the
    look-alikes ``‹`` and ``›``. (``&`` cannot open a tag and is kept; a token
    spelled like an entity, e.g. ``"&lt;"``, shows decoded in the token lists.)

    Example:
        >>> safe_token("<bos>")
        '‹bos›'
        >>> safe_token("a & b")
        'a & b'
    """
    return str(token).replace("<", "\u2039").replace(">", "\u203a")


def json_for_html(obj: Any) -> str:
    """JSON text that can sit inside ``<script>`` (no ``</script>``, no ``<!--``).

    Example:
        >>> json_for_html({"t": "</script><b>"})
        '{"t":"\\\\u003c/script\\\\u003e\\\\u003cb\\\\u003e"}'
    """
    text = json.dumps(to_jsonable(obj), separators=(",", ":"), ensure_ascii=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def circuitsvis_bundle_path() -> Path:
    """Path of the CircuitsVis browser bundle shipped in the installed wheel."""
    try:
        import circuitsvis
    except ImportError as e:  # pragma: no cover - circuitsvis is a hard dependency
        raise ImportError("the attention views need circuitsvis; fix: pip install circuitsvis") from e
    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.is_file():  # pragma: no cover
        raise FileNotFoundError(
            f"the CircuitsVis bundle {path} is missing from the installed wheel; fix: pip install --force-reinstall circuitsvis"
        )
    return path


@lru_cache(maxsize=1)
def circuitsvis_bundle() -> str:
    """The CircuitsVis bundle, made safe to inline in a ``<script>`` element.

    ``</script`` inside the bundle (it occurs in a string literal) becomes
    ``<\\/script``, which is the same string to JavaScript.
    """
    js = circuitsvis_bundle_path().read_text(encoding="utf-8")
    js = js.replace("</script", "<\\/script").replace("<!--", "<\\!--")
    # drop the source-map comment: the map is not shipped with the page
    js = js.replace("//# sourceMappingURL=iife.js.map", "")
    return js


def circuitsvis_version() -> str:
    try:
        from importlib import metadata

        return metadata.version("circuitsvis")
    except Exception:  # pragma: no cover
        return "unknown"


# --------------------------------------------------------------------------- page assets
CSS = """
.si-root{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1d1d1f;line-height:1.4;font-size:14px}
.si-root *{box-sizing:border-box}
.si-root .si-fig{margin:14px 0 22px 0;padding:10px 14px 12px 14px;border:1px solid #e3e3e8;border-radius:8px;background:#fff;overflow-x:auto}
.si-root .si-fig>h3.si-title{margin:0 0 2px 0;font-size:16px;font-weight:600}
.si-root .si-caption{margin:0 0 8px 0;color:#55555c;font-size:13px}
.si-root .si-readout{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;color:#333;min-height:1.4em;margin-top:4px}
.si-root .si-row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.si-root .si-figrow{gap:0 16px;align-items:stretch}
.si-root .si-figrow>.si-fig{flex:1 1 440px}
.si-root .si-panel{flex:0 0 auto}
.si-root .si-panel>h4{margin:4px 0 2px 0;font-size:13px;font-weight:600}
.si-root svg text{font-family:inherit}
.si-root svg .si-cell:hover,.si-root svg .si-pt:hover,.si-root svg .si-bar:hover{stroke:#000;stroke-width:1.5}
.si-root svg .si-hl{stroke:#000;stroke-width:2}
.si-root table.si-table{border-collapse:collapse;font-size:13px;margin:4px 0}
.si-root table.si-table th,.si-root table.si-table td{border-bottom:1px solid #e6e6ea;padding:3px 10px;text-align:right}
.si-root table.si-table th{background:#f5f5f7;font-weight:600}
.si-root table.si-table td:first-child,.si-root table.si-table th:first-child{text-align:left}
.si-root .si-numbers{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0}
.si-root .si-number{border:1px solid #e3e3e8;border-radius:6px;padding:6px 12px;background:#fafafc;min-width:120px}
.si-root .si-number b{display:block;font-size:20px}
.si-root .si-number span{color:#55555c;font-size:12px}
.si-root .si-fig[data-kind="pending"]{border:2px dashed #c9a227;background:#fffbea}
.si-root .si-error{color:#b00020;font-weight:600}
.si-root .si-cv{min-height:60px;max-width:820px}
.si-root svg .si-cell{stroke:#fff;stroke-width:.5}
.si-root .si-meta{font-size:12px;color:#444}
.si-root .si-meta td,.si-root .si-meta th{text-align:left!important}
.si-root h2.si-section{font-size:19px;margin:26px 0 4px 0;padding-bottom:3px;border-bottom:2px solid #e3e3e8}
.si-root p.si-intro{margin:2px 0 8px 0;color:#333;max-width:980px}
.si-root .si-note{font-size:12px;color:#666}
.si-root .si-chain{display:flex;flex-wrap:wrap;align-items:stretch;gap:6px}
.si-root .si-link{flex:0 1 190px;border:1px solid #d8d8e0;border-radius:6px;padding:6px 8px;background:#fafafc;font-size:13px}
.si-root .si-link h4{margin:0;font-size:13px}
.si-root .si-link p{margin:0 0 4px 0}
.si-root .si-arrow{align-self:center;font-size:20px;color:#888}
"""

# Hover read-outs: a mark (.si-cell / .si-bar / .si-pt / .si-edge / .si-node) carries its text in an SVG <title>
# (the browser's own tooltip, also without JavaScript); hovering or clicking it also writes the
# text into its figure's .si-readout line. One document-level listener, registered once.
HOVER_JS = """
(function(){if(window.__siHover)return;window.__siHover=true;
function show(ev){var t=ev.target;if(!t||!t.closest)return;var c=t.closest('.si-cell,.si-bar,.si-pt,.si-edge,.si-node');if(!c)return;
var f=c.closest('.si-fig');var o=f&&f.querySelector('.si-readout');var tt=c.querySelector('title');
if(o&&tt)o.textContent=tt.textContent;}
document.addEventListener('mouseover',show);document.addEventListener('click',show);})();
"""

# Draw the CircuitsVis widgets. Each one costs ~1 s of main-thread time in headless Chromium
# (React + chart.js + tfjs), so a widget is drawn when it comes near the viewport: the page is
# readable at once and the widget is ready by the time one scrolls to it. window.siDrawAll()
# draws everything (also before printing). Several outputs may share one document: each widget
# is drawn once (data-si-done).
BOOT_JS = """
(function(){
function draw(el){if(el.getAttribute('data-si-done'))return;el.setAttribute('data-si-done','1');
try{var C=window.CircuitsVis;if(!C)throw new Error('the CircuitsVis bundle did not load');
var props=JSON.parse(el.querySelector('script[type="application/json"]').textContent);
var mount=el.querySelector('.si-cv-mount');var comp=C[el.getAttribute('data-component')];
if(!comp)throw new Error('unknown CircuitsVis component '+el.getAttribute('data-component'));
C.render(mount.id,comp,props);}catch(e){var p=document.createElement('p');p.className='si-error';
p.textContent='This CircuitsVis widget could not be drawn: '+e;el.appendChild(p);}}
window.siDrawAll=function(){var a=document.querySelectorAll('div.si-cv');for(var i=0;i<a.length;i++)draw(a[i]);};
window.addEventListener('beforeprint',window.siDrawAll);
var els=document.querySelectorAll('div.si-cv:not([data-si-done]):not([data-si-watched])');
var io=('IntersectionObserver' in window)?new IntersectionObserver(function(es){es.forEach(function(e){
if(e.isIntersecting){io.unobserve(e.target);draw(e.target);}});},{rootMargin:'300px 0px'}):null;
for(var i=0;i<els.length;i++){els[i].setAttribute('data-si-watched','1');if(io)io.observe(els[i]);else draw(els[i]);}
})();
"""


# --------------------------------------------------------------------------- tree
@dataclass(frozen=True)
class Widget:
    """One CircuitsVis component with its props (drawn from the inlined bundle)."""

    component: str
    props: dict

    def __post_init__(self) -> None:
        if self.component not in CV_COMPONENTS:
            raise ValueError(f"component must be one of {CV_COMPONENTS}, got {self.component!r}")


Part = Union[str, Widget, "View"]


class _Ctx:
    def __init__(self) -> None:
        self.prefix = "si" + uuid.uuid4().hex[:10]
        self.count = 0

    def new_id(self) -> str:
        self.count += 1
        return f"{self.prefix}-{self.count}"


class View:
    """A figure or a group of figures.

    Shows itself inline in Jupyter and Colab (``_repr_html_``, no network
    probe) and saves to one standalone HTML file that works offline
    (:meth:`save`). Combine views with ``+`` or :func:`concat`; the page then
    carries the CircuitsVis bundle once, however many widgets it holds.

    Example:
        >>> import numpy as np
        >>> from sink_interp.views import head_heatmap
        >>> v = head_heatmap(np.random.rand(2, 4), title="demo")
        >>> "<svg" in v._repr_html_() and v.n_widgets == 0
        True
    """

    def __init__(
        self,
        parts: Iterable[Part] = (),
        *,
        title: str | None = None,
        caption: str | None = None,
        kind: str = "group",
        figure: bool = True,
        readout: bool = False,
        meta: dict[str, Any] | None = None,
    ):
        self.parts: list[Part] = list(parts)
        self.title = title
        self.caption = caption
        self.kind = kind
        self.figure = figure
        self.readout = readout
        self.meta = dict(meta or {})

    # ------------------------------------------------------------- structure
    def walk(self) -> Iterator[Part]:
        for p in self.parts:
            yield p
            if isinstance(p, View):
                yield from p.walk()

    @property
    def n_widgets(self) -> int:
        """How many CircuitsVis widgets the view holds."""
        return sum(isinstance(p, Widget) for p in self.walk())

    def __add__(self, other: View) -> View:
        if not isinstance(other, View):
            return NotImplemented
        return View([self, other], figure=False)

    # ------------------------------------------------------------- rendering
    def _body(self, ctx: _Ctx) -> str:
        out: list[str] = []
        for p in self.parts:
            if isinstance(p, str):
                out.append(p)
            elif isinstance(p, Widget):
                wid = ctx.new_id()
                out.append(
                    f'<div class="si-cv" data-component="{esc(p.component)}">'
                    f'<script type="application/json">{json_for_html(p.props)}</script>'
                    f'<div class="si-cv-mount" id="{wid}"></div></div>'
                )
            else:
                out.append(p._body(ctx))
        inner = "".join(out)
        if not self.figure:
            return inner
        head = ""
        if self.title:
            head += f'<h3 class="si-title">{esc(self.title)}</h3>'
        if self.caption:
            head += f'<p class="si-caption">{esc(self.caption)}</p>'
        tail = '<div class="si-readout">hover over the figure to read values</div>' if self.readout else ""
        return f'<figure class="si-fig" data-kind="{esc(self.kind)}" style="margin-left:0;margin-right:0">{head}{inner}{tail}</figure>'

    def _assets_and_body(self) -> tuple[str, str, str]:
        ctx = _Ctx()
        body = self._body(ctx)
        head = f"<style>{CSS}</style><script>{HOVER_JS}</script>"
        tail = ""
        if self.n_widgets:
            tail = (
                f'<script data-si="circuitsvis-bundle">{circuitsvis_bundle()}\n;window.CircuitsVis=CircuitsVis;</script>'
                f"<script>{BOOT_JS}</script>"
            )
        return head, body, tail

    def _repr_html_(self) -> str:
        """HTML for Jupyter/Colab: self-contained, offline, bundle inlined once (only if a widget needs it)."""
        head, body, tail = self._assets_and_body()
        return f'<div class="si-root">{head}{body}{tail}</div>'

    def __html__(self) -> str:
        return self._repr_html_()

    def to_html(self, title: str | None = None) -> str:
        """A complete standalone HTML document (no external resources)."""
        head, body, tail = self._assets_and_body()
        page_title = esc(title or self.title or "sink_interp")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            # belt and braces: the page may load nothing from the network
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            "script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; img-src data: blob:; font-src data:\">"
            f"<title>{page_title}</title>{head}</head>"
            f'<body style="margin:0;background:#f6f6f8"><div class="si-root" style="max-width:1180px;margin:0 auto;padding:12px 20px">'
            f"{body}</div>{tail}</body></html>\n"
        )

    def save(self, path: str | Path, title: str | None = None) -> Path:
        """Write :meth:`to_html` to ``path`` (atomically) and return the path."""
        return write_atomic(path, self.to_html(title=title))

    def __repr__(self) -> str:
        return f"<View {self.kind!r} title={self.title!r} widgets={self.n_widgets}>"


def concat(*views: View, title: str | None = None, caption: str | None = None) -> View:
    """Several views on one page (the CircuitsVis bundle is still inlined once).

    Example:
        >>> import numpy as np
        >>> from sink_interp.views import concat, head_heatmap
        >>> page = concat(head_heatmap(np.ones((2, 2))), head_heatmap(np.zeros((2, 2))), title="two maps")
        >>> page.kind
        'group'
    """
    for i, v in enumerate(views):
        if not isinstance(v, View):
            raise ValueError(f"concat takes View objects; argument {i} is a {type(v).__name__}")
    return View(list(views), title=title, caption=caption, figure=bool(title or caption))


def section(title: str, intro: str | None = None, parts: Iterable[Part] = (), *, anchor: str | None = None) -> View:
    """A report section: a heading, a short introduction and its figures."""
    a = f' id="{esc(anchor)}"' if anchor else ""
    head = f'<h2 class="si-section"{a}>{esc(title)}</h2>'
    if intro:
        head += f'<p class="si-intro">{esc(intro)}</p>'
    return View([head, *parts], figure=False, kind="section")


def html_table(
    rows: list[dict[str, Any]], columns: list[str] | None = None, *, fmt: dict[str, str] | None = None, cls: str = "si-table"
) -> str:
    """A small escaped HTML table from a list of dicts."""
    if not rows:
        return '<p class="si-note">(empty table)</p>'
    columns = columns or list(rows[0])
    fmt = fmt or {}

    def cell(col: str, v: Any) -> str:
        f = fmt.get(col)
        if f and isinstance(v, (int, float)) and not isinstance(v, bool):
            try:
                return esc(format(v, f))
            except (ValueError, TypeError):
                pass
        if isinstance(v, float):
            return esc(f"{v:.4g}")
        return esc(v)

    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(c, r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
