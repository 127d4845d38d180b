"""Data parallelism over samples (``sink_interp.distributed``): 2 gloo ranks on the CPU give, bit for bit,
the report one process gives, for every analysis, with uneven and empty shards.

The reference is the same call in one process: rank 0 repeats every call after the sharded run, outside
``with si.distributed()`` (the process group still exists there and must not be used), and compares every
array of both reports with ``np.array_equal`` / ``torch.equal``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import socket
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from sink_interp._internal import distributed as dist

# --------------------------------------------------------------------------- comparison

#: the record of the run, not its result: where the ranks are and how long it took
SKIP = {"distributed", "seconds"}


def differences(a: Any, b: Any, path: str = "report") -> list[str]:
    """Where ``a`` and ``b`` differ (bit for bit; NaN equals NaN); the record of the run (world size, times) is skipped."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        if type(a) is not type(b):
            return [f"{path}: {type(a).__name__} vs {type(b).__name__}"]
        names = [f.name for f in dataclasses.fields(a) if f.name not in SKIP]
        return [d for nm in names for d in differences(getattr(a, nm), getattr(b, nm), f"{path}.{nm}")]
    if isinstance(a, torch.nn.Module):  # fitted parameters
        return differences(dict(a.state_dict()), dict(b.state_dict()), path)
    if isinstance(a, dict):
        if set(a) - SKIP != set(b) - SKIP:
            return [f"{path}: keys {sorted(set(a) ^ set(b), key=str)}"]
        return [d for k in a if k not in SKIP for d in differences(a[k], b[k], f"{path}[{k!r}]")]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, torch.Tensor):
        ok = a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a.nan_to_num(7.5), b.nan_to_num(7.5)))
        return [] if ok else [f"{path}: tensors differ"]
    if isinstance(a, np.ndarray):
        ok = a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
        return [] if ok else [f"{path}: arrays differ (max |diff| {np.nanmax(np.abs(a - b)) if a.shape == b.shape else 'shape'})"]
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return []
    if type(a).__module__.startswith("sink_interp") and hasattr(a, "__dict__"):  # an intervention: its fields
        return (
            [f"{path}: {type(a).__name__} vs {type(b).__name__}"]
            if type(a) is not type(b)
            else differences(vars(a), vars(b), path)
        )
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def test_differences_sees_one_ulp():
    x = np.ones((2, 3), dtype=np.float32)
    y = x.copy()
    y[1, 2] = np.nextafter(np.float32(1), np.float32(2))
    assert differences({"a": x}, {"a": x.copy()}) == []
    assert differences({"a": x}, {"a": y}) != []


# --------------------------------------------------------------------------- the calls


@cache
def _model() -> Any:
    from sink_interp import tiny_model

    return tiny_model()


def _toks(n: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, 128, (n, T), generator=torch.Generator().manual_seed(seed))


def _measure(n: int, bs: int | None, **kw: Any) -> Callable[[], Any]:
    def run() -> Any:
        import sink_interp as si

        return si.measure_sinks(_model(), _toks(n, 12), batch_size=bs, progress=False, **kw)

    return run


def _massive() -> Any:
    import sink_interp as si

    return si.massive_activations(_model(), _toks(5, 12, 1), batch_size=2, progress=False)


def _trace() -> Any:
    import sink_interp as si

    return si.trace_sink(_model(), _toks(5, 12, 2), batch_size=2, progress=False)


def _compare() -> Any:
    import sink_interp as si

    ivs = {
        "zero value": si.ZeroValue(layers=[1]),
        "mask key": si.MaskKey(layers=[0, 1]),
        "sigmoid": si.AttentionKernel("sigmoid"),
    }
    return si.compare(_model(), _toks(5, 12, 3), ivs, batch_size=2, progress=False)


def _fit() -> Any:
    import sink_interp as si
    from sink_interp.fit import FitSettings

    settings = FitSettings(kind="k", steps=3, batch_size=4)
    return si.fit_bias(_model(), _toks(6, 12, 8), settings, eval_tokens=_toks(5, 12, 9), progress=False)


def _long() -> Any:
    import sink_interp as si

    return si.long_context_sinks(_model(), _toks(3, 32, 4), buckets=4, batch_size=1, progress=False)


def _patch() -> Any:
    import sink_interp as si

    clean = _toks(3, 10, 5)
    return si.patch_heads(_model(), clean, clean.roll(1, dims=1), "logprob", method="both", batch_size=1, progress=False)


def _summary(n: int, bs: int) -> Callable[[], Any]:
    def run() -> Any:
        import sink_interp as si

        return si.sink_summary(_model(), _toks(n, 12, 6), batch_size=bs, progress=False)

    return run


