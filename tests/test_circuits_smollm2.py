"""On SmolLM2: the circuit for the massive activation at the sink position, with BOS vs without, holds the writer
the trace finds (block 11's MLP, dimension 507); its direct edge's score agrees with exact path patching."""

from __future__ import annotations

import pytest

from sink_interp import probe_tokens
from sink_interp.circuits import CircuitSettings, massive_metric, path_patch, sink_circuit
from sink_interp.patching import corrupt_tokens


@pytest.mark.slow  # about 140 s on a loaded 2-core machine (scores 80 s, faithfulness curve 50 s)
def test_massive_activation_circuit_holds_the_writer_mlp(smollm2):
    toks = probe_tokens(smollm2, "natural", n=2, length=16, bos=True)
    corrupted = corrupt_tokens(smollm2, toks, "bos")
    metric = massive_metric(11, 507)
    rep = sink_circuit(smollm2, toks, corrupted, metric, CircuitSettings(steps=2, sizes=(8, 64, 512)), progress=False)
    assert rep.clean > 10_000 and rep.clean > rep.corrupted  # the BOS's massive activation, smaller without BOS
    assert rep.size > 0 and "M11" in rep.circuit_nodes()
    into = rep.edges()[rep.edges().dst == "metric"]
    top = into.iloc[0]
    assert (top.src, top.kind) == ("M11", "in")  # the writer: its direct path carries the difference
    exact = path_patch(smollm2, toks, corrupted, metric, [("M11", "metric", "in")]) - rep.clean
    assert top.score == pytest.approx(exact, rel=0.1)
    assert abs(exact) > 0.8 * abs(rep.corrupted - rep.clean)
