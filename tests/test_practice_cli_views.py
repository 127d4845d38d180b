"""``sink-interp kv / quant / outliers`` print and write reports that load back; the views draw each report and run no
model (they take the reports' plain data)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sink_interp import load_report, tiny_model
from sink_interp.cli import main
from sink_interp.kvcache import kv_policies
from sink_interp.outliers import activation_outliers
from sink_interp.quant import kv_quant
from sink_interp.views import kv_budget_view, outlier_map_view, quant_bits_view, view_for


@pytest.mark.parametrize(
    "cmd, expect",
    [
        (["kv", "--budgets", "8,1.0", "--sinks", "2", "--policies", "window,sinks+window"], "mean next-token loss by budget"),
        (["quant", "--bits", "4,2", "--intact", "0,2"], "relative quantization error"),
        (["outliers", "--prefix", "1,5", "--act-bits", "4", "--positions", "3"], "quantized linear inputs"),
    ],
)
def test_commands_print_and_write_json(tmp_path, capsys, cmd, expect):
    out = tmp_path / "r.json"
    rc = main([*cmd, "--model", "tiny-gqa", "--length", "24", "--n", "2", "--quiet", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert expect in text and f"wrote {out}" in text
    rep = load_report(str(out))
    assert json.loads(out.read_text())["n"] == 2 and rep.n == 2
    assert view_for(rep)._repr_html_().startswith("<")


def test_bad_arguments_are_one_line(capsys):
    assert main(["quant", "--model", "tiny-gqa", "--bits", "4,x", "--length", "16", "--n", "1", "--quiet"]) == 2
    assert "--bits" in capsys.readouterr().err
    assert main(["kv", "--model", "tiny-gqa", "--policies", "lru", "--length", "16", "--n", "1", "--quiet"]) == 2
    assert "unknown KV policy" in capsys.readouterr().err


def test_views_draw_each_report():
    m = tiny_model()
    x = torch.randint(4, 128, (1, 16), generator=torch.Generator().manual_seed(0))
    kv = kv_policies(m, x, ("window", "sinks+window"), (4, 8, 16), n_sinks=1, progress=False)
    v = kv_budget_view(kv)
    h = v._repr_html_()
    assert "window" in h and "full cache" in h and h.count("<polyline") == 3
    q = kv_quant(m, x, bits=(8, 4, 2), intact=(0, 1), errors=False, progress=False)
    h = quant_bits_view(q)._repr_html_()
    assert "0 intact" in h and "1 intact" in h and "full precision" in h
    o = activation_outliers(m, x, prefix=[1], bits=(4,), progress=False)
    h = outlier_map_view(o, positions=6)._repr_html_()
    assert h.count('class="si-cell"') == 2 * 2 * 6  # two maps of 2 blocks x 6 positions
    assert "per-tensor int4" in h
    assert np.isfinite(o.max_abs).all()
