"""Probe sets: natural, random, repeat and user JSONL, with errors that name the fix."""

from __future__ import annotations

import json

import pytest
import torch

from sink_interp import probe_tokens
from sink_interp.data import natural_path, read_jsonl_texts


def test_random_probe_avoids_special_tokens_and_is_seeded(tiny_models):
    model, _ = tiny_models("tiny-gqa")
    a = probe_tokens(model, "random", n=20, length=30, seed=1)
    b = probe_tokens(model, "random", n=20, length=30, seed=1)
    c = probe_tokens(model, "random", n=20, length=30, seed=2)
    assert a.shape == (20, 30) and torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    special = set(model.tokenizer.all_special_ids)
    assert special and not (set(a.tokens.unique().tolist()) & special)
    assert a.info == {"bos": False, "n": 20, "length": 30, "seed": 1, "source": "random"}


def test_repeat_probe_one_token_per_sample_all_different(tiny_models):
    model, _ = tiny_models("tiny-gqa")
    t = probe_tokens(model, "repeat", n=10, length=6).tokens
    assert bool((t == t[:, :1]).all())
    assert len(set(t[:, 0].tolist())) == 10


def test_bos_takes_the_first_position_and_total_length_is_kept(tiny_models):
    model, _ = tiny_models("tiny-gqa")
    t = probe_tokens(model, "repeat", n=4, length=6, bos=True)
    assert t.shape == (4, 6)
    assert bool((t[:, 0] == model.tokenizer.bos_token_id).all())
    assert t.info["bos"] is True and t.bos is True


def test_jsonl_file_order_truncation_and_skips(tmp_path, tiny_models):
    model, _ = tiny_models("tiny-gqa")
    lines = [
        {"text": "t5 t6 t7"},  # too short for length 4 -> skipped
        {"text": "t10 t11 t12 t13 t14"},
        {"text": "t20 t21 t22 t23", "extra": 1},
        {"text": "t30 t31 t32 t33 t34 t35"},
    ]
    f = tmp_path / "probe.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    t = probe_tokens(model, str(f), n=2, length=4)
    assert t.tokens.tolist() == [[10, 11, 12, 13], [20, 21, 22, 23]]
    assert t.info["skipped"] == 1
    t = probe_tokens(model, f, n=3, length=4, bos=True)
    assert t.tokens.tolist() == [[1, 5, 6, 7], [1, 10, 11, 12], [1, 20, 21, 22]]  # with BOS the short line fits, file order
    with pytest.raises(ValueError, match=r"only 3 lines .*1 shorter lines skipped.*lower n or length"):
        probe_tokens(model, f, n=4, length=4)


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"text": "t4 t5"}\n{"txt": "t4 t5"}\n', r":2: line has no \"text\" field"),
        ("", "empty"),
        ("\n\n", "empty"),
        ('{"text": "t4"}\nnot json\n', r":2: not valid JSON"),
        ('{"text": 5}\n', "must be a string"),
    ],
)
def test_bad_jsonl_files_get_errors_that_name_the_line(tmp_path, tiny_models, content, match):
    model, _ = tiny_models("tiny-gqa")
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(ValueError, match=match):
        probe_tokens(model, f, n=1, length=2)


def test_missing_file_and_bad_sizes(tiny_models, tmp_path):
    model, _ = tiny_models("tiny-gqa")
    with pytest.raises(FileNotFoundError, match="natural"):
        probe_tokens(model, tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="length"):
        probe_tokens(model, "random", length=1)
    with pytest.raises(ValueError, match="n must be"):
        probe_tokens(model, "random", n=0)
    with pytest.raises(ValueError, match="exceeds"):
        probe_tokens(model, "repeat", n=1000, length=4)


def test_natural_corpus_ships_and_is_long_enough():
    texts = read_jsonl_texts(natural_path())
    assert len(texts) >= 500
    assert all(len(t.split()) >= 100 for t in texts)
    notice = natural_path().with_name("NOTICE.md").read_text()
    assert "CC BY-SA" in notice and "Python" in notice
