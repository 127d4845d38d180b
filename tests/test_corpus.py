"""The offline corpus builder (scripts/build_corpus.py) and the named text corpora.

Nothing here needs the built corpus: the cleaners run on hand-made snippets, and the
one check of the real "big" corpus is skipped when it has not been built.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from sink_interp.tasks import CORPUS_NAMES, TextCorpus, big_corpus_path, corpus_path
from sink_interp.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bc():
    spec = importlib.util.spec_from_file_location("build_corpus", ROOT / "scripts" / "build_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


PROSE = "The quick brown fox jumps over the lazy dog near the river bank while the farmer watches from his porch"


def test_wiki_markup_is_stripped(bc):
    raw = (
        "{{Infobox animal|name=Fox}}\n"
        f"'''Foxes''' are [[mammal|small mammals]] of the [[Canidae]] family.<ref>A book.</ref> {PROSE}.\n\n"
        "== See also ==\n* [[Wolf]]\n\n"
        f"== History ==\nIn {{{{convert|3|km|mi}}}} of ''forest'' {PROSE}, and the fox was seen there again.\n"
        "{| class=wikitable\n| a || b\n|}\n"
    )
    text = bc.clean_wiki_article(raw)
    assert text.startswith("Foxes are small mammals of the Canidae family.")
    for junk in ("[[", "]]", "{{", "'''", "<ref", "Infobox", "wikitable", "See also", "Wolf"):
        assert junk not in text
    assert len(text.split("\n\n")) == 2  # two paragraphs, joined by a blank line


def test_rest_markup_is_stripped(bc):
    src = (
        ":mod:`fox` --- Foxes\n"
        "====================\n\n"
        ".. module:: fox\n   :synopsis: Foxes.\n\n"
        f"The :func:`jump` function makes the fox jump; see :class:`Dog` and ``lazy`` for details. {PROSE}.\n\n"
        ".. code-block:: python\n\n   jump(fox)\n\n"
        f"Another paragraph of *running* prose follows here. {PROSE}.\n"
    )
    title, text = bc.clean_rest_document(src)
    assert "fox" in (title or "")
    assert "jump()" in text and "Dog" in text and "lazy" in text
    for junk in (":func:", ":class:", "``", ".. ", "jump(fox)", "*running*"):
        assert junk not in text
    assert len(text.split("\n\n")) == 2


def test_html_keeps_paragraph_text_only(bc):
    page = (
        "<html><head><title>Foxes</title><style>p{}</style></head><body><nav><p>menu menu menu menu menu menu menu menu</p></nav>"
        f"<h1>Foxes</h1><p>The <code>fox</code> &amp; the {PROSE}.</p><pre>fox = 1 fox = 2 fox = 3 fox = 4 fox = 5</pre>"
        f'<div class="para">DocBook paragraph: {PROSE}.</div><p>too short</p></body></html>'
    )
    title, text = bc.clean_html_document(page)
    assert title == "Foxes"
    assert text.split("\n\n") == [f"The fox & the {PROSE}.", f"DocBook paragraph: {PROSE}."]


def test_dictionary_entry_and_book_cleaning(bc):
    entry = 'Abdicate \\Ab"di*cate\\, v. t. [L. {abdicatus}.]\n   To surrender; to give up.\n   [1913 Webster]\n'
    assert bc.clean_dict_entry(entry) == "Abdicate, v. t. [L. abdicatus.] To surrender; to give up."
    book = "BOOK I\n\n\n\nOf Man's first disobedience,        1\nand the fruit\r\n"
    assert bc.clean_gutenberg_text(book) == "BOOK I\n\nOf Man's first disobedience,\nand the fruit"
    pieces = bc.split_long("\n\n".join(["word " * 30] * 10), 100)
    assert len(pieces) == 4 and all(len(p.split()) <= 100 for p in pieces)


def test_dedup_drops_repeated_documents_and_paragraphs(bc):
    boiler = "This file is licensed under the GPL; see the COPYING file for the full text of it."
    docs = [
        {"text": f"{PROSE} one.\n\n{boiler}", "source": "a", "title": "1"},
        {"text": f"{PROSE}  one.\n\n{boiler}", "source": "a", "title": "2"},  # same up to spacing
        {"text": f"{PROSE} two, and more words here.\n\n{boiler}", "source": "b", "title": "3"},
        {"text": boiler, "source": "b", "title": "4"},  # nothing left
    ]
    out, stats = bc.dedup(docs, min_words=5)
    assert [d["title"] for d in out] == ["1", "3"]
    assert boiler in out[0]["text"] and boiler not in out[1]["text"]
    assert stats == {"dup_docs": 1, "dup_pars": 2, "short_docs": 1}


def test_split_is_deterministic_by_document(bc):
    titles = [f"doc {i}" for i in range(4000)]
    a = [bc.split_of("wikipedia", t) for t in titles]
    assert a == [bc.split_of("wikipedia", t) for t in titles]  # a pure function of (source, title)
    frac = a.count("val") / len(a)
    assert 0.01 < frac < 0.03  # 2 % held out
    assert bc.split_of("kjv", "Genesis 1", 999) == "val" and bc.split_of("kjv", "Genesis 1", 0) == "train"


def test_build_from_parts_writes_split_notice_and_manifest(bc, tmp_path):
    parts = tmp_path / "parts"
    rows = [{"text": f"{PROSE} and {PROSE} number {i}.", "source": "kjv", "title": f"Book {i}"} for i in range(200)]
    bc.write_jsonl_atomic(parts / "kjv.jsonl", rows)
    meta = {"version": bc.VERSION, "source": "kjv", "origin": "test", "docs": 200, "words": 4000, "seconds": 0}
    bc.write_atomic(parts / "kjv.meta.json", json.dumps(meta))
    assert bc.main(["--out", str(tmp_path), "--sources", "kjv", "--no-fetch", "--no-tokens", "--val-permille", "100"]) == 0
    lines = [json.loads(l) for l in (tmp_path / "corpus.jsonl").read_text().splitlines()]
    assert len(lines) == 200 and {d["split"] for d in lines} == {"train", "val"}
    assert all(d["split"] == bc.split_of("kjv", d["title"], 100) for d in lines)
    assert "public domain" in (tmp_path / "NOTICE.md").read_text()
    assert json.loads((tmp_path / "manifest.json").read_text())["totals"]["docs"] == 200
    first = (tmp_path / "corpus.jsonl").read_bytes()
    bc.main(["--out", str(tmp_path), "--sources", "kjv", "--no-fetch", "--no-tokens", "--val-permille", "100"])
    assert (tmp_path / "corpus.jsonl").read_bytes() == first  # reproducible


def test_named_big_corpus_missing_says_how_to_build(tmp_path, monkeypatch):
    monkeypatch.setenv("SINK_INTERP_CACHE", str(tmp_path))
    assert big_corpus_path() == tmp_path / "corpus" / "corpus.jsonl"
    with pytest.raises(FileNotFoundError, match=r"python scripts/build_corpus\.py"):
        corpus_path("big")
    assert "big" in CORPUS_NAMES


def test_text_corpus_config_values():
    base = TrainConfig(task="text")
    assert TrainConfig(task="text", text_corpus="big").text_corpus == "big"  # no file needed to configure
    assert TrainConfig(task="text", text_corpus="/data/c.jsonl").text_corpus == "/data/c.jsonl"
    assert TrainConfig(task="text", text_corpus="my.jsonl").text_corpus == "my.jsonl"
    with pytest.raises(ValueError, match="did you mean 'big'"):
        TrainConfig(task="text", text_corpus="bigg")
    # the default config's fingerprint does not change with the new corpus names
    assert base.fingerprint() == TrainConfig(task="text", text_corpus="natural").fingerprint()
    assert base.fingerprint() != TrainConfig(task="text", text_corpus="big").fingerprint()


def test_split_field_decides_and_tokens_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SINK_INTERP_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "c.jsonl"
    rows = [{"text": f"{PROSE} {i}.", "split": "val" if i % 4 == 0 else "train"} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = TextCorpus(str(path), vocab_size=300, seq_len=16)
    assert len(c.val_docs) == 10 and len(c.train_docs) == 30 and c.describe()["split"] == "file"
    cached = list((tmp_path / "cache" / "bpe").glob("tok-300-*.npz"))
    assert len(cached) == 1
    # the run records which BPE made its tokens: the tokenizer's hash that keys the token cache
    recorded = c.describe()["tokenizer_sha256_12"]
    assert recorded == hashlib.sha256(c.tokenizer().backend_tokenizer.to_str().encode("utf-8")).hexdigest()[:12]
    assert cached[0].stem.endswith("-" + recorded)
    assert TextCorpus(str(path), vocab_size=320, seq_len=16).describe()["tokenizer_sha256_12"] != recorded
    again = TextCorpus(str(path), vocab_size=300, seq_len=16)  # read from the cache
    assert all((a == b).all() for a, b in zip(c.train_docs, again.train_docs))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "a", "split": "test"}) + "\n")
    with pytest.raises(ValueError, match=r'bad\.jsonl:1: "split" must be'):
        TextCorpus(str(bad), vocab_size=300)


@pytest.mark.skipif(not big_corpus_path().is_file(), reason="the 'big' corpus is not built (python scripts/build_corpus.py)")
def test_built_big_corpus_has_both_splits():
    from sink_interp.data import read_jsonl_texts_splits

    texts, splits = read_jsonl_texts_splits(corpus_path("big"))
    assert splits is not None and 0 < splits.count("val") < len(splits) // 10
