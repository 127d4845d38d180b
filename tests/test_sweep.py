"""Sweeps: plan -> run one -> tabulate gives the one-call `reproduce` table, whatever runs the list; runs resume."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from sink_interp._internal.errors import MissingDependencyError
from sink_interp._internal.executors import map_jobs
from sink_interp.cli import main
from sink_interp.training import read_metrics, train
from sink_interp.training.reproduce import Plan, plan, reproduce, run_one, tabulate

SMALL = dict(d_model=32, d_mlp=64, seq_len=16, batch_size=4, eval_batches=1, probe_n=4, bb_vocab=16, ckpt_every=2, eval_every=2)
NAMES = ["lr", "window"]  # 4 runs, one shared; window has measurements read from the models
SEEDS = [0]
STEPS = 4


def rows(table) -> list[dict]:
    return [{k: v for k, v in r.__dict__.items()} for r in table.rows]


def metrics_of(root: Path) -> dict[str, list[dict]]:
    return {d.name: read_metrics(d) for d in sorted((root / "runs").iterdir())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The one-call reproduce, in this process one run after the other."""
    root = tmp_path_factory.mktemp("ref")
    return root, reproduce(NAMES, out=root, steps=STEPS, overrides=SMALL, seeds=SEEDS, progress=False)


def test_plan_numbers_runs_once_each_with_relative_folders():
    p = plan(NAMES, steps=STEPS, overrides=SMALL, seeds=SEEDS)
    assert [s.labels for s in p] == [("lr/base@0", "window/base@0"), ("lr/small_lr@0",), ("window/small@0",), ("window/half@0",)]
    assert [s.index for s in p] == [0, 1, 2, 3]
    assert all(s.dir.startswith("runs/") and not Path(s.dir).is_absolute() for s in p)
    assert set(p.uses("window")) == {"base", "small", "half"} and p.uses("window")["base"] is p[0]
    assert p[0].measures == ("window:8", "window:32") and p[1].measures == ()
    assert Plan.from_json(p.to_json()) == p  # the file round trip keeps every config exactly
    assert p[1].config.fingerprint() in p[1].dir and p[1].config.steps == STEPS


def test_split_run_killed_and_resumed_equals_one_call(reference, tmp_path):
    ref_root, ref = reference
    root = tmp_path / "split"
    p = plan(NAMES, steps=STEPS, overrides=SMALL, seeds=SEEDS, out=root)
    assert json.loads((root / "plan.json").read_text())["findings"] == NAMES
    # run 0 is killed after step 2 (its checkpoint written), then resumed by run_one; the others run in reverse order
    train(p[0].config, root / p[0].dir, stop_at=2, progress=False)
    assert [m["step"] for m in read_metrics(root / p[0].dir)] == [0, 2]
    with pytest.raises(ValueError, match=r"4 of 4 runs .* not finished \(plan index 0, 1, 2, 3\).*--run-one INDEX"):
        tabulate(root)
    assert not (root / "reproduce.json").exists()
    for i in (3, 2, 1, 0):
        assert run_one(i, root, progress=False) == p[i].dir
    before = (root / p[0].dir / "metrics.jsonl").stat().st_mtime_ns
    assert run_one(p[0], root, progress=False) == p[0].dir  # idempotent: a finished run is left alone
    assert (root / p[0].dir / "metrics.jsonl").stat().st_mtime_ns == before
    table = tabulate(root)
    assert metrics_of(root) == metrics_of(ref_root)  # every evaluation of every run, bit for bit
    assert rows(table) == rows(ref)  # verdicts, numbers and the (relative) run folders
    assert table.rows[0].runs["base"] == {"0": p[0].dir} and table.rows[0].curves == "curves/lr.html"
    assert (root / "reproduce.md").read_text() == (ref_root / "reproduce.md").read_text()


