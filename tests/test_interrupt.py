"""Ctrl-C stops a sweep within seconds: queued jobs never start, running ones stop where they are (their
cleanup runs), and every run folder resumes. Before: ``reproduce --jobs 2`` exited 46-121 s after Ctrl-C
(84 s measured here) and a queued run started after it and trained to the end.

SIGINT is sent to the process group, as a terminal's Ctrl-C is, to a subprocess started in its own session.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

JOB = textwrap.dedent(
    """
    import time
    from pathlib import Path

    def job(x):
        d = Path(x[0])
        (d / f"started-{x[1]}").write_text("")
        try:
            time.sleep(60)
            (d / f"finished-{x[1]}").write_text("")
        finally:
            (d / f"cleaned-{x[1]}").write_text("")  # a run's finally blocks: atomic writes remove their temp files
        return x[1]
    """
)

MAIN = textwrap.dedent(
    """
    import sys
    from sink_interp._internal.executors import map_jobs
    from slowjob import job

    if __name__ == "__main__":
        try:
            map_jobs(job, [(sys.argv[1], i) for i in range(5)], jobs=2)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
    """
)


def _wait_for(cond, timeout: float, proc: subprocess.Popen) -> None:
    t0 = time.time()
    while not cond():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.1)


def test_ctrl_c_stops_local_jobs_within_seconds(tmp_path):
    (tmp_path / "slowjob.py").write_text(JOB)
    (tmp_path / "main.py").write_text(MAIN)
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    p = subprocess.Popen(
        [sys.executable, str(tmp_path / "main.py"), str(marks)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: (marks / "started-0").exists() and (marks / "started-1").exists(), 120, p)
        t0 = time.time()
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=60)
        seconds = time.time() - t0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130 and out.strip() == "interrupted" and err.strip() == "", err
    assert seconds < 5, seconds
    names = sorted(f.name for f in marks.iterdir())
    assert names == ["cleaned-0", "cleaned-1", "started-0", "started-1"], names  # no queued job started; both cleaned up


SETS = {
    "d_model": 32,
    "n_heads": 2,
    "d_mlp": 64,
    "seq_len": 12,
    "batch_size": 4,
    "eval_batches": 1,
    "probe_n": 4,
    "bb_vocab": 12,
    "bb_source": "random",
    "warmup": 1,
    "eval_every": 100,
    "ckpt_every": 25,
}


@pytest.mark.slow
def test_ctrl_c_on_reproduce_jobs_2_leaves_resumable_runs(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "sink_interp.cli",
        "reproduce",
        "--finding",
        "window",
        "--seeds",
        "0",
        "--steps",
        "1000",
        "--jobs",
        "2",
    ]
    cmd += ["--out", str(out), "--quiet"] + [a for k, v in SETS.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: len(list(out.glob("runs/*/checkpoint.pt"))) >= 2, 300, p)
        at_sigint = sorted(d.name for d in (out / "runs").iterdir())
        t0 = time.time()
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=120)
        seconds = time.time() - t0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130 and seconds < 10, (p.returncode, seconds, err[-2000:])
    assert err.strip().splitlines() == ["sink-interp reproduce: interrupted (run the same command again to resume)"], err
    runs = sorted(d.name for d in (out / "runs").iterdir())
    assert runs == at_sigint and len(runs) == 2  # the third run was queued: it never started
    for d in (out / "runs").iterdir():
        assert not (d / "model").exists()  # stopped mid-training, not run to the end
        assert [x.name for x in d.iterdir() if x.name.startswith(".") and x.name != ".sink_interp.lock"] == []  # no temp files
    stopped_at = {
        d.name: json.loads((d / "metrics.jsonl").read_text().splitlines()[-1])["step"] for d in (out / "runs").iterdir()
    }
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)  # the same command again: it resumes
    assert r.returncode == 0, r.stderr[-3000:]
    for name in runs:
        steps = [m["step"] for m in map(json.loads, (out / "runs" / name / "metrics.jsonl").read_text().splitlines())]
        assert steps == list(range(0, 1001, 100)), (name, steps, stopped_at)
    assert (out / "reproduce.json").exists()
