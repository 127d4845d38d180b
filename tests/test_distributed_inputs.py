"""Distributed runs agree on their inputs: ranks given different tokens, settings or models are refused in one
line naming the rank (before: merged silently into one report that recorded rank 0's seed), and a rank that
stops leaves every other rank one line, not a gloo traceback.

Two kinds of evidence: 2 gloo ranks in processes of this test (the API), and 2 processes of the CLI launched
with torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...), each given its own arguments.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from sink_interp._internal import distributed as dist

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- one process: the digest and the message


def test_digest_sees_what_differs_and_only_that():
    a = torch.arange(12).reshape(3, 4)
    assert dist.digest({"tokens": a, "batch_size": 2}) == dist.digest({"batch_size": 2, "tokens": a.clone()})
    assert dist.digest(a) != dist.digest(a.reshape(4, 3))  # shape
    assert dist.digest(a) != dist.digest(a.int())  # dtype
    b = a.clone()
    b[2, 3] += 1
    assert dist.digest(a) != dist.digest(b)  # one value
    assert dist.digest(2) != dist.digest(2.0) and dist.digest([1, 2]) != dist.digest([2, 1])


def test_digest_of_a_model_sees_its_weights_not_its_address():
    from sink_interp import tiny_model

    m1, m2 = tiny_model(), tiny_model()
    assert dist.digest(m1) == dist.digest(m2)  # same seed, same weights, another object
    with torch.no_grad():
        next(m2.parameters()).view(-1)[-1] += 1e-3  # the last value of the first parameter
    assert dist.digest(m1) != dist.digest(m2)


def test_agree_names_the_ranks_that_differ(monkeypatch):
    """The comparison itself, with three ranks' digests given by hand."""
    ctx = dist.Context(0, 3, "gloo", False)
    monkeypatch.setattr(dist, "active", lambda: ctx)
    same = {"tokens": dist.digest(torch.zeros(2)), "batch_size": dist.digest(1)}
    other = {**same, "tokens": dist.digest(torch.ones(2))}
    monkeypatch.setattr(dist, "gather", lambda obj: [same, same, other])
    with pytest.raises(dist.RanksDisagree) as e:
        dist.agree({"tokens": torch.zeros(2), "batch_size": 1})
    assert str(e.value).startswith(
        "the ranks were given different inputs: rank 2's tokens differ from rank 0's; nothing was computed"
    )
    monkeypatch.setattr(dist, "gather", lambda obj: [same, same, same])
    dist.agree({"tokens": torch.zeros(2), "batch_size": 1})  # all alike: nothing raised


# --------------------------------------------------------------------------- two gloo ranks: the API


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _attempt(fn: Any) -> str:
    try:
        fn()
        return "ran"
    except dist.RanksDisagree as e:
        return str(e)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as td

    td.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import sink_interp as si

        model = si.tiny_model()
        toks = torch.randint(4, 128, (4, 8), generator=torch.Generator().manual_seed(rank))  # each rank its own seed
        same = torch.randint(4, 128, (4, 8), generator=torch.Generator().manual_seed(0))
        other_model = si.tiny_model(seed=rank) if rank else model
        got: dict[str, str] = {}
        with si.distributed():
            got["measure, tokens differ"] = _attempt(lambda: si.measure_sinks(model, toks, batch_size=1, progress=False))
            got["measure, batch size differs"] = _attempt(
                lambda: si.measure_sinks(model, same, batch_size=1 + rank, progress=False)
            )
            got["measure, models differ"] = _attempt(lambda: si.measure_sinks(other_model, same, batch_size=1, progress=False))
            got["compare, tokens differ"] = _attempt(
                lambda: si.compare(model, toks, {"mask": si.MaskKey()}, batch_size=1, progress=False)
            )
            got["patch, corrupted differ"] = _attempt(
                lambda: si.patch_heads(model, same, toks.flip(0), "logprob", batch_size=1, progress=False)
            )
            got["summary, tokens differ"] = _attempt(lambda: si.sink_summary(model, toks, batch_size=1, progress=False))
            got["same inputs"] = _attempt(lambda: si.measure_sinks(model, same, batch_size=1, progress=False))
        Path(f"{out}.{rank}").write_bytes(pickle.dumps(got))
        td.barrier()
    finally:
        td.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    out = tmp_path_factory.mktemp("agree") / "result"
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [pickle.loads(Path(f"{out}.{r}").read_bytes()) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, part",
    [
        ("measure, tokens differ", "tokens"),
        ("measure, batch size differs", "batch_size, batches"),
        ("measure, models differ", "model"),
        ("compare, tokens differ", "tokens"),
        ("patch, corrupted differ", "corrupted"),
        ("summary, tokens differ", "tokens"),
    ],
)
def test_ranks_given_different_inputs_are_refused_on_every_rank(two_ranks, case, part):
    want = f"the ranks were given different inputs: rank 1's {part} differ from rank 0's; nothing was computed"
    for rank in (0, 1):
        assert two_ranks[rank][case].startswith(want), (rank, two_ranks[rank][case])