def test_partial_table_has_the_finished_findings_rows_and_names_the_pending_ones(reference, tmp_path, capsys):
    ref_root, ref = reference
    root = tmp_path / "partial"
    p = plan(NAMES, steps=STEPS, overrides=SMALL, seeds=SEEDS, out=root)
    run_one(3, root, progress=False)  # window's half: every finding still has a run left
    with pytest.raises(ValueError, match="no finding .* has all its runs finished yet; nothing was tabulated"):
        tabulate(root, partial=True)
    assert not (root / "reproduce.json").exists()
    for i in (0, 1):  # lr is now whole; window still needs run 2
        run_one(i, root, progress=False)
    with pytest.raises(ValueError, match=r"1 of 4 runs .* not finished \(plan index 2\).*--tabulate --partial"):
        tabulate(root)
    table = tabulate(root, partial=True)
    assert table.pending == {"window": 1} and [r.finding for r in table.rows] == ["lr"]
    assert rows(table) == [r for r in rows(ref) if r["finding"] == "lr"]  # the row the whole table has, number for number
    d = json.loads((root / "reproduce.json").read_text())
    assert d["pending"] == {"window": 1} and d["n"] == 1
    md = (root / "reproduce.md").read_text()
    assert "not the whole table: 1 finding is pending: window (1 run left).**" in md
    assert "pending" in table._repr_html_() and "window (1 run left)" in table._repr_html_()
    assert "pending" not in json.loads(ref.to_json()) and "not the whole table" not in ref.to_markdown()
    assert main(["reproduce", "--out", str(root), "--partial"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("--partial goes with --tabulate (it tabulates the finished findings of DIR/plan.json)")
    )
    assert main(["reproduce", "--out", str(root), "--tabulate", "--partial"]) == 0
    assert "1 finding is pending: window (1 run left)" in capsys.readouterr().out
    run_one(p[2], root, progress=False)
    assert rows(tabulate(root, partial=True)) == rows(ref) and tabulate(root).pending == {}


class Recorder:
    """An executor object of the user's: anything with map(fn, items)."""

    def __init__(self):
        self.items = []

    def map(self, fn, items):
        items = list(items)
        self.items += items
        return [fn(x) for x in items]


def test_executor_object_and_reuse(reference, tmp_path):
    ref_root, ref = reference
    ex = Recorder()
    table = reproduce(NAMES, out=tmp_path, steps=STEPS, overrides=SMALL, seeds=SEEDS, progress=False, executor=ex)
    assert [s.index for s in ex.items] == [0, 1, 2, 3]
    assert rows(table) == rows(ref)
    again = Recorder()
    reproduce(NAMES, out=tmp_path, steps=STEPS, overrides=SMALL, seeds=SEEDS, progress=False, executor=again)
    assert again.items == []  # finished runs are not handed to the executor again


class FakeJob:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def test_submitit_and_ray_glue(monkeypatch, tmp_path):
    """The optional engines are called as documented (fakes stand in for the packages, which are not installed here)."""
    seen = {}

    class AutoExecutor:
        def __init__(self, folder):
            seen["folder"] = folder

        def update_parameters(self, **kw):
            seen["params"] = kw

        def map_array(self, fn, items):
            return [FakeJob(fn(x)) for x in items]

    monkeypatch.setitem(sys.modules, "submitit", types.SimpleNamespace(AutoExecutor=AutoExecutor))
    out = map_jobs(abs, [-1, -2], executor="submitit", options={"slurm_partition": "gpu", "timeout_min": 60}, folder=tmp_path)
    assert out == [1, 2] and seen == {"folder": str(tmp_path), "params": {"slurm_partition": "gpu", "timeout_min": 60}}

    class Remote:
        def __init__(self, fn, opts=None):
            self.fn, self.opts = fn, opts or {}

        def options(self, **kw):
            return Remote(self.fn, kw)

        def remote(self, x):
            seen["ray_opts"] = self.opts
            return self.fn(x)

    ray = types.SimpleNamespace(is_initialized=lambda: True, remote=Remote, get=list)
    monkeypatch.setitem(sys.modules, "ray", ray)
    assert map_jobs(abs, [-3, 4], executor="ray", options={"num_cpus": 2}) == [3, 4] and seen["ray_opts"] == {"num_cpus": 2}


def test_executor_errors_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'sink_interp\[slurm\]'"):
        reproduce(["lr"], out=tmp_path / "a", steps=2, overrides=SMALL, executor="submitit", progress=False)
    with pytest.raises(MissingDependencyError, match=r"pip install 'sink_interp\[ray\]'"):
        map_jobs(abs, [1], executor="ray")
    with pytest.raises(ValueError, match="executor must be one of local, submitit, ray"):
        map_jobs(abs, [1], executor="slurm")
    with pytest.raises(TypeError, match="object with map"):
        map_jobs(abs, [1], executor=42)
    with pytest.raises(ValueError, match="jobs must be a whole number"):
        map_jobs(abs, [1], jobs=0)
    with pytest.raises(ValueError, match="apply to executor='submitit' or 'ray', not 'local'"):
        map_jobs(abs, [1], options={"timeout_min": 5})
    assert not (tmp_path / "a").exists()  # refused before anything was written
    with pytest.raises(FileNotFoundError, match="no sink_interp_reproduce.json.*--plan-only"):
        run_one(0, tmp_path)
    plan(["lr"], steps=2, overrides=SMALL, seeds=SEEDS, out=tmp_path / "b")
    with pytest.raises(ValueError, match=r"run index must be a whole number in 0\.\.1 .* has 2 runs"):
        run_one(2, tmp_path / "b")


def test_cli_plan_run_one_tabulate(reference, tmp_path, capsys):
    ref_root, ref = reference
    out = str(tmp_path / "cli")
    sets = [x for k, v in SMALL.items() for x in ("--set", f"{k}={v}")]
    argv = ["reproduce", "--finding", "lr,window", "--steps", str(STEPS), "--seeds", "0", *sets, "--out", out, "--plan-only"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "4 runs" in text and "--array=0-3" in text
    assert main(["reproduce", "--out", out, "--run-one", "0", "--finding", "lr"]) == 2
    assert "--finding" in capsys.readouterr().err
    assert main(["reproduce", "--out", out, "--tabulate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "4 of 4 runs" in err[0]
    for i in range(4):
        assert main(["reproduce", "--out", out, "--run-one", str(i), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["reproduce", "--out", out, "--tabulate"]) == 0
    assert "| finding | paper | ours | verdict | command |" in capsys.readouterr().out
    assert (
        json.loads(Path(out, "reproduce.json").read_text())["rows"]
        == json.loads((ref_root / "reproduce.json").read_text())["rows"]
    )


def test_local_process_pool_gives_the_same_table(reference, tmp_path):
    """jobs=2: the runs train in two spawned processes (the local default engine), with the same results."""
    ref_root, ref = reference
    table = reproduce(NAMES, out=tmp_path, steps=STEPS, overrides=SMALL, seeds=SEEDS, progress=False, jobs=2)
    assert rows(table) == rows(ref)
    assert metrics_of(tmp_path) == metrics_of(ref_root)


@pytest.mark.slow
def test_submitit_local_cluster_gives_the_same_table(reference, tmp_path):
    """The real submitit, its local executor (no SLURM): each run a separate job; skipped where submitit is not installed."""
    pytest.importorskip("submitit")
    ref_root, ref = reference
    opts = {"cluster": "local", "timeout_min": 10}
    table = reproduce(
        NAMES, out=tmp_path, steps=STEPS, overrides=SMALL, seeds=SEEDS, progress=False, executor="submitit", executor_options=opts
    )
    assert rows(table) == rows(ref)
    assert metrics_of(tmp_path) == metrics_of(ref_root)
    assert len(list((tmp_path / "submitit").glob("*_result.pkl"))) == 3
