"""Run directories are owned, checkpoints load safely, resumes are exact or refused, ``--set`` is checked."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from sink_interp.cli import main
from sink_interp.training import TrainConfig, read_metrics, save_trained, train
from sink_interp.training.loop import LOCK, RunDirError, load_checkpoint
from sink_interp.training.reproduce import reproduce

from .test_train import tiny  # the same tiny BB run

SMALL = [
    "--set",
    "d_model=32",
    "--set",
    "n_heads=2",
    "--set",
    "d_mlp=64",
    "--set",
    "seq_len=12",
    "--set",
    "batch_size=4",
    "--set",
    "eval_batches=1",
    "--set",
    "probe_n=4",
    "--set",
    "eval_every=2",
    "--set",
    "bb_vocab=12",
    "--set",
    "bb_source=random",
    "--set",
    "warmup=1",
]


def snapshot(d):
    """path -> (bytes, mtime_ns) of everything under ``d``."""
    out = {}
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.stat(p)
            out[os.path.relpath(p, d)] = (open(p, "rb").read() if os.path.isfile(p) else None, st.st_mtime_ns)
    return out


def user_folder(tmp_path):
    """A folder with a user's files, named like a run's (and a model/ subfolder)."""
    d = tmp_path / "mine"
    (d / "model").mkdir(parents=True)
    (d / "metrics.jsonl").write_text("my metrics\n")
    (d / "config.json").write_text('{"mine": true}\n')
    (d / "summary.json").write_text("{}\n")
    (d / "model" / "weights.bin").write_bytes(b"\x00\x01")
    (d / "notes.txt").write_text("do not delete\n")
    return d


# --------------------------------------------------------------------------- ownership


def test_user_files_are_never_touched(tmp_path, capsys):
    d = user_folder(tmp_path)
    before = snapshot(d)
    with pytest.raises(FileExistsError, match="not a sink_interp run.*choose an empty or new folder"):
        train(tiny(), d, progress=False)
    with pytest.raises(FileExistsError):
        train(tiny(), d, resume=False, progress=False)  # --fresh does not make it ours
    assert main(["train", "--preset", "bb-softmax", "--steps", "2", "--fresh", "--out", str(d), "--quiet", *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(d) in err[0] and "not a sink_interp run" in err[0]
    with pytest.raises(FileExistsError, match="not a sink_interp reproduce output"):
        reproduce(["kbias"], out=d, steps=2, progress=False)
    assert snapshot(d) == before  # contents and mtimes; no lock file either


def test_a_file_as_out_dir_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        train(tiny(), f, progress=False)
    assert f.read_text() == "x"


def test_fresh_removes_only_what_a_run_writes(tmp_path):
    d = tmp_path / "run"
    train(tiny(steps=2), d, progress=False)
    (d / "notes.txt").write_text("mine")
    (d / "model" / "my_probe.pt").write_bytes(b"mine")
    before = snapshot(d)
    # a user's file inside model/: refused before training, nothing changed
    with pytest.raises(FileExistsError, match="my_probe.pt"):
        train(tiny(steps=2, lr=0.01), d, resume=False, progress=False)
    assert {k: v for k, v in snapshot(d).items() if k != LOCK} == {k: v for k, v in before.items() if k != LOCK}
    (d / "model" / "my_probe.pt").unlink()
    res = train(tiny(steps=2, lr=0.01), d, resume=False, progress=False)
    assert res.resumed_from is None and res.config["lr"] == 0.01
    assert (d / "notes.txt").read_text() == "mine"
    assert json.loads((d / "config.json").read_text())["train_config"]["lr"] == 0.01


def test_save_trained_does_not_replace_a_foreign_folder(tmp_path):
    from sink_interp.training import load_trained

    d = tmp_path / "run"
    res = train(tiny(steps=2), d, progress=False)
    lab = load_trained(res.model_dir)
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no sink_interp_train.json"):
        save_trained(lab, target)
    assert sorted(os.listdir(target)) == ["keep.txt"]
    save_trained(lab, res.model_dir)  # an earlier save is replaced


# --------------------------------------------------------------------------- one writer


def test_a_second_writer_is_refused(tmp_path, capsys):
    d = tmp_path / "run"
    train(tiny(steps=2), d, progress=False, stop_at=1)
    fd = os.open(d / LOCK, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process "writing" the run
    try:
        os.ftruncate(fd, 0)
        os.write(fd, b"4242\n")
        metrics = (d / "metrics.jsonl").read_bytes()
        with pytest.raises(RunDirError, match=r"being written by another process \(pid 4242\)"):
            train(tiny(steps=2), d, progress=False)
        assert main(["train", "--preset", "bb-softmax", "--steps", "2", "--out", str(d), "--quiet", *SMALL]) == 2
        assert "another process" in capsys.readouterr().err
        assert (d / "metrics.jsonl").read_bytes() == metrics
    finally:
        os.close(fd)
    assert train(tiny(steps=2), d, progress=False).final["step"] == 2  # released: it resumes


def test_lock_is_released_on_errors_and_a_dead_holder_blocks_nothing(tmp_path):
    d = tmp_path / "run"
    train(tiny(steps=2), d, progress=False)
    with pytest.raises(ValueError):
        train(tiny(steps=2, lr=0.5), d, progress=False)  # refused inside the lock
    fd = os.open(d / LOCK, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again
    os.close(fd)
    code = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
        "os.write(fd, b'1'); print('locked', flush=True); time.sleep(60)"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(d / LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError):
            train(tiny(steps=2), d, progress=False)
    finally:
        p.kill()
        p.wait()
    assert (d / LOCK).exists()  # the killed holder's lock file stays ...
    assert train(tiny(steps=2), d, progress=False).resumed_from == 2  # ... and blocks nothing


# --------------------------------------------------------------------------- safe checkpoints


class Payload:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling would create the file


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_planted_checkpoint_is_not_executed(tmp_path, how):
    d = tmp_path / "run"
    train(tiny(steps=2), d, progress=False, stop_at=1)
    pwned = tmp_path / "pwned"
    payload = {"format": 2, "step": 0, "x": Payload(pwned)}
    if how == "pickle":
        with open(d / "checkpoint.pt", "wb") as f:
            pickle.dump(payload, f, protocol=2)
    else:
        torch.save(payload, d / "checkpoint.pt")
    with pytest.raises(ValueError, match="weights_only=True") as e:
        train(tiny(steps=2), d, progress=False)
    assert "\n" not in str(e.value) and "--fresh" in str(e.value)
    assert not pwned.exists()
    # --fresh starts afresh (the planted file is a run file of ours: replaced)
    assert train(tiny(steps=2), d, resume=False, progress=False).resumed_from is None
    assert not pwned.exists()


def test_an_old_format_checkpoint_is_refused(tmp_path):
    d = tmp_path / "run"
    train(tiny(steps=4), d, progress=False, stop_at=2)
    ck = torch.load(d / "checkpoint.pt", weights_only=True)
    torch.save({**ck, "format": 1}, d / "checkpoint.pt")
    with pytest.raises(ValueError, match="format 1") as e:
        train(tiny(steps=4), d, progress=False)
    assert "\n" not in str(e.value)


def test_checkpoint_holds_only_safe_types(tmp_path):
    d = tmp_path / "run"
    train(tiny(steps=2, optimizer="sgd", lr=0.1), d, progress=False)
    ck = load_checkpoint(d / "checkpoint.pt")  # weights_only=True inside
    assert ck["step"] == 2 and ck["config"]["optimizer"] == "sgd" and "bit_generator" in ck["sampler"]


# --------------------------------------------------------------------------- resume and extend


def test_resume_with_other_steps_is_refused_naming_steps(tmp_path):
    d = tmp_path / "run"
    train(tiny(steps=4, schedule="cosine", warmup=1), d, progress=False)
    before = snapshot(d)
    with pytest.raises(ValueError, match=r"steps 4 -> 6.*extend=True"):
        train(tiny(steps=6, schedule="cosine", warmup=1), d, progress=False)
    with pytest.raises(ValueError, match=r"cannot extend.*cosine learning-rate schedule depends on steps"):
        train(tiny(steps=6, schedule="cosine", warmup=1), d, progress=False, extend=True)
    with pytest.raises(ValueError, match=r"lr 0.003 -> 0.5.*extend changes only steps"):
        train(tiny(steps=6, schedule="cosine", warmup=1, lr=0.5), d, progress=False, extend=True)
    after = snapshot(d)
    assert {k: v for k, v in after.items() if k != LOCK} == {k: v for k, v in before.items() if k != LOCK}
    assert json.loads((d / "config.json").read_text())["train_config"]["steps"] == 4


def assert_same_run(a, b):
    assert (a / "metrics.jsonl").read_bytes() == (b / "metrics.jsonl").read_bytes()
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert ca["step"] == cb["step"] and ca["config"] == cb["config"] and ca["sampler"] == cb["sampler"]
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert torch.equal(ca["torch_rng"], cb["torch_rng"]) and ca["loss_acc"] == cb["loss_acc"]


@pytest.mark.parametrize("first,stop", [(4, None), (6, 2)])
def test_extend_equals_a_fresh_longer_run(tmp_path, first, stop):
    # constant lr after warm-up: a finished 4-step run, or a killed 6-step one, continued to 8 steps
    long = tiny(steps=8, schedule="constant", warmup=2)
    fresh = train(long, tmp_path / "fresh", progress=False)
    d = tmp_path / "ext"
    train(long.replace(steps=first), d, progress=False, stop_at=stop)
    res = train(long, d, progress=False, extend=True)
    assert res.resumed_from == (stop or first)
    assert_same_run(tmp_path / "fresh", d)
    assert res.metrics == fresh.metrics
    assert json.loads((d / "config.json").read_text())["train_config"]["steps"] == 8


def test_extend_of_a_cosine_run_still_in_warmup_is_exact(tmp_path):
    long = tiny(steps=8, schedule="cosine", warmup=4)
    train(long, tmp_path / "fresh", progress=False)
    d = tmp_path / "ext"
    train(long.replace(steps=6), d, progress=False, stop_at=4)  # checkpoint at step 4 = warmup
    assert train(long, d, progress=False, extend=True).resumed_from == 4
    assert_same_run(tmp_path / "fresh", d)


def test_extend_refuses_an_evaluation_off_the_grid(tmp_path):
    d = tmp_path / "run"
    train(tiny(steps=3, eval_every=2, ckpt_every=1), d, progress=False)  # evaluates at 0, 2 and its last step 3
    with pytest.raises(ValueError, match="evaluations differ at step 3"):
        train(tiny(steps=4, eval_every=2, ckpt_every=1), d, progress=False, extend=True)
    with pytest.raises(ValueError, match="already at step 3"):
        train(tiny(steps=2, eval_every=2, ckpt_every=1), d, progress=False, extend=True)
    assert [m["step"] for m in read_metrics(d)] == [0, 2, 3]


def test_cli_extend(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "bb-softmax", "--steps", "2", "--out", str(out), "--quiet", *SMALL]) == 0
    capsys.readouterr()
    assert main(["train", "--preset", "bb-softmax", "--steps", "4", "--out", str(out), "--quiet", *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "steps 2 -> 4" in err[0] and "--extend" in err[0]
    assert main(["train", "--preset", "bb-softmax", "--steps", "4", "--extend", "--out", str(out), "--quiet", *SMALL]) == 0
    assert "resumed from step 2" in capsys.readouterr().out


# --------------------------------------------------------------------------- --set and --list


@pytest.mark.parametrize(
    "item,words",
    [
        ("lr=abc", ["TrainConfig.lr", "number", "e.g. lr="]),
        ("betas=5", ["TrainConfig.betas", "pair", "[0.9,0.95]"]),
        ("betas=[0.9,2]", ["TrainConfig.betas", "[0, 1)"]),
        ("steps=1.5", ["TrainConfig.steps", "integer"]),
        ("window=wide", ["TrainConfig.window", "integer or None"]),
        ("intra_doc=1", ["TrainConfig.intra_doc", "true or false"]),
        ("kernal=relu", ["unknown TrainConfig fields", "did you mean 'kernel'"]),
        ("lr", ["KEY=VALUE"]),
        ("lr=NaN", ["TrainConfig.lr", "finite"]),
    ],
)
def test_bad_set_values_give_one_line(tmp_path, capsys, item, words):
    out = tmp_path / "never"
    assert main(["train", "--preset", "bb-softmax", "--set", item, "--out", str(out)]) == 2
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in cap.err, cap.err
    for w in words:
        assert w in err[0], (w, err[0])
    assert not out.exists()


def test_config_types_in_python():
    c = TrainConfig(lr=1, steps=1e3, betas=[0.9, 0.99], window=None)
    assert type(c.lr) is float and type(c.steps) is int and c.betas == (0.9, 0.99)
    assert c.fingerprint() == TrainConfig(lr=1.0, steps=1000, betas=(0.9, 0.99)).fingerprint()
    for bad in (dict(lr="abc"), dict(betas=5), dict(d_model=True), dict(seed=-1), dict(adam_eps=0.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(**bad)


def test_list_needs_no_out_and_out_is_required_otherwise(capsys):
    assert main(["train", "--list"]) == 0
    assert "bb-softmax" in capsys.readouterr().out
    assert main(["reproduce", "--list"]) == 0
    assert "kbias" in capsys.readouterr().out
    for cmd in (["train", "--preset", "bb-softmax"], ["reproduce", "--finding", "kbias"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--out DIR is required" in err[0]
