"""Every report saves and loads back into its own type: same summary, equal arrays, same views."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from sink_interp import (
    EffectReport,
    LongContextReport,
    MaskKey,
    MassiveReport,
    PatchReport,
    SinkReport,
    StreamReport,
    TraceReport,
    TrainResult,
    compare,
    load_report,
    long_context_sinks,
    massive_activations,
    measure_sinks,
    patch_heads,
    streaming_ppl,
    tiny_model,
    trace_sink,
    train,
)
from sink_interp._internal.report import loads_report
from sink_interp.training import preset


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(4, 128, (4, 16), generator=torch.Generator().manual_seed(0))


def _equal(a, b, where="report"):
    """Field-by-field equality: arrays exactly (NaN where NaN), records recursively."""
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            _equal(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif hasattr(a, "to_record"):  # an intervention: its scope, settings and tensors
        assert type(a) is type(b), where
        _equal(a.to_record(), b.to_record(), f"{where}.to_record()")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, where
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            _equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:
        assert b != b, where
    else:
        assert a == b, (where, a, b)


def _round_trip(rep, tmp_path):
    path = tmp_path / f"{type(rep).__name__}.json"
    rep.to_json(path)
    back = load_report(path)
    assert type(back) is type(rep)
    assert json.dumps(back.summary(), sort_keys=True, default=str) == json.dumps(rep.summary(), sort_keys=True, default=str)
    _equal(rep, back)
    assert back.provenance == rep.provenance and back.provenance.model_info
    assert back._repr_html_() == rep._repr_html_()  # the loaded report draws the same view
    return back


def test_sink_report(model, tokens, tmp_path):
    from sink_interp import AttentionMask, probe_tokens

    rep = measure_sinks(model, tokens, progress=False)
    back = _round_trip(rep, tmp_path)
    probed = measure_sinks(
        model, probe_tokens(model, "repeat", n=2, length=12, bos=True), mask=AttentionMask(window=4), progress=False
    )
    p = _round_trip(probed, tmp_path).provenance
    assert (p.data, p.bos, p.probe["source"], p.mask["window"]) == ("repeat", True, "repeat", 4)
    assert back.rate(1) == rep.rate(1) and back.head_table().equals(rep.head_table())


def test_massive_report(model, tokens, tmp_path):
    _round_trip(massive_activations(model, tokens, progress=False), tmp_path)


def test_effect_report(model, tokens, tmp_path):
    rep = compare(model, tokens, {"mask": MaskKey()}, progress=False)
    back = _round_trip(rep, tmp_path)
    assert isinstance(back, EffectReport) and back.table() == rep.table()


@pytest.mark.parametrize("what, method", [("z", "exact"), ("k", "both"), ("v-sink", "attribution")])
def test_patch_report(model, tokens, tmp_path, what, method):
    rep = patch_heads(model, tokens, tokens.roll(1, 0), "logprob", what=what, method=method, progress=False)
    back = _round_trip(rep, tmp_path)
    assert isinstance(back, PatchReport) and back.to_frame().equals(rep.to_frame())


def test_trace_report(model, tokens, tmp_path):
    rep = trace_sink(model, tokens, layer=1, head=0, progress=False)
    back = _round_trip(rep, tmp_path)
    assert isinstance(back, TraceReport) and back.story() == rep.story() and isinstance(back.massive, MassiveReport)


def test_stream_report(model, tmp_path):
    toks = torch.randint(4, 128, (2, 24), generator=torch.Generator().manual_seed(1))
    rep = streaming_ppl(model, toks, n_sinks=1, window=8, progress=False)
    back = _round_trip(rep, tmp_path)
    assert isinstance(back, StreamReport) and back.pivot().equals(rep.pivot())


def test_long_context_report(model, tmp_path):
    toks = torch.randint(4, 128, (1, 32), generator=torch.Generator().manual_seed(2))
    rep = long_context_sinks(model, toks, buckets=2, progress=False)
    back = _round_trip(rep, tmp_path)
    assert isinstance(back, LongContextReport) and isinstance(back.sink_report, SinkReport)


def test_train_result(tmp_path):
    cfg = preset("bb-softmax", steps=2, eval_every=2, d_model=32, d_mlp=64, probe_n=4, eval_batches=1, batch_size=4)
    res = train(cfg, tmp_path / "run", progress=False)
    back = _round_trip(res, tmp_path)
    assert isinstance(back, TrainResult) and back.to_frame().equals(res.to_frame())


def test_files_written_before_reports_carried_their_fields(model, tokens, tmp_path):
    """A SinkReport saved with its alpha (the old ``include_alpha=True``) and a TrainResult's old JSON still load."""
    rep = measure_sinks(model, tokens, progress=False)
    old = {**rep.summary(), "alpha": rep.alpha.tolist(), "row_sum": rep.row_sum.tolist()}
    back = loads_report(json.dumps(old))
    assert isinstance(back, SinkReport) and back.rate(1) == rep.rate(1)
    np.testing.assert_array_equal(back.alpha, rep.alpha)
    with pytest.raises(ValueError, match="no 'report' block"):
        loads_report(json.dumps(rep.summary()))  # the summary alone has no arrays: refused, not half-loaded


