"""The capture engine: hooks come and go exactly, early stops leave no trace, Keep equals run_with_cache."""

from __future__ import annotations

import pytest
import torch

from sink_interp import measure_sinks
from sink_interp._internal import hooknames
from sink_interp.capture import Keep, Reducer, add_hooks, attach_hooks, hook_snapshot, run_reducers


class Boom(Exception):
    pass


class ExplodingReducer(Reducer):
    def __init__(self, after: int):
        self.after = after
        self.calls = 0

    def hook_names(self, model):
        return [hooknames.pattern(0), hooknames.resid_pre(1)]

    def update(self, name, tensor):
        self.calls += 1
        if self.calls >= self.after:
            raise Boom("midway")

    def result(self):
        return self.calls


def test_attach_hooks_removes_exactly_its_own_hooks(tiny_models):
    model, _ = tiny_models("tiny-gqa")
    pristine = hook_snapshot(model)  # the bridge keeps a few torch hooks of its own (see conftest.warm)
    user_calls = []
    model.add_hook(hooknames.resid_pre(0), lambda x, hook: user_calls.append(1))  # a user's own hook stays
    try:
        before = hook_snapshot(model)
        assert before != pristine  # the user's hook is visible
        with attach_hooks(model, [(hooknames.pattern(0), lambda x, hook: None), (hooknames.resid_pre(0), lambda x, hook: None)]):
            assert hook_snapshot(model) != before
        assert hook_snapshot(model) == before
        model(torch.randint(4, 128, (1, 5)))
        assert user_calls == [1]
    finally:
        model.reset_hooks(including_permanent=True)
    assert hook_snapshot(model) == pristine


@pytest.mark.parametrize("after", [1, 2, 3])
def test_hooks_are_removed_after_an_exception_midway(tiny_models, after):
    model, _ = tiny_models("tiny-mha")
    tokens = torch.randint(4, 128, (4, 8))
    before = hook_snapshot(model)
    ref = model(tokens)
    with pytest.raises(Boom):
        run_reducers(model, tokens, [ExplodingReducer(after)], batch_size=2, progress=False)
    assert hook_snapshot(model) == before
    assert torch.equal(model(tokens), ref)


def test_exception_inside_with_block_removes_hooks(tiny_models):
    model, _ = tiny_models("tiny-mha")
    before = hook_snapshot(model)
    with pytest.raises(RuntimeError):
        with attach_hooks(model, [(hooknames.pattern(1), lambda x, hook: x * 0)]):
            raise RuntimeError("user code failed")
    assert hook_snapshot(model) == before


def test_unknown_hook_name_is_a_clear_error_and_leaves_nothing(tiny_models):
    model, _ = tiny_models("tiny-mha")
    before = hook_snapshot(model)
    with pytest.raises(KeyError, match="no hook point"):
        with attach_hooks(model, [(hooknames.pattern(0), lambda x, hook: None), (hooknames.pattern(9), lambda x, hook: None)]):
            pass
    assert hook_snapshot(model) == before


def test_measure_sinks_leaves_hooks_and_logits_unchanged(tiny_models):
    model, _ = tiny_models("tiny-gqa")
    tokens = torch.randint(4, 128, (5, 10))
    before = hook_snapshot(model)
    ref = model(tokens)
    measure_sinks(model, tokens, batch_size=2, progress=False)  # stops early after the last pattern hook
    assert hook_snapshot(model) == before
    assert torch.equal(model(tokens), ref)


def test_keep_matches_run_with_cache_and_early_stop_skips_later_layers(tiny_models):
    model, _ = tiny_models("tiny-gqa")
    tokens = torch.randint(4, 128, (5, 7))
    _, cache = model.run_with_cache(tokens)
    keep = Keep([hooknames.resid_pre(0), hooknames.pattern(0)])
    late = []

    class Late(Reducer):
        def hook_names(self, m):
            return []

        def update(self, name, tensor):
            late.append(name)

        def result(self):
            return None

    stats = run_reducers(model, tokens, [keep, Late()], batch_size=2, progress=False)
    got = keep.result()
    assert stats.n_batches == 3 and stats.stopped_after is not None
    for name in (hooknames.resid_pre(0), hooknames.pattern(0)):
        assert torch.allclose(got[name], cache[name], atol=1e-6)
    # with a user hook on the last layer we can observe that the early stop skipped it
    seen = []
    with attach_hooks(model, [(hooknames.resid_post(1), lambda x, hook: seen.append(1))]):
        run_reducers(model, tokens, [Keep([hooknames.pattern(0)])], progress=False)
        assert seen == []
        run_reducers(model, tokens, [Keep([hooknames.pattern(0)])], progress=False, stop_early=False)
        assert seen == [1]


def test_logits_reducer_sees_the_full_forward(tiny_models):
    model, _ = tiny_models("tiny-mha")
    tokens = torch.randint(4, 128, (3, 6))

    class Logits(Reducer):
        needs_logits = True

        def __init__(self):
            self.parts = []

        def hook_names(self, m):
            return [hooknames.pattern(0)]

        def update(self, name, tensor):
            pass

        def update_logits(self, logits):
            self.parts.append(logits)

        def result(self):
            return torch.cat(self.parts)

    r = Logits()
    run_reducers(model, tokens, [r], batch_size=2, progress=False)
    assert torch.allclose(r.result(), model(tokens), atol=1e-6)


def test_permanent_hooks_survive_reset_and_remove_exactly(tiny_models):
    """add_hooks(permanent=True) is the engine of the training knobs: reset_hooks() keeps them, remove() takes
    exactly them off (a user's own permanent hook stays), and a bad name leaves nothing behind."""
    model, _ = tiny_models("tiny-mha")
    tokens = torch.randint(4, 128, (1, 6))
    with torch.no_grad():
        ref = model(tokens)
    before = hook_snapshot(model)
    with pytest.raises(KeyError, match="no hook point"):
        add_hooks(model, [(hooknames.resid_pre(0), lambda x, hook: x * 0), (hooknames.pattern(9), lambda x, hook: None)])
    assert hook_snapshot(model) == before
    user = model.hook_dict[hooknames.resid_pre(1)]
    user.add_hook(lambda x, hook: None, dir="fwd", is_permanent=True)
    mine = add_hooks(model, [(hooknames.resid_pre(0), lambda x, hook: x * 0)], permanent=True)
    try:
        model.reset_hooks()
        with torch.no_grad():
            assert float(model(tokens).abs().max()) == 0.0  # still attached after reset_hooks()
        mine.remove()
        mine.remove()  # idempotent
        with torch.no_grad():
            assert torch.equal(model(tokens), ref)
        assert len(user.fwd_hooks) == 1  # the user's permanent hook stays
    finally:
        model.reset_hooks(including_permanent=True)
