"""What a command reads is never what it writes, a plan's run folders stay inside its output, and a
metrics file cut in the middle of an append heals on resume.

The references are the files themselves: their bytes before and after each command, the folders that
exist outside the output root, and an uninterrupted run's ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from sink_interp.cli import main
from sink_interp.training import read_metrics, train
from sink_interp.training.reproduce import plan, run_one, tabulate

from .test_train import tiny
from .test_train_safety import SMALL

WORDS = "the cat sat on the mat while a dog ran around the garden and birds sang in the old oak tree".split()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    p = tmp_path / "mydata.jsonl"
    p.write_text("".join(json.dumps({"text": " ".join(WORDS[i:] + WORDS[:i]) * 4}) + "\n" for i in range(6)))
    return p


#: every command that reads --data and writes a file: (command, its output flag)
WRITERS = [
    ("measure", "--json"),
    ("ablate", "--json"),
    ("patch", "--json"),
    ("stream", "--json"),
    ("long", "--json"),
    ("massive", "--json"),
    ("trace", "--json"),
    ("report", "--out"),
]


@pytest.mark.parametrize("command, flag", WRITERS)
@pytest.mark.parametrize("spelling", ["same", "dot-slash", "symlink"])
def test_an_output_equal_to_the_data_file_is_refused(tmp_path, data, capsys, monkeypatch, command, flag, spelling):
    """Before: ``measure --data mydata.jsonl --json mydata.jsonl`` replaced the data with the report."""
    monkeypatch.chdir(tmp_path)
    out = {"same": str(data), "dot-slash": "./mydata.jsonl", "symlink": str(tmp_path / "link.jsonl")}[spelling]
    if spelling == "symlink":
        os.symlink(data, tmp_path / "link.jsonl")
    before = data.read_bytes()
    code = main([command, "--model", "tiny-gqa", "--data", "mydata.jsonl", flag, out, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == (
        f"sink-interp {command}: error: {flag} {out!r} is the --data file: writing there would overwrite your data; "
        f"fix: give {flag} another path"
    )
    assert data.read_bytes() == before


@pytest.mark.parametrize("command, flag", [("measure", "--json"), ("report", "--out")])
def test_an_output_inside_the_model_folder_is_refused(tmp_path, capsys, command, flag):
    from sink_interp.models import tiny_hf_model

    ckpt = tmp_path / "ckpt"
    tiny_hf_model().save_pretrained(str(ckpt))
    capsys.readouterr()  # transformers' own progress bar
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    code = main([command, "--model", str(ckpt), "--data", "random", flag, str(ckpt / "config.json"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"is inside the --model folder {str(ckpt)!r}" in err[0], err
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    code = main(["measure", "--model", str(ckpt), "--data", "random", "--offload-folder", str(ckpt), "--device-map", "auto"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--offload-folder" in err[0] and "overlaps the --model folder" in err[0], err


def test_an_output_next_to_the_data_is_fine(tmp_path, data):
    """Only the data file itself is refused: the same folder, another name, passes the check."""
    from sink_interp.cli import build_parser
    from sink_interp.cli._common import check_outputs

    args = build_parser().parse_args(["measure", "--data", str(data), "--json", str(tmp_path / "report.json")])
    check_outputs(args)
    args = build_parser().parse_args(["measure", "--data", str(data), "--json", str(data)])
    with pytest.raises(ValueError, match="is the --data file"):
        check_outputs(args)


def test_training_data_inside_the_run_folder_is_refused(tmp_path, data):
    run = tmp_path / "run"
    run.mkdir()
    corpus = run / "metrics.jsonl"
    shutil.copy(data, corpus)
    with pytest.raises(ValueError, match=r"text_corpus .* lies inside the run folder .*fix: keep the data outside"):
        train(tiny(task="text", text_corpus=str(corpus)), run, progress=False)
    assert corpus.read_bytes() == data.read_bytes()


# --------------------------------------------------------------------------- a plan's run folders


SMALL_OVERRIDES = dict(
    d_model=32,
    n_heads=2,
    d_mlp=64,
    seq_len=12,
    batch_size=4,
    eval_batches=1,
    probe_n=4,
    bb_vocab=12,
    bb_source="random",
    warmup=1,
)


@pytest.mark.parametrize("bad", ["../../escaped-run", "runs/../../escaped-run", "ABSOLUTE", "runs/link-out"])
def test_a_plan_run_folder_outside_the_output_is_refused(tmp_path, capsys, bad):
    """Before: a plan.json run folder "../../escaped-run" trained outside --out."""
    root = tmp_path / "a" / "b" / "out"
    plan(["kbias"], steps=2, overrides=SMALL_OVERRIDES, out=root)
    outside = tmp_path / "a" / "escaped-run"
    if bad == "ABSOLUTE":
        bad = str(outside)
    if bad == "runs/link-out":  # a folder inside the root that is a link to one outside it
        (root / "runs").mkdir(exist_ok=True)
        outside.mkdir(parents=True)
        os.symlink(outside, root / "runs" / "link-out")
    d = json.loads((root / "plan.json").read_text())
    d["runs"][0]["dir"] = bad
    (root / "plan.json").write_text(json.dumps(d))
    seen = sorted(str(p) for p in tmp_path.rglob("*"))
    for args in (["--run-one", "0"], ["--tabulate"]):
        code = main(["reproduce", "--out", str(root), *args, "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert f"{root / 'plan.json'}: runs[0].dir is {bad!r}" in err[0] and "--plan-only" in err[0], err
    with pytest.raises(ValueError, match=r"runs\[0\]\.dir"):
        run_one(0, root, progress=False)
    with pytest.raises(ValueError, match=r"runs\[0\]\.dir"):
        tabulate(root)
    assert sorted(str(p) for p in tmp_path.rglob("*") if ".sink_interp.lock" not in str(p)) == [
        s for s in seen if ".sink_interp.lock" not in s
    ]


def test_a_run_spec_outside_the_root_is_refused(tmp_path):
    from sink_interp.training.reproduce import RunSpec

    root = tmp_path / "out"
    p = plan(["kbias"], steps=2, overrides=SMALL_OVERRIDES, out=root)
    spec = RunSpec(0, p[0].labels, p[0].config, "../escaped")
    with pytest.raises(ValueError, match=r"run 0's folder is '../escaped', which leads outside"):
        run_one(spec, root, progress=False)
    assert not (tmp_path / "escaped").exists()


# --------------------------------------------------------------------------- a torn metrics line


def test_a_torn_last_metrics_line_heals_on_resume(tmp_path):
    """Before: resume failed with "Expecting ',' delimiter: line 1 column 37" (no file named); --fresh was the only way on."""
    whole = tmp_path / "whole"
    train(tiny(), whole, progress=False)
    d = tmp_path / "killed"
    train(tiny(), d, progress=False, stop_at=2)
    m = d / "metrics.jsonl"
    m.write_text(m.read_text() + '{"step": 4, "tokens": 192, "lr": 0.0')  # stopped while appending step 4
    with pytest.warns(UserWarning) as w:
        res = train(tiny(), d, progress=False)
    msgs = [str(x.message) for x in w if "cut off" in str(x.message)]
    assert msgs and all(s.startswith(f"{m}: its last line (line 3) is cut off") and "\n" not in s for s in msgs)
    assert res.resumed_from == 2
    assert m.read_bytes() == (whole / "metrics.jsonl").read_bytes()  # as if never stopped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [x["step"] for x in read_metrics(d)] == [0, 2, 4]  # healed: no warning any more


def test_the_cli_resumes_past_a_torn_line_with_one_warning_line(tmp_path):
    from sink_interp.cli._common import parse_set
    from sink_interp.training import preset

    d = tmp_path / "run"
    sets = [*SMALL, "--set", "ckpt_every=2"]
    train(preset("bb-softmax", steps=4, **parse_set(sets[1::2])), d, progress=False, stop_at=2)  # the CLI's run, stopped
    m = d / "metrics.jsonl"
    m.write_text(m.read_text() + '{"step": 4, "tokens": 1')  # stopped while appending step 4 (its checkpoint is at 2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    args = ["train", "--preset", "bb-softmax", "--steps", "4", "--out", str(d), "--quiet", *sets]
    r = subprocess.run([sys.executable, "-m", "sink_interp.cli", *args], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert err == [
        f"sink-interp: warning: {m}: its last line (line 3) is cut off, as a process stopped while writing it leaves it; "
        "dropped (a run resumes from its checkpoint and writes it again)"
    ], err
    assert [x["step"] for x in read_metrics(d)] == [0, 2, 4] and "(resumed from step 2)" in r.stdout


def test_a_lost_evaluation_before_the_checkpoint_is_named(tmp_path):
    """A line older than the checkpoint cannot be lost by a stopped append (the checkpoint is written after it); if a
    damaged disk loses it anyway, the resume says which evaluation is missing instead of leaving a silent gap."""
    d = tmp_path / "run"
    train(tiny(), d, progress=False, stop_at=2)
    m = d / "metrics.jsonl"
    m.write_bytes(m.read_bytes()[:-7])  # step 2's line (the checkpoint's step) cut
    with pytest.warns(UserWarning) as w:
        res = train(tiny(), d, progress=False)
    texts = [str(x.message) for x in w]
    assert any(t.startswith(f"{m} lacks the evaluations at steps [2], which the checkpoint (step 2) is past") for t in texts), (
        texts
    )
    assert [x["step"] for x in res.metrics] == [0, 4]


def test_a_damaged_middle_line_is_one_line_naming_the_file_and_line(tmp_path):
    d = tmp_path / "run"
    train(tiny(), d, progress=False, stop_at=2)
    m = d / "metrics.jsonl"
    lines = m.read_text().splitlines()
    m.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(ValueError) as e:
        train(tiny(), d, progress=False)
    assert str(e.value).startswith(f"{m}, line 2: not JSON (") and "fix: " in str(e.value) and "\n" not in str(e.value)


def test_the_curves_view_reads_a_torn_file_too(tmp_path):
    from sink_interp.views.figures import _metrics_frame as view_metrics

    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 0, "sink_rate": 1.0}\n{"step": 2, "sink_r')
    with pytest.warns(UserWarning, match="its last line \\(line 2\\) is cut off"):
        df = view_metrics(p)
    assert df["step"].tolist() == [0] and "sink_rate_1" in df.columns
