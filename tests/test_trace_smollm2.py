"""Integration on the offline SmolLM2: the trace against an independent Hugging Face computation.

The reference is the dense HF SmolLM2 (``smollm2_hf``) run with ``output_hidden_states`` and plain
PyTorch forward hooks on its modules; no sink_interp hook or reducer is involved.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from sink_interp import probe_tokens, trace_sink
from sink_interp.capture import hook_snapshot
from sink_interp.data import natural_path

from .reference_trace import capture, decoder_layers, norm_scale

pytestmark = [pytest.mark.smollm2, pytest.mark.slow]


def _held_out_jsonl(tmp_path, n):
    """Held-out text: the JSONL file named by $SINK_INTERP_HELDOUT (a "text" field per line), else texts the
    test picks itself (the shipped file's last lines, backwards), in the official JSONL format."""
    if os.environ.get("SINK_INTERP_HELDOUT"):
        return os.environ["SINK_INTERP_HELDOUT"]
    lines = natural_path().read_text().splitlines()[::-1][40 : 40 + n + 10]
    f = tmp_path / "held_out.jsonl"
    f.write_text("\n".join(json.dumps({"text": json.loads(x)["text"]}) for x in lines) + "\n")
    return f


def _hf_numbers(hf, tokens, layer):
    """Per-layer max |x| of the residual entering each block with (pos, dim), ||v|| ratios, block outputs, and the traced layer's k."""
    lays = decoder_layers(hf)
    L = len(lays)
    mods = {}
    for i, lay in enumerate(lays):
        mods[f"{i}.attn"] = lay.self_attn
        mods[f"{i}.mlp"] = lay.mlp
        mods[f"{i}.v"] = lay.self_attn.v_proj
    mods["k"] = lays[layer].self_attn.k_proj
    with capture(mods) as got, torch.no_grad():
        res = hf.model(tokens, output_hidden_states=True)  # the decoder without the 49k-vocab unembedding
    hs = torch.stack([h.float() for h in res.hidden_states[:L]], dim=1)  # [n, L, T, D]
    n, _, T, D = hs.shape
    G = int(hf.config.num_key_value_heads)
    d = D // int(hf.config.num_attention_heads)
    massive = []
    for l in range(L):
        a = hs[:, l].abs()
        i = int(a.reshape(-1).argmax())
        _, p, dim = np.unravel_index(i, (n, T, D))
        massive.append({"layer": l, "max": float(a.reshape(-1)[i]), "pos": int(p), "dim": int(dim)})
    vnr = []
    for l in range(L):
        vn = got[f"{l}.v"][0].reshape(n, T, G, d).norm(dim=-1)  # [n, T, G]
        vnr.append(float(vn[:, 0].mean() / vn[:, 1:].mean()))
    attn = torch.stack([got[f"{l}.attn"][0] for l in range(L)], 1)  # [n, L, T, D]
    mlp = torch.stack([got[f"{l}.mlp"][0] for l in range(L)], 1)
    k = got["k"][0].reshape(n, T, G, d)
    return hs, massive, vnr, attn, mlp, k


def test_trace_agrees_with_hf_on_smollm2(smollm2, smollm2_hf, tmp_path):
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    n, T = 20, 64
    tokens = probe_tokens(smollm2, _held_out_jsonl(tmp_path, n), n=n, length=T, bos=False)
    before = hook_snapshot(smollm2)
    rep = trace_sink(smollm2, tokens, progress=False)
    assert hook_snapshot(smollm2) == before
    d = json.loads(rep.to_json())
    hs, massive, vnr, attn, mlp, k = _hf_numbers(smollm2_hf, tokens.tokens, rep.layer)

    # massive activations per layer: max within 1e-3 relative, same position and dim above 1000
    assert len(d["massive"]) == len(massive) == 30
    for got, ref in zip(d["massive"], massive):
        assert got["layer"] == ref["layer"]
        assert got["max"] == pytest.approx(ref["max"], rel=1e-3)
        if ref["max"] > 1000:
            assert (got["pos"], got["dim"]) == (ref["pos"], ref["dim"])
    assert max(m["max"] for m in massive) > 1000  # the model does have massive activations

    # value-norm ratios within 0.02
    np.testing.assert_allclose(d["value_norm_ratio"], vnr, atol=0.02)

    # the writer: the block output with the largest mean contribution at the global maximum's (pos, dim)
    top = max(massive, key=lambda m: m["max"])
    p, dim = top["pos"], top["dim"]
    spike = float(hs[:, top["layer"], p, dim].mean())
    sign = 1.0 if spike >= 0 else -1.0
    contrib = [(sign * float(attn[:, l, p, dim].mean()), l, "attn") for l in range(30)]
    contrib += [(sign * float(mlp[:, l, p, dim].mean()), l, "mlp") for l in range(30)]
    _, wl, wc = max(contrib)
    ref_value = float((attn if wc == "attn" else mlp)[:, wl, p, dim].mean())
    assert d["writer"]["layer"] == wl and d["writer"]["component"] == wc
    assert d["writer"]["value"] == pytest.approx(ref_value, rel=1e-3)

    # spot checks along the chain at the traced layer
    x = hs[:, rep.layer]
    sp = rep.links["spike"]
    assert sp.top_value == pytest.approx(float(x[:, rep.sink_pos, sp.dims[0]].mean()), rel=1e-3)
    scale = norm_scale(x, layernorm=False, eps=float(smollm2_hf.config.rms_norm_eps))
    assert rep.links["norm"].scale_sink == pytest.approx(float(scale[:, rep.sink_pos].mean()), rel=1e-3)
    g = rep.kv_head
    assert rep.links["wk"].k_sink_norm == pytest.approx(float(k[:, rep.sink_pos, g].norm(dim=-1).mean()), rel=1e-3)
