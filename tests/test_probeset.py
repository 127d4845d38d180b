"""ProbeSet: the probe's token ids and the facts of how they were made travel together, into every report."""

from __future__ import annotations

import copy
import gc
import io
import json
import pickle
import weakref

import numpy as np
import pytest
import torch

from sink_interp import (
    MaskKey,
    ProbeSet,
    compare,
    intervene,
    long_tokens,
    massive_activations,
    measure_sinks,
    probe_tokens,
)
from sink_interp._internal.errors import check_tokens
from sink_interp._internal.probe import as_tokens, probe_of
from sink_interp._internal.provenance import to_jsonable
from sink_interp._internal.report import decode, encode
from sink_interp.data import natural_path, read_jsonl_texts
from sink_interp.models import TINY_MODELS, tiny_model

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
    with pytest.raises(AttributeError, match="read-only"):
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
    bare = measure_sinks(model, p.tokens, progress=False)
    np.testing.assert_array_equal(rep.alpha, bare.alpha)
    np.testing.assert_array_equal(rep.row_sum, bare.row_sum)
    assert bare.data == "tokens" and bare.bos is True and bare.provenance.probe is None  # BOS read from the first column


def test_probe_set_of_labels_ids_of_your_own_and_reports_record_the_label(model):
    ids = probe_tokens(model, "random", n=3, length=12, bos=False, seed=5).tokens
    mine = ProbeSet.of(ids, source="my-data", bos=True, seed=5)  # the label says BOS, whatever the first column holds
    assert mine.info == {"source": "my-data", "bos": True, "n": 3, "length": 12, "seed": 5}
    assert mine.data_ptr() == ids.data_ptr()  # the ids are shared
    rep = measure_sinks(model, mine, progress=False)
    assert (rep.data, rep.bos, rep.provenance.probe) == ("my-data", True, mine.info)
    np.testing.assert_array_equal(rep.alpha, measure_sinks(model, ids, progress=False).alpha)
    unsaid = ProbeSet.of(ids.tolist(), source="lists")  # nested lists; no BOS policy: read from the first column
    assert "bos" not in unsaid.info and massive_activations(model, unsaid, progress=False).bos is False
    with pytest.raises(ValueError, match="2-D"):
        ProbeSet.of(ids[0])


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


def test_patching_records_the_clean_probe_set(model):
    from sink_interp import patch_heads, patch_sink

    p = probe_tokens(model, "random", n=2, length=8, bos=True, seed=3)
    for rep in (patch_heads(model, p, p.roll(1, 0), "logprob", layers=[1], progress=False), patch_sink(model, p, progress=False)):
        assert (rep.data, rep.bos, rep.provenance.probe) == ("random", True, p.info)
    bare = patch_heads(model, p.tokens, p.tokens.roll(1, 0), "logprob", layers=[1], progress=False)
    assert bare.data == "tokens" and bare.provenance.probe is None


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


# --------------------------------------------------------------------------- a ProbeSet is the token tensor