@pytest.mark.slow
def test_ranks_given_the_same_inputs_run(two_ranks):
    assert two_ranks[0]["same inputs"] == two_ranks[1]["same inputs"] == "ran"


# --------------------------------------------------------------------------- two CLI processes with torchrun's environment


def _launch(args_per_rank: list[list[str]], timeout: float = 300) -> tuple[list[tuple[int, str, str]], float]:
    port = str(_free_port())
    procs = []
    t0 = time.time()
    world = str(len(args_per_rank))
    for r, args in enumerate(args_per_rank):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT),
            "RANK": str(r),
            "LOCAL_RANK": str(r),
            "WORLD_SIZE": world,
            "LOCAL_WORLD_SIZE": world,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        cmd = [sys.executable, "-m", "sink_interp.cli", *args]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, o, e) for p, (o, e) in zip(procs, outs)], time.time() - t0


BASE = ["measure", "--model", "tiny-gqa", "--data", "random", "--n", "4", "--length", "8", "--batch-size", "1", "--quiet"]


@pytest.mark.slow
def test_cli_ranks_with_different_data_are_refused(tmp_path):
    """Before: both ranks exited 0 and the report merged two different data sets under rank 0's seed."""
    out = tmp_path / "r.json"
    res, _ = _launch([[*BASE, "--seed", "0", "--json", str(out)], [*BASE, "--seed", "1", "--json", str(out)]])
    for rank, (code, _stdout, err) in enumerate(res):
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (rank, err[-3000:])
        assert lines[0].startswith(
            f"sink-interp measure: error: rank {rank}: the ranks were given different inputs: rank 1's tokens"
        )
    assert not out.exists()


@pytest.mark.slow
def test_cli_a_failure_on_one_rank_is_one_line_on_every_rank(tmp_path):
    """Rank 1 refuses its arguments after the ranks met; rank 0, waiting for it, stops with one line too.
    Before: rank 0 printed a 34-line traceback ending in gloo's "Connection closed by peer"."""
    out = tmp_path / "r.json"
    args = [*BASE, "--keep", "summary", "--json", str(out)]
    res, seconds = _launch([[*args, "--eps", "0.3"], [*args, "--eps", "0.33"]])
    (code0, _, err0), (code1, _, err1) = res
    assert code1 == 2 and err1.strip().splitlines() == [
        "sink-interp measure: error: rank 1: eps must be one of sink_summary's grid "
        "[0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95], got 0.33; "
        "fix: pick one of them"
    ]
    lines = err0.strip().splitlines()
    assert code0 == 2 and len(lines) == 1, err0[-3000:]
    assert lines[0].startswith("sink-interp measure: error: rank 0: another rank stopped while this one waited for it (")
    assert lines[0].endswith("its own message says why; nothing was written") and "Traceback" not in err0
    assert not out.exists() and seconds < 120
