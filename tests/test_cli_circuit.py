"""sink-interp circuit on a tiny model: printed, written as a report and as an offline HTML page."""

from __future__ import annotations

from sink_interp import load_report
from sink_interp.circuits import CircuitReport
from sink_interp.cli import main


def test_circuit_bos_massive_writes_report_and_page(tmp_path, capsys):
    out, page = tmp_path / "c.json", tmp_path / "c.html"
    args = ["circuit", "--model", "tiny-gqa", "--data", "random", "--n", "2", "--length", "6", "--bos", "--massive", "1,3"]
    assert main([*args, "--steps", "2", "--json", str(out), "--html", str(page), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "metric  massive L1 pos 0 dim 3" in text and "faithfulness by exact patching" in text
    rep = load_report(out)
    assert isinstance(rep, CircuitReport) and rep.metric_layer == 1 and rep.bos is True
    html = page.read_text()
    assert "<svg" in html and 'class="si-edge"' in html


def test_circuit_logprob_shuffle(capsys):
    args = ["circuit", "--model", "tiny-gqa", "--data", "random", "--n", "2", "--length", "6", "--corrupt", "shuffle"]
    assert main([*args, "--scores", "attribution", "--quiet"]) == 0
    assert "metric  logprob" in capsys.readouterr().out


def test_circuit_alpha_metric(capsys):
    args = ["circuit", "--model", "tiny-gqa", "--data", "random", "--n", "2", "--length", "6", "--corrupt", "shuffle"]
    assert main([*args, "--alpha", "1,2", "--scores", "attribution", "--quiet"]) == 0
    assert "metric  alpha_1 L1H2" in capsys.readouterr().out


def test_circuit_bos_without_bos_is_one_line(capsys):
    code = main(["circuit", "--model", "tiny-gqa", "--data", "random", "--n", "2", "--length", "6", "--quiet"])
    assert code == 2 and "fix: add --bos" in capsys.readouterr().err