def test_a_probe_set_is_a_tensor_and_torch_results_are_plain(model):
    p = probe_tokens(model, "random", n=4, length=8, bos=True, seed=2)
    ref = p.tokens.clone()  # the reference: a plain tensor holding the same ids, in its own storage
    w = torch.randn(int(model.cfg.d_vocab), 3)
    assert isinstance(p, torch.Tensor) and type(p.tokens) is torch.Tensor and p.tokens.data_ptr() == p.data_ptr()
    assert p.shape == ref.shape == (4, 8) and p.dtype == torch.long and p.ndim == 2 and p.device == ref.device
    assert len(p) == 4 and p.tolist() == ref.tolist() and np.array_equal(p.numpy(), ref.numpy())
    assert np.array_equal(np.asarray(p), ref.numpy()) and p.sum().item() == ref.sum().item() and int(p[1, 2]) == int(ref[1, 2])
    rows = list(p)
    assert len(rows) == 4 and all(type(r) is torch.Tensor and torch.equal(r, e) for r, e in zip(rows, ref))
    assert torch.equal(p, ref) and torch.equal(ref, p) and not torch.equal(p, ref + 1)
    results = {
        "slice": (p[:, 1:], ref[:, 1:]),
        "row": (p[0], ref[0]),
        "all": (p[:], ref[:]),
        "ellipsis": (p[...], ref[...]),
        "cat": (torch.cat([p, p]), torch.cat([ref, ref])),
        "cat with a plain tensor": (torch.cat([p.tokens, p], dim=1), torch.cat([ref, ref], dim=1)),
        "eq": (p == ref, ref == ref),
        "lt": (p < 50, ref < 50),
        "add": (p + 1, ref + 1),
        "long (a no-op on long ids)": (p.long(), ref),
        "to int32": (p.to(torch.int32), ref.to(torch.int32)),
        "to cpu and int32": (p.to("cpu", torch.int32), ref.to(torch.int32)),
        "float": (p.float(), ref.float()),
        "view": (p.view(-1), ref.view(-1)),
        "reshape to the same shape": (p.reshape(4, 8), ref),
        "atleast_2d (returns its input)": (torch.atleast_2d(p), ref),
        "stack": (torch.stack([p, p]), torch.stack([ref, ref])),
        "unbind": (torch.unbind(p)[3], ref[3]),
        "split": (p.split(2)[1], ref[2:]),
        "max": (p.max(dim=1).values, ref.max(dim=1).values),
        "embedding": (torch.nn.functional.embedding(p, w), torch.nn.functional.embedding(ref, w)),
    }
    for name, (got, want) in results.items():
        assert type(got) is torch.Tensor, name
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want), name
    assert torch.as_tensor(p) is p  # not an operation: torch hands back the very object (no torch function runs)
    q = p.clone()
    out = q.add_(1)  # in place: the values change, so what comes back is a plain tensor
    assert type(out) is torch.Tensor and torch.equal(out, ref + 1)


@pytest.mark.parametrize(
    "how",
    ["to(device)", "to(same dtype)", "to(like)", "cpu()", "clone()", "detach()", "contiguous()", "torch.clone", "torch.detach"],
)
def test_moves_and_copies_keep_a_copy_of_the_facts(model, how):
    p = probe_tokens(model, "repeat", n=3, length=6, bos=True, seed=5)
    ref, ref_info = p.tokens.clone(), dict(p.info)
    move = {
        "to(device)": lambda x: x.to("cpu"),
        "to(same dtype)": lambda x: x.to(dtype=torch.long),
        "to(like)": lambda x: x.to(torch.zeros(1, dtype=torch.long)),
        "cpu()": lambda x: x.cpu(),
        "clone()": lambda x: x.clone(),
        "detach()": lambda x: x.detach(),
        "contiguous()": lambda x: x.contiguous(),
        "torch.clone": torch.clone,
        "torch.detach": torch.detach,
    }[how]
    q = move(p)
    assert type(q) is ProbeSet and q is not p
    assert q.info == ref_info and q.info is not p.info and repr(q) == repr(p)
    assert q.dtype == ref.dtype and q.shape == ref.shape and torch.equal(q.tokens, ref)
    q.info["role"] = "moved"  # a copy of the facts: the original's stay as they were
    assert p.info == ref_info


def test_a_non_contiguous_probe_set_made_contiguous_keeps_the_facts():
    ids = torch.arange(24).reshape(4, 6)
    p = ProbeSet(ids.t(), {"source": "random", "n": 6})
    c = p.contiguous()
    assert not p.is_contiguous() and c.is_contiguous() and type(c) is ProbeSet
    assert c.info == p.info and torch.equal(c.tokens, ids.t())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_moves_keep_the_facts_and_the_model_runs_on_the_gpu(model):
    p = probe_tokens(model, "random", n=3, length=8, seed=6)
    ref = p.tokens.clone()
    for g in (p.cuda(), p.to("cuda")):
        assert type(g) is ProbeSet and g.device.type == "cuda" and g.info == p.info
        assert repr(g) == repr(p)[:-1] + f", device='{g.device}')"
        assert torch.equal(g.cpu().tokens, ref) and type(g.cpu()) is ProbeSet
    assert type(p.cuda().to(torch.int32)) is torch.Tensor
    gpu = tiny_model(**TINY_MODELS["tiny-gqa"], device="cuda")
    with torch.no_grad():
        got, want = gpu(p.cuda()), gpu(ref.cuda())
    assert type(got) is torch.Tensor and got.device.type == "cuda" and torch.equal(got, want)


