"""The training data: Bigram-Backcopy rules, text packing modes, sampler state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sink_interp.tasks import BOS_ID, EOS_ID, N_SPECIAL, SINK_ID, BigramBackcopy, Sampler, TextCorpus


@pytest.fixture(scope="module")
def bb():
    return BigramBackcopy(n_vocab=24, source="natural", n_triggers=3, seq_len=48)


@pytest.fixture(scope="module")
def text():
    return TextCorpus(seq_len=32)


def test_bb_starts_with_bos_and_copies_after_triggers(bb):
    x = bb.generate(np.random.default_rng(0), 200)
    assert (x[:, 0] == BOS_ID).all()
    assert x.min() >= N_SPECIAL - 3 and x.max() < bb.d_vocab
    trig = set(int(i) for i in bb.trigger_ids)
    n_copies = 0
    for row in x:
        for t in range(2, len(row) - 1):
            if int(row[t]) in trig and row[t - 1] >= N_SPECIAL:
                assert row[t + 1] == row[t - 1], "the token after a trigger must copy the token before it"
                n_copies += 1
    assert n_copies > 100


def test_bb_triggers_are_the_most_frequent_tokens(bb):
    order = np.argsort(-bb.unigram)
    assert sorted(bb.trigger_index.tolist()) == sorted(order[:3].tolist())
    assert [bb.chars[i] for i in bb.trigger_index] == sorted([bb.chars[i] for i in order[:3]], key=bb.chars.index)


def test_bb_non_trigger_steps_follow_the_bigram_matrix():
    task = BigramBackcopy(n_vocab=6, source="random", n_triggers=1, seq_len=64, seed=3)
    x = task.generate(np.random.default_rng(1), 3000)
    counts = np.zeros((6, 6))
    for row in x:
        for t in range(1, len(row) - 1):
            a, b = row[t], row[t + 1]
            copy = task._is_trigger[a] and row[t - 1] >= N_SPECIAL
            if a >= N_SPECIAL and not copy:
                counts[a - N_SPECIAL, b - N_SPECIAL] += 1
    emp = counts / counts.sum(1, keepdims=True)
    assert np.abs(emp - task.transition).max() < 0.03


def test_bb_bos_num_and_delimiters():
    task = BigramBackcopy(n_vocab=16, source="random", bos_num=3, seq_len=200, delimiter_p=0.1)
    x = task.generate(np.random.default_rng(0), 100)
    assert (x[:, :3] == BOS_ID).all() and (x[:, 3:] != BOS_ID).all()
    # a delimiter replaces a bigram step with probability 0.1 (copy steps take precedence)
    free = delims = 0
    for row in x:
        for t in range(4, len(row) - 1):
            copy = task._is_trigger[row[t]] and row[t - 1] >= N_SPECIAL
            if not copy:
                free += 1
                delims += int(row[t + 1] == EOS_ID)
    assert free > 2000 and 0.08 < delims / free < 0.12


def test_sampler_state_resumes_exactly(bb):
    s = bb.sampler(seed=5)
    s.sample(3)
    state = s.state_dict()
    a = s.sample(4).tokens
    s2 = bb.sampler(seed=99)
    s2.load_state_dict(state)
    assert torch.equal(a, s2.sample(4).tokens)


def test_fixed_token_is_at_position_p(bb, text):
    for task in (bb, text):
        b = Sampler(task, seed=0, fixed_token_pos=3, fixed_token_id=7).sample(16)
        assert (b.tokens[:, 2] == 7).all()
        assert not (b.tokens[:, 3] == 7).all()


def test_prefix_masks_the_loss_and_sink_token_comes_first(bb):
    b = Sampler(bb, seed=0, prefix=4, sink_token=True).sample(8)
    assert not b.loss_mask[:, :4].any() and b.loss_mask[:, 4:-1].all() and not b.loss_mask[:, -1].any()
    assert (b.tokens[:, 0] == SINK_ID).all() and (b.tokens[:, 1] == BOS_ID).all()
    assert b.tokens.shape == (8, bb.seq_len)


def test_data_amount_limits_the_pool(bb):
    s = Sampler(bb, seed=0, data_tokens=bb.seq_len * 5)
    seen = {tuple(r.tolist()) for r in s.sample(200).tokens}
    assert len(seen) <= 5


def test_text_packing_modes(text):
    T = text.seq_len
    rnd = Sampler(text, seed=0, bos="none").sample(64).tokens
    assert rnd.shape == (64, T) and (rnd[:, 0] != BOS_ID).float().mean() > 0.9  # position 1 is an arbitrary token
    fixed = Sampler(text, seed=0, bos="fixed", intra_doc=True).sample(8)
    assert (fixed.tokens[:, 0] == BOS_ID).all() and (fixed.doc_ids[:, 0] == -1).all()
    docs = Sampler(text, seed=1, bos="doc", intra_doc=True).sample(64)
    # every BOS in a doc-BOS stream starts a document: the token before it is the previous document's EOS
    t = docs.tokens
    bos_at = (t[:, 1:] == BOS_ID).nonzero()
    assert len(bos_at) > 0
    assert all(int(t[b, p]) == EOS_ID for b, p in bos_at.tolist())
    assert all(int(docs.doc_ids[b, p + 1]) != int(docs.doc_ids[b, p]) for b, p in bos_at.tolist())


def test_text_splits_and_limit(text):
    train, _ = text.stream("train")
    val, _ = text.stream("val")
    assert len(train) > 20 * len(val) / 2 and len(val) > 1000
    limited = Sampler(text, seed=0, data_tokens=500)
    assert len(limited._stream) == 500
    assert text.tokenizer().decode(text.train_docs[0][:20].tolist()).strip()


def test_bad_arguments_name_the_fix(bb):
    with pytest.raises(ValueError, match="n_triggers"):
        BigramBackcopy(n_vocab=4, n_triggers=4, source="random")
    with pytest.raises(ValueError, match="fixed_token_pos"):
        Sampler(bb, fixed_token_pos=0)
    with pytest.raises(ValueError, match="bos"):
        Sampler(bb, bos="always")
