"""Generate tutorials/*.ipynb from the jupytext sources tutorials/*.py, with an Open-in-Colab badge.

    python scripts/build_tutorials.py            # convert and execute (outputs are kept in the .ipynb)
    python scripts/build_tutorials.py --no-exec  # convert only
    python scripts/build_tutorials.py --text-only  # copy edited markdown into the .ipynb, keep its outputs
                                                   # (refused when a code cell changed)

The .py files are the sources; edit them, then rerun this script. tests/test_tutorials.py checks
that each .ipynb holds the same code as its .py and executes every tutorial offline.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPO = "sink-interp/sink_interp"  # GitHub owner/name used by the Colab badges


def colab_badge(name: str) -> str:
    url = f"https://colab.research.google.com/github/{REPO}/blob/main/tutorials/{name}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def to_notebook(src: Path):
    import jupytext
    import nbformat

    nb = jupytext.read(src)
    badge = nbformat.v4.new_markdown_cell(colab_badge(src.with_suffix(".ipynb").name))
    badge.metadata["tags"] = ["colab-badge"]
    nb.cells.insert(0, badge)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    return nb


def execute(nb, cwd: Path, timeout: int = 900, env: dict | None = None):
    import os

    from nbclient import NotebookClient

    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return nb


BUNDLE = re.compile(r'<script data-si="circuitsvis-bundle">.*?</script>', re.S)


def one_bundle(nb) -> int:
    """Keep the CircuitsVis bundle in the first output that inlines it and drop later copies (one per notebook).

    Outputs of one notebook share a page in Jupyter, so later widgets draw from the first copy;
    Colab re-runs cells, and each fresh output inlines its own. Returns the number of copies dropped.
    """
    seen, dropped = False, 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data") or {}
            html = data.get("text/html")
            if html is None:
                continue
            text = "".join(html) if isinstance(html, list) else html
            n = len(BUNDLE.findall(text))
            if not n:
                continue
            if seen:
                text, dropped = BUNDLE.sub("", text), dropped + n
            else:
                first = BUNDLE.search(text)
                text = text[: first.end()] + BUNDLE.sub("", text[first.end() :])
                seen, dropped = True, dropped + n - 1
            data["text/html"] = text
    return dropped


def main(argv=None) -> int:
    import nbformat

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help="tutorial sources (default: all tutorials/*.py)")
    p.add_argument("--no-exec", action="store_true")
    p.add_argument("--text-only", action="store_true", help="update markdown cells only; the code must be unchanged")
    args = p.parse_args(argv)
    sources = [Path(n).resolve() for n in args.names] or sorted((ROOT / "tutorials").glob("[0-9]*.py"))
    for src in sources:
        nb = to_notebook(src)
        if args.text_only:
            old = nbformat.read(src.with_suffix(".ipynb"), as_version=4)
            if [(c.cell_type, c.source) for c in old.cells if c.cell_type == "code"] != [
                (c.cell_type, c.source) for c in nb.cells if c.cell_type == "code"
            ] or len(old.cells) != len(nb.cells):
                print(f"{src.name}: code or cell layout changed; rebuild it without --text-only", file=sys.stderr)
                return 1
            for new, cell in zip(nb.cells, old.cells):
                if cell.cell_type == "markdown":
                    cell.source = new.source
            nb = old
        elif not args.no_exec:
            print(f"executing {src.name} ...", flush=True)
            execute(nb, src.parent)
        one_bundle(nb)
        out = src.with_suffix(".ipynb")
        nbformat.write(nb, out)
        print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