def test_a_probe_set_is_read_only(model):
    p = probe_tokens(model, "random", n=2, length=5, seed=1)
    ref, ref_info = p.tokens.clone(), dict(p.info)
    for name in ("tokens", "info", "source", "bos", "n", "length", "seed"):
        with pytest.raises(AttributeError, match="read-only"):
            setattr(p, name, None)
    with pytest.raises(AttributeError, match="read-only"):
        del p.info
    assert p.info == ref_info and torch.equal(p.tokens, ref)


def test_pickle_deepcopy_and_torch_save_keep_the_facts(model, tmp_path):
    p = probe_tokens(model, "repeat", n=3, length=6, bos=False, seed=4)
    ref, ref_info = p.tokens.clone(), dict(p.info)
    torch.save({"probe": p, "again": p}, tmp_path / "p.pt")
    loaded = torch.load(tmp_path / "p.pt", weights_only=False)
    buf = io.BytesIO()
    torch.save(p, buf)
    buf.seek(0)
    copies = {
        "pickle": pickle.loads(pickle.dumps(p)),
        "deepcopy": copy.deepcopy(p),
        "copy": copy.copy(p),
        "torch.save": torch.load(buf, weights_only=False),
        "torch.save in a dict": loaded["probe"],
    }
    for name, q in copies.items():
        assert type(q) is ProbeSet, name
        assert q.info == ref_info and repr(q) == repr(p) and torch.equal(q.tokens, ref), name
    assert loaded["again"] is loaded["probe"]  # one object saved twice loads as one
    deep = copies["deepcopy"]
    assert deep.info is not p.info and deep.data_ptr() != p.data_ptr()
    both = copy.deepcopy([p, p])
    assert both[0] is both[1]  # the memo is honoured


def test_no_reference_cycle_keeps_a_probe_set_alive(model):
    gc.collect()
    gc.disable()  # freed by reference counting alone, not by the cycle collector
    try:
        p = probe_tokens(model, "random", n=2, length=5, seed=1)
        refs = [weakref.ref(x) for x in (p, p.to("cpu"), p.clone(), p.rows(0), copy.deepcopy(p))]
        assert all(r() is None for r in refs[1:])  # the temporaries are gone already
        del p
        assert refs[0]() is None
    finally:
        gc.enable()


def test_as_tokens_gives_the_plain_tensor_and_analyses_unwrap(model):
    p = probe_tokens(model, "random", n=3, length=7, seed=3)
    ref = p.tokens.clone()
    t = as_tokens(p)
    assert type(t) is torch.Tensor and t.data_ptr() == p.data_ptr() and torch.equal(t, ref)
    plain = torch.ones(2, 3, dtype=torch.long)
    assert as_tokens(plain) is plain and as_tokens([[1, 2]]) == [[1, 2]]
    assert probe_of(p) is p and probe_of(t) is None and probe_of(plain) is None
    checked = check_tokens(p, d_vocab=int(model.cfg.d_vocab))
    assert type(checked) is torch.Tensor and torch.equal(checked, ref)
    # the constructor takes a probe set too (its plain ids, new facts)
    relabelled = ProbeSet(p, {**p.info, "role": "evaluation"})
    assert type(relabelled) is ProbeSet and relabelled.info["role"] == "evaluation" and "role" not in p.info
    assert torch.equal(relabelled.tokens, ref)


