"""One vocabulary: files written with the old key names load with equal numbers; old keywords are gone (0.1: no shims).

The files in tests/data/old_names were written by the version before the names changed (tests/data/old_names/make.py).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import sink_interp
from sink_interp import AttentionMask, StreamingWindow, massive_activations, streaming_ppl, tiny_model
from sink_interp._internal.report import decode
from sink_interp._internal.vocab import METRIC_NAMES, RENAMED, upgrade, upgrade_summary
from sink_interp.blockwise import ScoreRule
from sink_interp.kernels import causal_mask
from sink_interp.training import read_metrics

OLD = Path(__file__).parent / "data" / "old_names"
TYPES = {
    "sinks": "SinkReport",
    "effects": "EffectReport",
    "massive": "MassiveReport",
    "stream": "StreamReport",
    "long": "LongContextReport",
    "train": "TrainResult",
}


def leaves(obj, path=""):
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in leaves(val, f"{path}/{key}").items()}
    if isinstance(obj, list):
        return {k: v for i, val in enumerate(obj) for k, v in leaves(val, f"{path}[{i}]").items()}
    return {path: obj}


def arrays(obj):
    """Every ndarray in a decoded field value, in order."""
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        return [obj]
    if isinstance(obj, dict):
        return [a for v in obj.values() for a in arrays(v)]
    if isinstance(obj, (list, tuple)):
        return [a for v in obj for a in arrays(v)]
    if hasattr(obj, "__dataclass_fields__"):
        return [a for f in obj.__dataclass_fields__ for a in arrays(getattr(obj, f))]
    return []


@pytest.mark.parametrize("name", list(TYPES))
def test_reports_written_with_the_old_names_load_with_equal_numbers(name):
    old = json.loads((OLD / f"{name}.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # loading needs no deprecated name
        rep = sink_interp.load_report(OLD / f"{name}.json")
    assert type(rep).__name__ == TYPES[name]
    # the summary: the old file's, under the new keys, number for number (a summary recomputed from the stored
    # arrays may differ in the last bit under another numpy's summation order: floats agree to 1e-12 relative)
    old_summary = {k: v for k, v in old.items() if k != "report"}
    new_summary = json.loads(sink_interp._internal.provenance.dumps(rep.summary()))
    got, want = leaves(new_summary), leaves(upgrade_summary(TYPES[name], old_summary))
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, float) and not isinstance(got[key], bool):
            assert got[key] == pytest.approx(value, rel=1e-12, abs=0, nan_ok=True), key
        else:
            assert got[key] == value, key
    # the arrays of every field: equal to the old file's, field renamed or not
    fields = RENAMED.get(TYPES[name], {})
    for old_name, enc in old["report"]["fields"].items():
        want = arrays(decode(enc))
        if old_name == "extra" and not hasattr(rep, "extra"):  # its facts are typed fields now (no arrays in it)
            assert want == []
            continue
        got = getattr(rep, fields.get(old_name, old_name))
        assert len(arrays(got)) == len(want)
        for a, b in zip(arrays(got), want):
            np.testing.assert_array_equal(a, b)


def test_old_summary_keys_map_to_the_new_ones():
    old = json.loads((OLD / "effects.json").read_text())
    rep = sink_interp.load_report(OLD / "effects.json")
    for row_old, eff in zip(old["effects"], rep.effects):
        assert (eff.sink_rate_1, eff.sink_rate_2, eff.mean_alpha_1) == (
            row_old["Sink_1"],
            row_old["Sink_2"],
            row_old["mean_alpha_1"],
        )
    stream = json.loads((OLD / "stream.json").read_text())
    assert sink_interp.load_report(OLD / "stream.json").summary()["n_sinks"] == stream["sinks"]
    sinks = json.loads((OLD / "sinks.json").read_text())
    assert sink_interp.load_report(OLD / "sinks.json").summary()["sink_rates"] == sinks["rates"]


def test_run_metrics_with_the_old_names_are_read_with_the_new_ones(tmp_path):
    old = [json.loads(x) for x in (OLD / "run" / "metrics.jsonl").read_text().splitlines()]
    shutil.copytree(OLD / "run", tmp_path / "run")
    got = read_metrics(tmp_path / "run")
    for m_old, m in zip(old, got):
        assert m["sink_rate_1"] == m_old["sink_rate"] and m["mean_alpha_1"] == m_old["mean_alpha1"]
        assert m["sink_rate_1_by_eps"] == {"0.1": m_old["sink_rate_eps0.1"], "0.2": m_old["sink_rate_eps0.2"]}
        assert m["top_sink_k"] == m_old["sink_pos_max"] and m["sink_rate_star"] == m_old["sink_star"]
        assert sorted(map(repr, leaves(m).values())) == sorted(map(repr, leaves(m_old).values()))
    res = sink_interp.load_report(OLD / "train.json")
    assert res.final["sink_rate_1"] == json.loads((OLD / "train.json").read_text())["final"]["sink_rate"]
    # the training curves read metrics.jsonl files through the same reader
    from sink_interp.views.figures import _metrics_frame

    df = _metrics_frame(tmp_path / "run" / "metrics.jsonl")
    assert "sink_rate_1" in df.columns and "sink_rate" not in df.columns


def test_upgrade_is_idempotent_and_documented():
    m = json.loads((OLD / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    once = upgrade("metrics", m)
    assert upgrade("metrics", once) == once
    for key in ("sink_rate_1", "sink_rate_1_by_eps", "mean_alpha_1", "sink_rates", "top_sink_k", "sink_rate_star"):
        assert key in once and key in METRIC_NAMES
    docs = (Path(__file__).parent.parent / "docs" / "concepts" / "metric.md").read_text()
    for key in METRIC_NAMES:
        assert f"`{key}`" in docs, key


def test_old_keywords_and_properties_are_gone_but_old_saved_data_still_loads():
    """No shims at 0.1: the renamed keywords and the deprecated properties are refused like any unknown name;
    data saved with the old names (a mask dict, report files) still loads with the new names."""
    with pytest.raises(TypeError, match="sinks"):
        AttentionMask(window=4, sinks=1)
    with pytest.raises(TypeError, match="sinks"):
        StreamingWindow(4, sinks=2)
    with pytest.raises(TypeError, match="sinks"):
        causal_mask(6, window=2, sinks=1)
    with pytest.raises(TypeError, match="sinks"):
        ScoreRule(0.5, sinks=torch.zeros(2))
    model = tiny_model()
    x = torch.randint(4, 128, (1, 20), generator=torch.Generator().manual_seed(3))
    with pytest.raises(TypeError, match="sinks"):
        streaming_ppl(model, x, sinks=1, window=6, progress=False)
    with pytest.raises(TypeError, match="sinks"):
        massive_activations(model, x, sinks=False, progress=False)
    assert not hasattr(AttentionMask(window=4, n_sinks=1), "sinks")
    assert not hasattr(massive_activations(model, x, measure_sinks=False, progress=False), "sinks")
    assert sink_interp.masks.as_mask({"window": 4, "sinks": 1}) == AttentionMask(window=4, n_sinks=1)  # saved data
    eff = sink_interp.load_report(OLD / "effects.json").effects[1]
    assert (
        not hasattr(eff, "sink_1") and eff.sink_rate_1 == json.loads((OLD / "effects.json").read_text())["effects"][1]["Sink_1"]
    )
