"""sink-interp patch: the sink recipes on a tiny model, printed and written as a report."""

from __future__ import annotations

import pytest

from sink_interp import PatchReport, load_report
from sink_interp.cli import main


def test_patch_bos_exact_writes_a_report(tmp_path, capsys):
    out = tmp_path / "p.json"
    args = ["patch", "--model", "tiny-gqa", "--data", "random", "--n", "2", "--length", "10", "--bos"]
    assert main([*args, "--corrupt", "bos", "--json", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "patch   z of each head (exact, denoise" in text and "normalised" in text
    rep = load_report(out)
    assert isinstance(rep, PatchReport) and rep.recipe == "bos" and rep.values.shape == (2, 4)


@pytest.mark.parametrize("what", ["k-sink", "v-sink"])
def test_patch_shuffle_sink_sites_both_methods(capsys, what):
    args = ["patch", "--model", "tiny-gqa", "--data", "random", "--n", "3", "--length", "8", "--layers", "1"]
    assert main([*args, "--corrupt", "shuffle", "--what", what, "--method", "both", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "attribution vs exact: Spearman" in text and "kv_metric" in text


def test_patch_bos_without_bos_is_one_line(capsys):
    code = main(["patch", "--model", "tiny-gqa", "--data", "random", "--n", "2", "--length", "8", "--quiet"])
    assert code == 2 and "fix: add --bos" in capsys.readouterr().err