def test_report_encoders_treat_a_probe_set_as_before(model):
    """Reports store ``probe.info``, never the probe set itself: the encoders refuse it as they did
    when it was a dataclass, instead of storing it as a bare tensor without its facts."""
    p = probe_tokens(model, "random", n=2, length=5, seed=1)
    with pytest.raises(TypeError, match="ProbeSet"):
        encode({"tokens": p})
    assert torch.equal(decode(encode(p.tokens)), p.tokens)  # the plain ids still travel
    assert to_jsonable(p) is p
    with pytest.raises(TypeError, match="ProbeSet"):
        json.dumps(to_jsonable({"tokens": p}))
    assert to_jsonable({"tokens": p.tokens}) == {"tokens": p.tolist()}


# --------------------------------------------------------------------------- TransformerLens runs on a ProbeSet


def _outcome(f, *a, **kw):
    try:
        return "value", f(*a, **kw)
    except Exception as e:  # noqa: BLE001 - the same failure for both inputs is the same outcome
        return "error", type(e).__name__


def _entry_points(model, x, everything: bool = True) -> tuple[dict, list]:
    """What a TransformerLens user (and the tutorials) calls with token ids, run on ``x``: the forward,
    ``run_with_cache`` and ``run_with_hooks``, and with ``everything`` also the loss, ``hooks()``,
    :func:`intervene` and greedy ``generate``."""
    seen: list[type] = []

    def halve(act, hook):  # changes the run, so a hook that did not fire shows
        seen.append(type(act))
        return act * 0.5

    hook = [("blocks.0.hook_resid_post", halve)]
    out: dict = {}
    with torch.no_grad():
        out["forward"] = model(x)
        logits, cache = model.run_with_cache(x)
        out["run_with_cache logits"] = logits
        out.update({f"cache {k}": cache[k] for k in cache.keys()})
        out["run_with_hooks"] = model.run_with_hooks(x, fwd_hooks=hook)
        if everything:
            out["loss"] = model(x, return_type="loss")
            with model.hooks(fwd_hooks=hook):
                out["hooks()"] = model(x)
            with intervene(model, MaskKey()) as m:
                out["intervene"] = m(x)
            out["generate"] = model.generate(x, max_new_tokens=3, do_sample=False, verbose=False)
    return out, seen


def _same_runs(model, p, everything: bool = True) -> None:
    ref = p.tokens.clone()  # the reference: the same ids as a plain tensor
    got, seen = _entry_points(model, p, everything)
    want, seen_ref = _entry_points(model, ref, everything)
    assert got.keys() == want.keys() and len(got) > 10
    for k in want:
        assert type(got[k]) is torch.Tensor, k
        assert got[k].shape == want[k].shape and torch.equal(got[k], want[k]), k
    assert not torch.equal(want["run_with_hooks"], want["forward"])  # the hook fired
    if everything:
        assert torch.equal(want["hooks()"], want["run_with_hooks"])
        assert not torch.equal(want["intervene"], want["forward"])
    assert seen == seen_ref == [torch.Tensor] * (2 if everything else 1)
    assert torch.equal(p, ref)  # the run left the ids as they were


def test_transformer_lens_runs_on_a_probe_set_as_on_its_ids(model):
    _same_runs(model, probe_tokens(model, "random", n=3, length=10, bos=True, seed=3))


def test_to_string_and_to_str_tokens_as_on_the_ids(model):
    p = probe_tokens(model, "random", n=3, length=6, bos=True, seed=8)
    ref = p.tokens.clone()
    assert model.to_string(p) == model.to_string(ref)
    assert model.to_str_tokens(p[0]) == model.to_str_tokens(ref[0])
    assert model.to_str_tokens(p.rows(1)) == model.to_str_tokens(ref[1:2])
    assert _outcome(model.to_str_tokens, p) == _outcome(model.to_str_tokens, ref)  # [n, T]: whatever TL does with ids


@pytest.mark.smollm2
def test_smollm2_runs_on_a_probe_set_as_on_its_ids(smollm2):
    p = probe_tokens(smollm2, "natural", n=4, length=32)
    _same_runs(smollm2, p, everything=False)  # the other entry points: on the tiny model above
    assert smollm2.to_string(p) == smollm2.to_string(p.tokens.clone())
