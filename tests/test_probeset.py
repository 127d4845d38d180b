"""ProbeSet: the probe's token ids and the facts of how they were made travel together, into every report."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from sink_interp import (
    ProbeSet,
    compare,
    long_tokens,
    massive_activations,
    measure_sinks,
    probe_tokens,
)
from sink_interp.data import natural_path, read_jsonl_texts

from .test_longctx import _char_tokenizer


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models("tiny-gqa")[0]


# --------------------------------------------------------------------------- what probe_tokens records


@pytest.mark.parametrize(
    "source, bos, seed, expected",
    [
        ("random", False, 3, {"bos": False, "n": 4, "length": 10, "seed": 3, "source": "random"}),
        ("random", True, 0, {"bos": True, "n": 4, "length": 10, "seed": 0, "source": "random"}),
        ("repeat", False, 7, {"bos": False, "n": 4, "length": 10, "seed": 7, "source": "repeat"}),
    ],
)
def test_random_and_repeat_info(model, source, bos, seed, expected):
    p = probe_tokens(model, source, n=4, length=10, bos=bos, seed=seed)
    assert isinstance(p, ProbeSet) and isinstance(p.tokens, torch.Tensor)
    assert p.tokens.dtype == torch.long and p.tokens.shape == (4, 10)
    assert p.info == expected
    assert (p.source, p.bos, p.n, p.length, p.seed) == (source, bos, 4, 10, seed)


def test_jsonl_info_and_rows(model, tmp_path):
    f = tmp_path / "probe.jsonl"
    lines = ["t5 t6", "t10 t11 t12 t13 t14", "t20 t21 t22 t23", "t30 t31 t32 t33 t34"]
    f.write_text("\n".join(json.dumps({"text": x}) for x in lines) + "\n")
    p = probe_tokens(model, f, n=3, length=4)
    assert p.info == {
        "bos": False,
        "n": 3,
        "length": 4,
        "seed": 0,
        "source": str(f),
        "concat": False,
        "skipped": 1,
        "lines_read": 4,
    }
    assert p.tokens.tolist() == [[10, 11, 12, 13], [20, 21, 22, 23], [30, 31, 32, 33]]


def test_natural_info(model, monkeypatch):
    """The shipped corpus through a tokenizer that knows it (the tiny word tokenizer does not)."""
    import sink_interp.data

    tok = _char_tokenizer(int(model.cfg.d_vocab))
    monkeypatch.setattr(sink_interp.data, "text_tokenizer", lambda m: tok)
    body, kept, skipped = 15, 0, 0  # length 16 with BOS: 15 text tokens per row
    for text in read_jsonl_texts(natural_path()):
        if len(tok(text, add_special_tokens=False)["input_ids"]) < body:
            skipped += 1
            continue
        kept += 1
        if kept == 2:
            break
    p = probe_tokens(model, "natural", n=2, length=16, bos=True)
    assert p.info == {
        "bos": True,
        "n": 2,
        "length": 16,
        "seed": 0,
        "source": "natural",
        "concat": False,
        "skipped": skipped,
        "lines_read": kept + skipped,
    }
    c = probe_tokens(model, "natural-concat", n=1, length=64)
    assert c.source == "natural-concat" and c.info["concat"] is True and c.info["separator"] == "\n\n"
    assert len(c.info["passages_per_row"]) == 1 and c.info["lines_read"] == c.info["passages_per_row"][0]


def test_long_tokens_is_a_probe_set(model):
    t = long_tokens(model, length=300, n=2)
    assert isinstance(t, ProbeSet) and t.shape == (2, 300)
    assert t.source == "long:natural" and t.bos is False and t.seed is None and len(t.info["documents"]) == 2


# --------------------------------------------------------------------------- the tensor conveniences


def test_indexing_gives_plain_tensors_and_rows_keep_the_facts(model):
    p = probe_tokens(model, "random", n=5, length=8, bos=True, seed=2)
    s = p[:, 1:]
    assert type(s) is torch.Tensor and torch.equal(s, p.tokens[:, 1:])
    assert type(p[0]) is torch.Tensor and p[0].shape == (8,)
    assert len(p) == 5 and p.shape == (5, 8) and p.device == torch.device("cpu")
    assert [r.tolist() for r in p] == p.tokens.tolist()

    ev = p.rows(slice(0, 3))
    assert isinstance(ev, ProbeSet) and ev.shape == (3, 8) and torch.equal(ev.tokens, p.tokens[:3])
    assert ev.info == {**p.info, "n": 3} and ev.n == 3
    assert ev.source == "random" and ev.bos is True and ev.seed == 2 and ev.length == 8
    assert p.n == 5  # the original is untouched
    one = p.rows(-1)
    assert one.shape == (1, 8) and one.n == 1 and torch.equal(one.tokens[0], p.tokens[-1])
    picked = p.rows(torch.tensor([4, 0]))
    assert picked.tokens.tolist() == [p.tokens[4].tolist(), p.tokens[0].tolist()]
    with pytest.raises(ValueError, match="row indices"):
        p.rows((0, 1))

    moved = p.to("cpu")
    assert isinstance(moved, ProbeSet) and moved.info == p.info and torch.equal(moved.tokens, p.tokens)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.tokens = p.tokens  # type: ignore[misc]


def test_repr_is_short(model):
    p = probe_tokens(model, "random", n=50, length=64, seed=1)
    r = repr(p)
    assert r == "ProbeSet(source='random', n=50, length=64, bos=False, seed=1)"
    assert "tensor" not in r


def test_construction_is_checked():
    with pytest.raises(TypeError, match="torch.Tensor"):
        ProbeSet([[1, 2]], {})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2-D"):
        ProbeSet(torch.arange(4), {})
    with pytest.raises(TypeError, match="dict"):
        ProbeSet(torch.zeros(1, 2, dtype=torch.long), None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- what the reports record


def test_report_records_the_probe_and_its_numbers_equal_the_bare_tensor(model):
    p = probe_tokens(model, "random", n=3, length=12, bos=True, seed=4)
    rep = measure_sinks(model, p, progress=False)
    assert rep.data == "random" and rep.bos is True
    assert rep.provenance.probe == p.info
    bare = measure_sinks(model, p.tokens, bos=True, progress=False)
    np.testing.assert_array_equal(rep.alpha, bare.alpha)
    np.testing.assert_array_equal(rep.row_sum, bare.row_sum)
    assert bare.data == "tokens" and bare.provenance.probe is None


def test_a_bare_tensor_is_labelled_tokens_and_bos_read_from_the_first_column(model):
    p = probe_tokens(model, "repeat", n=2, length=8, bos=True)
    rep = measure_sinks(model, p[:, :], progress=False)  # a slice: just tokens
    assert rep.data == "tokens" and rep.bos is True  # the first column holds BOS
    rep = measure_sinks(model, p[:, 1:], progress=False)
    assert rep.data == "tokens" and rep.bos is False


def test_eval_rows_are_recorded_with_their_own_n(model):
    """What `sink-interp ablate` does: evaluation rows split off, relabelled, recorded in the report."""
    p = probe_tokens(model, "random", n=5, length=8, seed=1)
    ev = p.rows(slice(0, 2))
    ev = ProbeSet(ev.tokens, {**ev.info, "role": "evaluation"})
    rep = compare(model, ev, {}, progress=False)
    assert rep.data == "random" and rep.n == 2
    assert rep.provenance.probe == {"bos": False, "n": 2, "length": 8, "seed": 1, "source": "random", "role": "evaluation"}
    m = massive_activations(model, ev, measure_sinks=False, progress=False)
    assert m.provenance.probe == rep.provenance.probe


def test_saved_provenance_is_the_info_dict(model, tmp_path):
    p = probe_tokens(model, "repeat", n=2, length=8, seed=5)
    rep = measure_sinks(model, p, progress=False)
    d = json.loads(rep.to_json(tmp_path / "r.json"))
    found = [v for v in _walk(d) if isinstance(v, dict) and v.get("source") == "repeat" and "seed" in v]
    assert found and all(v == p.info for v in found)


def _walk(x):
    yield x
    if isinstance(x, dict):
        for v in x.values():
            yield from _walk(v)
    elif isinstance(x, list):
        for v in x:
            yield from _walk(v)
