"""Model loading: tiny architectures match their HF reference; names and arguments get clear errors."""

from __future__ import annotations

import pytest
import torch

from sink_interp import known_models, load_model
from sink_interp.models import TINY_MODELS, cache_dir, model_info, resolve_dtype, tiny_model

from .conftest import ARCHS


@pytest.mark.parametrize("name", ARCHS)
def test_tiny_bridge_matches_hf_eager_reference(tiny_models, name):
    model, hf = tiny_models(name)
    tokens = torch.randint(4, 128, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(tokens, output_attentions=True)
        logits, cache = model.run_with_cache(tokens)
    assert torch.allclose(logits, ref.logits, atol=1e-5)
    for layer in range(model.cfg.n_layers):
        assert torch.allclose(cache[f"blocks.{layer}.attn.hook_pattern"], ref.attentions[layer], atol=1e-6)


def test_tiny_architectures_cover_the_attention_and_position_variants():
    seen = {(kw["attention"], kw["positions"], kw["norm"]) for kw in TINY_MODELS.values()}
    assert {a for a, _, _ in seen} == {"mha", "mqa", "gqa"}
    assert {p for _, p, _ in seen} == {"rope", "nope", "learned"}
    assert {n for _, _, n in seen} == {"rms", "layer"}
    info = model_info(tiny_model(attention="mqa"))
    assert info.n_kv_heads == 1 and info.positional == "rope" and info.bos_token_id == 1


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ValueError) as e:
        load_model("smollm-does-not-exist")
    msg = str(e.value)
    for name in known_models():
        assert name in msg
    assert "Hugging Face" in msg


@pytest.mark.parametrize("kwargs, match", [(dict(dtype="int8"), "dtype"), (dict(device="cuda:0"), "CUDA")])
def test_bad_dtype_and_device(kwargs, match):
    if "device" in kwargs and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match=match):
        load_model("tiny-gqa", **kwargs)


def test_dtype_names_and_cache_dir_override(monkeypatch, tmp_path):
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype(None) is torch.float32
    monkeypatch.setenv("SINK_INTERP_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path


def test_tiny_architecture_arguments_are_checked():
    with pytest.raises(ValueError, match="attention"):
        tiny_model(attention="sparse")
    with pytest.raises(ValueError, match="norm='layer'"):
        tiny_model(positions="learned", norm="rms")


def test_local_hf_directory_loads_as_a_bridge(tmp_path):
    from sink_interp.models import tiny_hf_model, tiny_tokenizer

    hf = tiny_hf_model(attention="gqa")
    hf.save_pretrained(tmp_path)
    tiny_tokenizer(128).save_pretrained(tmp_path)
    model = load_model(str(tmp_path))
    tokens = torch.randint(4, 128, (2, 9))
    with torch.no_grad():
        assert torch.allclose(model(tokens), hf(tokens).logits, atol=1e-5)
    assert model_info(model).name == str(tmp_path)


def test_hub_name_offline_fails_with_a_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="Offline machines can use"):
        load_model("EleutherAI/pythia-14m-not-cached-here")