def _kv() -> Any:
    from sink_interp.kvcache import kv_policies

    return kv_policies(
        _model(), _toks(5, 12, 6), ("window", "sinks+window", "h2o"), (4, 12), n_sinks=1, batch_size=2, progress=False
    )


def _quant() -> Any:
    from sink_interp.quant import kv_quant

    return kv_quant(_model(), _toks(5, 12, 7), bits=(4, 2), intact=(0, 1), batch_size=2, progress=False)


def _outliers() -> Any:
    from sink_interp.outliers import activation_outliers

    return activation_outliers(_model(), _toks(5, 12, 10), prefix=[1, 5], bits=(4,), batch_size=2, progress=False)


CASES: dict[str, Callable[[], Any]] = {
    "measure pattern, 3 batches (1 + 2)": _measure(5, 2, method="pattern"),
    "measure pattern, 1 batch (rank 0 empty)": _measure(2, 2, method="pattern"),
    "measure auto batch size": _measure(3, None),
    "measure lse hooks": _measure(5, 2, method="lse-hooks"),
    "measure lse fused": _measure(5, 2, method="lse-fused"),
    "massive": _massive,
    "trace": _trace,
    "compare (ablate)": _compare,
    "fit_bias (ablate's fitted K bias)": _fit,
    "long": _long,
    "patch": _patch,
    "sink_summary, 1 chunk (rank 0 empty)": _summary(5, 2),
    "sink_summary, 2 chunks (32 + 8)": _summary(40, 4),
    "kv policies": _kv,
    "kv quant": _quant,
    "activation outliers": _outliers,
}


def _failure_on_one_rank() -> tuple[str, bool]:
    """A reducer that fails on samples 4.. only (rank 1's shard): every rank raises it, none waits, hooks are removed."""
    from sink_interp._internal import hooknames
    from sink_interp.capture import Reducer, hook_snapshot, run_reducers

    class Boom(Reducer):
        shardable = True

        def hook_names(self, model: Any) -> list[str]:
            return [hooknames.pattern(0)]

        def update(self, name: str, tensor: torch.Tensor) -> None:
            if self.batch_start >= 4:
                raise ValueError("boom at sample 4")

    model = _model()
    model(_toks(1, 4))  # the bridge adds its own hooks once
    before = hook_snapshot(model)
    try:
        run_reducers(model, _toks(6, 8), [Boom()], batch_size=2, progress=False)
    except ValueError as e:
        return str(e), hook_snapshot(model) == before
    return "no error", hook_snapshot(model) == before


def _record(rep: Any) -> Any:
    """The report's record of the ranks (a long-context report keeps it in its SinkReport, a fit in its EffectReport)."""
    inner = getattr(rep, "sink_report", None) or getattr(rep, "effects", None)
    for r in (rep, inner):
        got = getattr(r, "distributed", None)
        if got is not None:
            return got
    return None


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as td

    td.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import sink_interp as si

        got: dict[str, Any] = {}
        with si.distributed() as ctx:
            assert (ctx.rank, ctx.world_size, ctx.backend) == (rank, world, "gloo")
            for name, fn in CASES.items():
                got[name] = fn()
            failures = dist.gather(_failure_on_one_rank())
        if rank == 0:  # the same calls in this one process: the group exists, but nothing is sharded outside the block
            ref = {name: fn() for name, fn in CASES.items()}
            result = {
                "diff": {name: differences(got[name], ref[name]) for name in CASES},
                "records": {name: _record(got[name]) for name in CASES},
                "ref_records": {name: _record(ref[name]) for name in CASES},
                "failures": failures,
                "engines": {name: getattr(got[name].engine, "engine", None) for name in CASES if "measure lse" in name},
            }
            Path(out).write_bytes(pickle.dumps(result))
        td.barrier()
    finally:
        td.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("dist") / "result.pkl"
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return pickle.loads(out.read_bytes())


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_gloo_ranks_equal_one_process(two_ranks: dict[str, Any], case: str) -> None:
    assert two_ranks["diff"][case] == []
    assert two_ranks["records"][case] == {"world_size": 2, "backend": "gloo"}
    assert two_ranks["ref_records"][case] is None  # outside the block: one process, and recorded as such


@pytest.mark.slow
def test_both_lse_engines_ran(two_ranks: dict[str, Any]) -> None:
    assert two_ranks["engines"] == {"measure lse hooks": "hooks", "measure lse fused": "fused"}