def test_bad_files_get_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_report(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="is a folder"):
        load_report(tmp_path)
    f = tmp_path / "x.json"
    f.write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        load_report(f)
    f.write_text(json.dumps({"report": {"type": "FutureReport", "fields": {}}}))
    with pytest.raises(ValueError, match="'FutureReport', which this version does not know"):
        load_report(f)


@pytest.mark.parametrize("kind", ["k", "kv", "logit"])
def test_fit_report_with_its_fitted_bias(model, tokens, tmp_path, kind):
    from sink_interp import fit_bias, intervene
    from sink_interp.fit import FitReport, FitSettings

    rep = fit_bias(model, tokens, FitSettings(kind=kind, steps=3), progress=False)
    back = _round_trip(rep, tmp_path)
    assert isinstance(back, FitReport) and back.recovered == rep.recovered
    with torch.no_grad(), intervene(model, rep.mask, rep.bias):
        want = model(tokens)
    with torch.no_grad(), intervene(model, back.mask, back.bias):  # the loaded bias is the fitted one
        got = model(tokens)
    assert torch.equal(got, want)


def test_files_with_run_facts_in_extra_load_into_typed_fields(model):
    """Sink and massive reports written when the LSE engine, why_not_lse, the distributed run and the unreadable
    keys sat in an ``extra`` dict load into their typed fields; the summary (the CLI's --json head) is unchanged."""
    rep = measure_sinks(model, torch.randint(4, 128, (2, 8)), method="lse", progress=False)
    d = json.loads(rep.to_json())
    fields = d["report"]["fields"]
    engine = rep.engine.info()
    for key in ("engine", "why_not_lse"):
        fields.pop(key)
    fields["extra"] = {
        "__dict__": {
            "probe": None,
            "lse": {"__dict__": engine},
            "why_not_lse": "x",
            "distributed": {"__dict__": {"world_size": 2}},
        }
    }
    back = loads_report(json.dumps(d))
    assert back.engine == rep.engine and back.why_not_lse == "x" and back.distributed == {"world_size": 2}
    assert back.summary()["extra"]["lse"] == engine == d["extra"]["lse"]
    m = massive_activations(model, torch.randint(4, 128, (1, 8)), measure_sinks=False, progress=False)
    d = json.loads(m.to_json())
    d["report"]["fields"].pop("keys_unreadable")
    d["report"]["fields"]["extra"] = {"__dict__": {"keys_unreadable": [0]}}
    assert loads_report(json.dumps(d)).keys_unreadable == (0,)


def _without_run(d):
    """``d``'s report block as a file written before the distributed run sat in the provenance (no such field there)."""
    fields = d["report"]["fields"]
    fields["provenance"]["fields"].pop("distributed")
    return fields


def test_files_with_the_distributed_run_outside_the_provenance_load_into_it(model, tokens):
    """Files written when the distributed run was a field of sink and massive reports (``distributed``), or a key of
    an analysis' ``extra`` (with the probe, repeated from the provenance), load with it in the provenance: the same
    ``rep.distributed`` and summary, and an ``extra`` that keeps only the report's own keys."""
    import sink_interp as si
    from sink_interp import probe_tokens
    from sink_interp._internal.report import encode

    run = {"world_size": 2, "backend": "gloo"}
    probe = probe_tokens(model, "random", n=4, length=16, bos=True)
    with si.distributed():
        reps = [
            measure_sinks(model, tokens, progress=False),
            massive_activations(model, tokens, progress=False),
            compare(model, probe, {"mask": MaskKey()}, progress=False),
            streaming_ppl(model, probe, n_sinks=1, window=8, progress=False),
        ]
    for rep in reps:
        assert rep.distributed == rep.provenance.distributed == {"world_size": 1, "backend": "none"}
        assert rep.summary()["extra"]["distributed"] == rep.distributed
        d = json.loads(rep.to_json())
        fields = _without_run(d)
        if isinstance(rep, (SinkReport, MassiveReport)):  # the layout of a typed field
            fields["distributed"] = encode(run)
        else:  # the layout of extra=prov.extra(), with a key of the report's own
            fields["extra"] = encode({"probe": rep.provenance.probe, "distributed": run, "mine": 1})
        back = loads_report(json.dumps(d))
        assert back.distributed == back.provenance.distributed == run, type(rep).__name__
        want = {**rep.summary()["extra"], "distributed": run}
        if not isinstance(rep, (SinkReport, MassiveReport)):
            assert back.extra == {"mine": 1}
            want["mine"] = 1
        assert list(back.summary()) == list(rep.summary()) and back.summary()["extra"] == want
        assert list(back.summary()["extra"]) == list(want)
    outside = measure_sinks(model, tokens, progress=False)
    assert outside.distributed is None and "distributed" not in outside.summary().get("extra", {})
    d = json.loads(outside.to_json())
    _without_run(d)  # a file written by this version outside distributed() and one before: the same report
    assert loads_report(json.dumps(d)).provenance == outside.provenance
