"""The documentation site builds offline with --strict, the API page lists every public name,
and every tutorial (a jupytext .py plus its generated .ipynb) is in sync and executes offline."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sink_interp

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9]*.py"))


def test_every_public_name_has_a_docstring_with_a_runnable_example():
    missing = [n for n in sink_interp.__all__ if ">>>" not in (inspect.getdoc(getattr(sink_interp, n)) or "")]
    assert not missing, f"public names without a '>>>' example in their docstring: {missing}"


@pytest.mark.slow
def test_mkdocs_build_strict_offline_lists_the_whole_api(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert res.returncode == 0, res.stdout + res.stderr
    api = (site / "api" / "index.html").read_text()
    for name in sink_interp.__all__:
        assert f'id="sink_interp.{name}"' in api, f"{name} missing from the API reference"
    for nb in TUTORIALS:
        assert (site / "tutorials" / nb.stem / "index.html").is_file(), f"tutorial {nb.stem} not rendered"
    # nothing in the built pages loads a script or stylesheet from the network
    for page in site.rglob("*.html"):
        text = page.read_text(errors="ignore")
        remote = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', text)
        assert not remote, f"{page.relative_to(site)} loads {remote}"
        # links between pages point at built pages, not at .md / .ipynb sources
        stale = [h for h in re.findall(r'href="([^"#:]+\.(?:md|ipynb))"', text) if not (page.parent / h).is_file()]
        assert not stale, f"{page.relative_to(site)} links to sources that are not in the site: {stale}"


@pytest.mark.parametrize("src", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_notebook_is_generated_from_its_source(src):
    jupytext = pytest.importorskip("jupytext")
    nbformat = pytest.importorskip("nbformat")
    ipynb = src.with_suffix(".ipynb")
    assert ipynb.is_file(), f"run: python scripts/build_tutorials.py {src.relative_to(ROOT)}"
    want = [c.source for c in jupytext.read(src).cells]
    nb = nbformat.read(ipynb, as_version=4)
    got = [c.source for c in nb.cells if "colab-badge" not in c.metadata.get("tags", [])]
    assert got == want, f"{ipynb.name} is stale; run: python scripts/build_tutorials.py {src.relative_to(ROOT)}"
    badge = nb.cells[0].source
    assert "colab.research.google.com/github/" in badge and f"tutorials/{ipynb.name}" in badge


#: seconds one cell may take: generous, because a machine shared with other jobs runs many times slower
CELL_TIMEOUT = 1800


@pytest.mark.slow
@pytest.mark.parametrize("src", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_executes_offline(src, tmp_path):
    pytest.importorskip("nbclient")
    from nbclient.exceptions import CellTimeoutError

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from build_tutorials import execute, to_notebook
    finally:
        sys.path.pop(0)
    work = tmp_path / src.parent.name
    shutil.copytree(src.parent, work)
    nb = to_notebook(work / src.name)
    try:
        execute(nb, work, timeout=CELL_TIMEOUT, env={"CI": "true", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"})
    except CellTimeoutError:  # a loaded machine, not a result: the cells that ran raised nothing
        pytest.skip(f"a cell of {src.name} ran past {CELL_TIMEOUT} s (a loaded machine; each takes under a minute alone)")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors[0].get("traceback") if errors else None
    if src.stem.startswith("01_"):
        _check_tutorial_1_matches_the_cli(nb)


def _check_tutorial_1_matches_the_cli(nb):
    """Tutorial 1 (as CI runs it: N=20) prints the Sink_1 that `sink-interp measure` prints with the same settings."""
    text = "".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream"
    )
    got = re.findall(r"Sink_1 = ([0-9.]+)%", text)
    assert got, "tutorial 1 no longer prints 'Sink_1 = ...%'"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    n = int(re.search(r"N = (\d+) if os.environ.get\(\"CI\"\)", code).group(1))
    cmd = [
        sys.executable,
        "-m",
        "sink_interp.cli",
        "measure",
        "--model",
        "smollm2-135m",
        "--data",
        "natural",
        "--n",
        str(n),
        "--length",
        "64",
        "--eps",
        "0.3",
        "--quiet",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr
    cli = re.search(r"Sink_1 = ([0-9.]+)%", res.stdout).group(1)
    assert got[0] == cli, f"tutorial 1 prints Sink_1 = {got[0]}%, `{' '.join(cmd[2:])}` prints {cli}%"


@pytest.mark.parametrize("src", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_headings_have_no_code_spans(src):
    """mkdocs-jupyter drops `code` from the site's table of contents ("7. One offline file:")."""
    bad = [line for line in src.read_text().splitlines() if re.match(r"# #+ ", line) and "`" in line]
    assert not bad, f"{src.name}: write these headings without backticks: {bad}"


@pytest.mark.parametrize("src", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_executed_notebook_inlines_the_circuitsvis_bundle_at_most_once(src):
    """Outputs share the notebook's page: one copy of the ~1 MB bundle serves every widget (scripts/build_tutorials.py)."""
    text = src.with_suffix(".ipynb").read_text(encoding="utf-8")
    assert text.count('data-si=\\"circuitsvis-bundle\\"') <= 1


def test_top_level_api_fits_on_one_screen_and_submodule_names_stay_there():
    """The top level holds what a study needs (one screen); the engine, views, model facts and tasks are imported
    from their submodules only (no moved-name shims at 0.1)."""
    assert len(sink_interp.__all__) <= 50 and len(set(sink_interp.__all__)) == len(sink_interp.__all__)
    assert not hasattr(sink_interp, "_MOVED")
    import importlib

    for name, module in {"sink_alpha": "metrics", "Reducer": "capture", "view_for": "views", "tiny_checkpoint": "models"}.items():
        assert hasattr(importlib.import_module(f"sink_interp.{module}"), name)
        with pytest.raises(AttributeError):
            getattr(sink_interp, name)
    with pytest.raises(AttributeError):
        sink_interp.no_such_name  # noqa: B018
