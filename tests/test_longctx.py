"""Long-context probes and sink scores by query bucket, against HF eager attention and hand tokenisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sink_interp import AttentionMask, long_context_sinks, probe_tokens
from sink_interp.cli import default_n, main
from sink_interp.data import CONCAT_SEPARATOR, natural_path, read_jsonl_texts

from .reference import hf_attentions


def bucket_reference(A: torch.Tensor, edges: list[int]) -> np.ndarray:
    """[n, L, H, B, T]: mean over queries t of each bucket with t >= k of A[t, k] (written from the definition)."""
    n, L, H, T, _ = A.shape
    out = np.full((n, L, H, len(edges) - 1, T), np.nan)
    for i, (a, b) in enumerate(zip(edges, edges[1:])):
        for k in range(T):
            ts = [t for t in range(a, b) if t >= k]
            if ts:
                out[:, :, :, i, k] = A[:, :, :, ts, k].double().mean(-1).numpy()
    return out


@pytest.mark.filterwarnings("ignore:Mean of empty slice")
@pytest.mark.parametrize(
    "name, method", [("tiny-gqa", "lse-fused"), ("tiny-gqa", "lse-hooks"), ("tiny-learned-mqa", "lse-fused")]
)
def test_bucket_alpha_is_the_mean_attention_of_each_query_bucket(tiny_models, name, method):
    model, hf = tiny_models(name)
    T = 48
    tokens = torch.randint(4, 128, (3, T), generator=torch.Generator().manual_seed(9))
    rep = long_context_sinks(model, tokens, eps=0.05, query_edges=[0, 5, 20, 48], progress=False, method=method)
    A = hf_attentions(hf, tokens)
    ref = bucket_reference(A, [0, 5, 20, 48])
    np.testing.assert_allclose(rep.bucket_alpha, ref, atol=1e-6)
    assert rep.edges == (0, 5, 20, 48)
    # Sink_k per bucket follows the definition on the reference
    for k in (1, 10):
        want = 100 * np.nanmean(np.where(np.isnan(ref[..., k - 1]), np.nan, ref[..., k - 1] > 0.05), axis=(0, 1, 2))
        np.testing.assert_allclose(rep.bucket_rates(k), want, atol=1e-9)
    assert np.isnan(rep.bucket_rates(10)[0])  # no query of bucket 1-5 sees key 10
    # the whole-sequence scores are the official ones
    ref_all = (A.sum(-2) / torch.arange(T, 0, -1)).numpy()
    np.testing.assert_allclose(rep.sink_report.alpha, ref_all, atol=1e-6)


def test_report_tables_json_and_html(tiny_models, tmp_path):
    model, _ = tiny_models("tiny-mha")
    tokens = probe_tokens(model, "random", n=2, length=64, seed=1)
    rep = long_context_sinks(model, tokens, buckets=4, mask=AttentionMask(window=16), progress=False)
    assert rep.edges == (0, 16, 32, 48, 64)
    frame = rep.bucket_frame((1, 2))
    assert list(frame["query_start"])[:4] == [0, 16, 32, 48] and len(frame) == 8
    assert rep.bucket_layer_rates().shape == (4, 2)
    kt = rep.key_table(top=5)
    assert len(kt) == 5 and {"k", "mean_alpha", "reliable"} <= set(kt.columns)
    d = json.loads(rep.to_json(tmp_path / "long.json"))
    assert d["edges"] == [0, 16, 32, 48, 64] and d["method"] == "lse" and d["data"] == "random"
    assert d["extra"]["mask"] == {"window": 16, "prefix": 0, "n_sinks": 0}
    assert json.loads((tmp_path / "long.json").read_text())["length"] == 64
    assert "Sink_1" in rep._repr_html_() and "LongContextReport" in repr(rep)
    # with a 16-token window, queries after position 16 cannot see the first token
    assert np.nanmax(rep.bucket_alpha[..., 1:, 0]) == 0.0


def _char_tokenizer(d_vocab: int):
    """Character-level: printable ASCII get their own ids, so the shipped English is text (not all ``<unk>``)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)][: d_vocab - 4]
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, **{c: 4 + i for i, c in enumerate(chars)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, name_or_path="char-level", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>"
    )


def test_natural_concat_joins_whole_passages_in_file_order(tiny_models, monkeypatch):
    model, _ = tiny_models("tiny-gqa")
    with pytest.raises(ValueError, match="unknown token"):  # the tiny word-level tokenizer knows no English
        probe_tokens(model, "natural-concat", n=2, length=300)
    tok = _char_tokenizer(int(model.cfg.d_vocab))
    import sink_interp.data

    monkeypatch.setattr(sink_interp.data, "text_tokenizer", lambda m: tok)
    texts = read_jsonl_texts(natural_path())
    t = probe_tokens(model, "natural-concat", n=2, length=300)
    sep = tok(CONCAT_SEPARATOR, add_special_tokens=False)["input_ids"]
    expect, i = [], 0
    for _ in range(2):
        row: list[int] = []
        while len(row) < 300:
            if row:
                row += sep
            row += tok(texts[i], add_special_tokens=False)["input_ids"]
            i += 1
        expect.append(row[:300])
    assert t.tokens.tolist() == expect
    assert t.info["concat"] is True and t.info["source"] == "natural-concat"
    assert t.info["lines_read"] == i
    with pytest.raises(ValueError, match="concat=True"):
        probe_tokens(model, "natural", n=2, length=5000)
    with pytest.raises(ValueError, match="enough text for"):
        probe_tokens(model, "natural", n=1000, length=5000, concat=True)


def test_cli_long_and_measure_lse(tmp_path, capsys):
    out = tmp_path / "long.json"
    code = main(
        [
            "long",
            "--model",
            "tiny-gqa",
            "--data",
            "random",
            "--n",
            "2",
            "--length",
            "96",
            "--buckets",
            "3",
            "--json",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "Sink_1 by query position" in text and "33-64" in text and "secondary sinks" in text and "lse, fused" in text
    d = json.loads(out.read_text())
    assert d["edges"] == [0, 32, 64, 96] and d["n"] == 2
    assert (
        main(["measure", "--model", "tiny-mqa", "--data", "random", "--n", "2", "--length", "20", "--method", "lse", "--quiet"])
        == 0
    )
    assert "method  lse, fused" in capsys.readouterr().out
    assert default_n(64) == 100 and default_n(2048) == 4 and default_n(8192) == 1