@pytest.mark.slow
def test_a_failure_on_one_rank_raises_on_every_rank(two_ranks: dict[str, Any]) -> None:
    assert two_ranks["failures"] == [("boom at sample 4", True), ("boom at sample 4", True)]


# --------------------------------------------------------------------------- one process


def test_outside_torchrun_one_process():
    env_rank = os.environ.pop("RANK", None)
    try:
        with dist.distributed() as ctx:
            assert (ctx.world_size, ctx.rank, dist.active(), list(dist.shard(3))) == (1, 0, None, [0, 1, 2])
        assert dist.current() is None
    finally:
        if env_rank is not None:
            os.environ["RANK"] = env_rank


def test_shard_blocks_cover_every_batch_once():
    for n_batches in range(0, 9):
        for world in (1, 2, 3, 5):
            blocks = [range(r * n_batches // world, (r + 1) * n_batches // world) for r in range(world)]
            assert [b for blk in blocks for b in blk] == list(range(n_batches))


def test_bad_backend_names_the_argument():
    with pytest.raises(ValueError, match="backend must be one of"):
        with dist.distributed(backend="tcp"):
            pass


def test_report_records_world_size_inside_the_block():
    import sink_interp as si

    with si.distributed():
        rep = si.measure_sinks(_model(), _toks(2, 8), progress=False)
    assert rep.distributed == {"world_size": 1, "backend": "none"}
    assert si.measure_sinks(_model(), _toks(2, 8), progress=False).distributed is None


def test_summary_rates_equal_the_full_report_bit_for_bit(tmp_path: Path):
    import sink_interp as si
    from sink_interp.metrics import EPS_GRID, SinkSummary

    toks = _toks(37, 16, 7)
    full = si.measure_sinks(_model(), toks, batch_size=4, progress=False)
    s = si.sink_summary(_model(), toks, batch_size=4, progress=False)
    assert isinstance(s, SinkSummary) and s.n == 37 and s.counts.dtype == np.int64
    for e in EPS_GRID:
        assert np.array_equal(full.rates(e), s.rates(e))
        assert s.rate(2, e) == full.rate(2, e)
        assert np.array_equal(full.layer_rates(1, e), s.layer_rates(1, e))
        assert np.array_equal(full.head_rates(3, e), s.head_rates(3, e))
    assert np.abs(s.mean_alpha(1) - full.mean_alpha(1)).max() < 1e-6  # fixed point vs float mean
    assert np.abs(s.sink_mass() - full.sink_mass()).max() < 1e-6
    assert np.array_equal(s.to_frame(0.2)["sink_rate"].to_numpy(), full.to_frame(0.2)["sink_rate"].to_numpy())
    assert "Sink_1" in s._repr_html_()
    back = si.load_report(s.to_json(tmp_path / "s.json") and tmp_path / "s.json")
    assert isinstance(back, SinkSummary) and differences(back, s) == []
    with pytest.raises(ValueError, match=r"eps must be one of .*grid.*got 0.33"):
        s.rate(1, eps=0.33)
    with pytest.raises(ValueError, match=r"eps must be one of .*grid.*got 0.33"):
        si.sink_summary(_model(), toks, eps=0.33, progress=False)


# --------------------------------------------------------------------------- the CLI under torchrun


@pytest.mark.slow
def test_torchrun_measure_cli_equals_one_process(tmp_path: Path):
    """``torchrun --nproc_per_node=2 -- sink-interp measure`` writes the rates of one process, with all samples."""
    data = tmp_path / "text.jsonl"
    words = "the cat sat on the mat while a dog ran around the garden and birds sang in the old oak tree".split()
    data.write_text("".join(json.dumps({"text": " ".join(words[i:] + words[:i]) * 6}) + "\n" for i in range(12)))
    args = ["measure", "--model", "smollm2-135m", "--data", str(data), "--n", "8", "--length", "64", "--threads", "1"]
    args += ["--batch-size", "3", "--quiet"]  # 3 batches: 1 on rank 0, 2 on rank 1
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, "-m", "sink_interp.cli", *args, "--json", str(one)], check=True, env=env, timeout=600)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port())]
    r = subprocess.run(
        [*torchrun, "-m", "--", "sink_interp.cli", *args, "--json", str(two)],
        env=env,
        timeout=600,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote ") == 1  # only rank 0 prints
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["n"] == b["n"] == 8
    for key in ("sink_rates", "layer_rates", "sink_rate_1", "mean_alpha_1"):
        assert a[key] == b[key], key
    assert a["report"]["fields"]["alpha"] == b["report"]["fields"]["alpha"]
    assert b["extra"]["distributed"] == {"world_size": 2, "backend": "gloo"}
