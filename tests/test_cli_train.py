"""`sink-interp train` and `sink-interp reproduce`: tiny runs end to end."""

from __future__ import annotations

import json

from sink_interp.cli import main
from sink_interp.training.reproduce import FINDINGS, reproduce

SMALL = [
    "--set",
    "d_model=32",
    "--set",
    "n_heads=2",
    "--set",
    "d_mlp=64",
    "--set",
    "seq_len=16",
    "--set",
    "batch_size=4",
    "--set",
    "eval_batches=1",
    "--set",
    "probe_n=4",
    "--set",
    "eval_every=2",
    "--set",
    "bb_vocab=16",
]


def test_train_cli_writes_metrics_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "bb-sigmoid-nonorm", "--steps", "2", "--out", str(out), "--quiet", *SMALL]) == 0
    text = capsys.readouterr().out
    assert "Sink_1" in text and "val_loss" in text
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [0, 2]
    assert all({"step", "val_loss", "sink_rate_1"} <= set(m) for m in lines)
    assert (out / "model" / "sink_interp_train.json").is_file()
    # the same command resumes the finished run; more steps continue it with --extend
    assert main(["train", "--preset", "bb-sigmoid-nonorm", "--steps", "2", "--out", str(out), "--quiet", *SMALL]) == 0
    assert "resumed from step 2" in capsys.readouterr().out
    assert main(["train", "--preset", "bb-sigmoid-nonorm", "--steps", "4", "--extend", "--out", str(out), "--quiet", *SMALL]) == 0
    assert "resumed from step 2" in capsys.readouterr().out
    assert [m["step"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [0, 2, 4]


def test_train_cli_lists_presets_and_rejects_bad_fields(tmp_path, capsys):
    assert main(["train", "--list"]) == 0  # no --out needed
    text = capsys.readouterr().out
    for name in ("bb-softmax", "bb-sigmoid-nonorm", "text-softmax"):
        assert name in text
    assert main(["train", "--preset", "bb-softmax", "--out", str(tmp_path), "--set", "kernel=cosine"]) == 2
    assert "kernel" in capsys.readouterr().err
    assert main(["train", "--preset", "bb-softmax", "--out", str(tmp_path / "x"), "--set", "lr=abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TrainConfig.lr" in err[0] and not (tmp_path / "x").exists()


def test_reproduce_smoke_writes_the_table(tmp_path):
    small = dict(d_model=32, d_mlp=64, seq_len=16, batch_size=4, eval_batches=1, probe_n=4, bb_vocab=16)
    table = reproduce(["kbias", "bos_packing", "window"], out=tmp_path, steps=2, overrides=small, seeds=[0], progress=False)
    assert [r.finding for r in table.rows] == ["kbias", "bos_packing", "window"]
    md = (tmp_path / "reproduce.md").read_text()
    assert "| finding | paper | ours | verdict | command |" in md and "kbias" in md
    d = json.loads((tmp_path / "reproduce.json").read_text())
    assert d["n"] == 3 and all(r["paper"] and r["ours"] for r in d["rows"])
    assert (tmp_path / "curves" / "kbias.html").is_file()
    assert (tmp_path / "sink_interp_reproduce.json").is_file()
    again = reproduce(
        ["kbias"], out=tmp_path, steps=2, overrides=small, seeds=[0], progress=False
    )  # the same folder: runs reused
    assert again.rows[0].ours == table.rows[0].ours
    assert set(FINDINGS) >= {
        "emergence",
        "lr",
        "weight_decay",
        "fixed_token",
        "prefix",
        "window",
        "kbias",
        "sigmoid",
        "softpick",
        "bos_packing",
        "relu_sgd",
    }
