"""sink-interp ablate / stream: output and JSON on a tiny model (the SmolLM2 numbers are in docs/interventions.md)."""

from __future__ import annotations

import json

from sink_interp.cli import main


def test_ablate_prints_the_effect_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "a.json"
    code = main(
        [
            "ablate",
            "--model",
            "tiny-gqa",
            "--data",
            "random",
            "--n",
            "4",
            "--length",
            "12",
            "--fit-n",
            "4",
            "--fit-steps",
            "2",
            "--eps",
            "0.2",
            "--json",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "zero value, all heads" in text and "mask key, all heads" in text and "kernel softpick" in text
    d = json.loads(out.read_text())
    labels = [e["label"] for e in d["effects"]]
    assert labels[0] == "clean" and "ACT calibration (tau 0.1, beta 0.4)" in labels
    assert "battery" in d and "sink_heads" in d["battery"] and d["eps"] == 0.2
    from sink_interp import EffectReport, load_report

    back = load_report(out)  # the CLI's JSON is a report too
    assert isinstance(back, EffectReport) and [e["label"] for e in back.summary()["effects"]] == labels
    assert "fit" in d["battery"] and any("fitted K bias" in lab for lab in labels)  # random tokens: every head sinks at eps 0.2
    assert any("mean sink key and value" in lab for lab in labels)


def test_stream_prints_buckets(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert (
        main(
            [
                "stream",
                "--model",
                "tiny-gqa",
                "--sinks",
                "2",
                "--window",
                "8",
                "--length",
                "40",
                "--n",
                "2",
                "--json",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "perplexity by predicted position" in text and "window only (10)" in text
    d = json.loads(out.read_text())
    assert d["n_sinks"] == 2 and d["window"] == 8 and d["n"] == 2


def test_bad_arguments_exit_2(capsys):
    assert main(["ablate", "--model", "tiny-gqa", "--eps", "2"]) == 2
    assert "eps" in capsys.readouterr().err
    assert main(["stream", "--model", "tiny-gqa", "--window", "500", "--length", "100", "--n", "1"]) == 2
