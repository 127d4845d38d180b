"""streaming_ppl: per-position losses equal those of the masked forward computed here; report and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sink_interp import StreamingWindow, intervene, long_tokens, streaming_ppl


def nll_by_position(model, x, ivs=()):
    with torch.no_grad(), intervene(model, *ivs):
        logits = model(x)
    return torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none").mean(0).numpy()


def test_streaming_ppl_conditions_are_the_masked_forwards(tiny_models, tmp_path):
    model, _ = tiny_models("tiny-gqa")
    x = torch.randint(4, 128, (3, 30), generator=torch.Generator().manual_seed(0))
    rep = streaming_ppl(model, x, n_sinks=2, window=6, bucket=10, batch_size=2, progress=False)
    assert rep.conditions == ("full", "2 sinks + window 6", "window only (8)", "2 sinks + window 6 (original positions)")
    np.testing.assert_allclose(rep.nll[0], nll_by_position(model, x), atol=1e-5)
    np.testing.assert_allclose(rep.nll[1], nll_by_position(model, x, [StreamingWindow(6, 2)]), atol=1e-5)
    np.testing.assert_allclose(rep.nll[2], nll_by_position(model, x, [StreamingWindow(8, 0)]), atol=1e-5)
    # before anything is evicted all conditions agree
    np.testing.assert_allclose(rep.nll[:, :8], np.repeat(rep.nll[:1, :8], 4, 0), atol=1e-5)
    assert rep.ppl("full") == pytest.approx(float(np.exp(rep.nll[0].mean())))
    df = rep.to_frame()
    assert df[df.condition == "full"][["start", "end"]].values.tolist() == [[0, 10], [10, 20], [20, 29]]
    assert rep.pivot().shape == (3, 4)
    rep.to_json(str(tmp_path / "s.json"))
    d = json.loads((tmp_path / "s.json").read_text())
    assert d["n_sinks"] == 2 and d["window"] == 6 and "ppl_from_8" in d
    assert "StreamReport" in repr(rep) and "<table" in rep._repr_html_()


def test_streaming_ppl_on_learned_positions_uses_original_positions(tiny_models):
    model, _ = tiny_models("tiny-learned")
    x = torch.randint(4, 128, (1, 20))
    rep = streaming_ppl(model, x, n_sinks=1, window=5, progress=False)
    assert rep.conditions == ("full", "1 sinks + window 5 (original positions)", "window only (6)")


def test_streaming_ppl_errors(tiny_models):
    model, _ = tiny_models("tiny-gqa")
    with pytest.raises(ValueError, match="nothing is ever evicted"):
        streaming_ppl(model, torch.randint(4, 128, (1, 10)), n_sinks=4, window=6, progress=False)
    with pytest.raises(ValueError, match="window"):
        StreamingWindow(0)


def test_long_tokens_joins_passages_of_one_article(tiny_models):
    model, _ = tiny_models("tiny-gqa")
    t = long_tokens(model, length=300, n=3)
    assert t.shape == (3, 300)
    info = t.info
    assert len(info["documents"]) == 3 and all(d.startswith(("wikipedia:", "kjv:", "python-docs:")) for d in info["documents"])
    with pytest.raises(ValueError, match="lower n or length"):
        long_tokens(model, length=10**6, n=1)
