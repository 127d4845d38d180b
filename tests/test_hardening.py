"""Hostile but fair use: NaN never becomes a number, paths and lengths are checked before work,
every user error is one line (issue 13)."""

from __future__ import annotations

import warnings

import pytest
import torch

import sink_interp.cli as cli
from sink_interp import MaskKey, NonFiniteError, compare, massive_activations, measure_sinks, probe_tokens, tiny_model, trace_sink
from sink_interp.architecture import check_context
from sink_interp.capture import attach_hooks, hook_snapshot
from sink_interp.models import tiny_checkpoint


def _nan_at(pos: int):
    def hook(x, hook):
        x = x.clone()
        x[:, pos, 0] = float("nan")
        return x

    return hook


@pytest.fixture(scope="module")
def model():
    m = tiny_model()
    with torch.no_grad():  # peaked attention
        for name, p in m.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.mul_(4.0)
    return m


@pytest.mark.parametrize("method", ["pattern", "lse", "auto"])
def test_a_nan_from_a_users_hook_is_an_error_naming_the_hook(model, method):
    x = torch.randint(4, 128, (3, 12))
    clean = measure_sinks(model, x, progress=False, method=method)
    assert clean.score == "softmax"
    before = hook_snapshot(model)
    with attach_hooks(model, [("blocks.1.hook_resid_pre", _nan_at(5))]):
        with pytest.raises(NonFiniteError, match=r"a hook on blocks\.1\.hook_resid_pre returned NaN"):
            measure_sinks(model, x, progress=False, method=method)
    assert hook_snapshot(model) == before
    assert measure_sinks(model, x, progress=False, method=method).rate(1) == clean.rate(1)


def test_every_analysis_refuses_non_finite_data(model):
    x = torch.randint(4, 128, (4, 12))
    with attach_hooks(model, [("blocks.1.hook_resid_pre", _nan_at(3))]):
        with pytest.raises(NonFiniteError, match="blocks.1.hook_resid_pre"):
            massive_activations(model, x, progress=False)
        with pytest.raises(NonFiniteError, match="blocks.1.hook_resid_pre"):
            trace_sink(model, x, layer=1, head=0, progress=False)
        with pytest.raises(NonFiniteError, match="blocks.1.hook_resid_pre"):
            compare(model, x, {"mask": MaskKey()}, progress=False)


def test_an_inf_in_the_weights_names_the_parameter_and_the_fix():
    m = tiny_model()
    p = dict(m.named_parameters())
    name = next(n for n in p if "layers.0" in n and "v_proj" in n)  # reaches layer 1's pattern
    with torch.no_grad():
        p[name].view(-1)[7] = float("inf")
    with pytest.raises(NonFiniteError, match=r"parameter model\.layers\.0\.self_attn\.v_proj\.weight.*damaged.*refresh=True"):
        measure_sinks(m, torch.randint(4, 128, (2, 10)), progress=False)


def _damaged_checkpoint(tmp_path):
    from safetensors.torch import load_file, save_file

    d = tiny_checkpoint("llama", tmp_path / "llama")
    f = d / "model.safetensors"
    sd = load_file(str(f))
    key = next(k for k in sd if "layers.0." in k and "o_proj" in k)
    sd[key][0, :4] = float("nan")
    save_file(sd, str(f), metadata={"format": "pt"})
    return d


def test_cli_prints_no_rate_from_a_damaged_checkpoint(tmp_path, capsys):
    d = _damaged_checkpoint(tmp_path)
    out = tmp_path / "r.json"
    rc = cli.main(["measure", "--model", str(d), "--data", "random", "--n", "2", "--length", "16", "--quiet", "--json", str(out)])
    o = capsys.readouterr()
    assert rc == 2
    assert "Sink_1" not in o.out and not out.exists()
    lines = o.err.strip().splitlines()
    assert len(lines) == 1 and "layers.0.self_attn.o_proj.weight" in lines[0] and "damaged" in lines[0]


def test_learned_positions_refuse_lengths_past_the_context_and_rope_warns_once():
    gpt2 = tiny_model(attention="mha", positions="learned", norm="layer", n_ctx=32)
    with pytest.raises(ValueError, match=r"length 40 exceeds the context of this model \(32 tokens\).*fix: length <= 32"):
        measure_sinks(gpt2, torch.randint(4, 128, (1, 40)), progress=False)
    rope = tiny_model(n_ctx=32)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        check_context(rope, 32)
        assert not w
        check_context(rope, 64)
        check_context(rope, 80)
    assert len(w) == 1 and "beyond the context this model was built for (32 tokens" in str(w[0].message)


def test_pattern_method_refuses_maps_that_cannot_fit(model, monkeypatch):
    import sink_interp.lse as lse

    monkeypatch.setattr(lse, "available_bytes", lambda device=None: 10_000)
    x = torch.randint(4, 128, (2, 64))
    need = 4 * 4 * 1 * 4 * 64 * 64
    with pytest.raises(ValueError, match=rf"needs about {need / 2**30:.1f} GiB.*fix: method='lse'"):
        measure_sinks(model, x, progress=False, method="pattern", batch_size=1)
    monkeypatch.setattr(lse, "available_bytes", lambda device=None: 2 * need)  # fits, but takes half of what is free
    with pytest.warns(UserWarning, match="method='lse' needs no T x T map"):
        assert measure_sinks(model, x, progress=False, method="pattern", batch_size=1).method == "pattern"


def test_text_probes_that_are_mostly_one_token_are_refused(model):
    with pytest.raises(ValueError, match="100% the unknown token.*repeated-token probe"):
        probe_tokens(model, "natural", n=2, length=16)


def test_data_errors_name_the_file_and_line(model, tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        probe_tokens(model, str(tmp_path), n=1, length=8)
    f = tmp_path / "bad.jsonl"
    f.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 14\)"):
        probe_tokens(model, str(f), n=1, length=8)


# --------------------------------------------------------------------------- CLI: before work, one line


@pytest.fixture
def no_load(monkeypatch):
    """Loading a model fails the test: the checks must come first."""
    import sink_interp

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(sink_interp, "load_model", boom)


def _one_line(capsys, rc, code=2, *needles):
    o = capsys.readouterr()
    assert rc == code, o
    lines = o.err.strip().splitlines()
    assert len(lines) == 1, o.err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_output_paths_are_checked_before_the_model_is_loaded(tmp_path, capsys, no_load):
    rc = cli.main(["measure", "--model", "tiny-gqa", "--json", str(tmp_path)])
    _one_line(capsys, rc, 2, "--json", str(tmp_path), "is a folder")
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    rc = cli.main(["report", "--model", "tiny-gqa", "--out", str(blocker / "report.html")])
    _one_line(capsys, rc, 2, "--out", "not a folder")
    assert blocker.read_text() == "mine"


def _measure_raises(monkeypatch, exc):
    """``sink-interp measure`` whose work raises ``exc`` (after the arguments are parsed and checked)."""

    def fail(args):
        raise exc

    parser = cli.build_parser

    def build():
        p = parser()
        p._subparsers._group_actions[0].choices["measure"].set_defaults(func=fail)
        return p

    monkeypatch.setattr(cli, "build_parser", build)


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    _measure_raises(monkeypatch, KeyboardInterrupt())
    rc = cli.main(["measure"])
    _one_line(capsys, rc, 130, "interrupted")


def test_out_of_memory_is_one_line_with_the_lse_hint(monkeypatch, capsys):
    _measure_raises(monkeypatch, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB"))
    rc = cli.main(["measure"])
    _one_line(capsys, rc, 2, "out of memory", "--method lse")
    with pytest.raises(torch.OutOfMemoryError):
        cli.main(["measure", "--debug"])


def test_cli_length_past_a_learned_context_is_one_line(tmp_path, capsys):
    d = tiny_checkpoint("gpt2", tmp_path / "gpt2")
    from transformers import AutoConfig

    n_ctx = AutoConfig.from_pretrained(str(d)).n_positions
    rc = cli.main(["measure", "--model", str(d), "--data", "random", "--n", "1", "--length", str(n_ctx + 1), "--quiet"])
    _one_line(capsys, rc, 2, f"length {n_ctx + 1} exceeds the context", f"--length {n_ctx}")


def test_fused_engine_sums_with_a_nan_are_refused_naming_the_sample(model, monkeypatch):
    """The fused engine runs no hooks: its column sums are checked at the end, and the sample re-run to explain."""
    import sink_interp.fused as fused

    real = fused.fused_column_sums
    calls = []

    def spoiled(*a, **k):
        col, rows, info = real(*a, **k)
        calls.append(col.shape[0])
        if col.shape[0] == 3:  # the full run, not the short self-check
            col = col.clone()
            col[1].view(-1)[0] = float("nan")
        return col, rows, info

    monkeypatch.setattr(fused, "fused_column_sums", spoiled)
    seen = []
    monkeypatch.setattr("sink_interp.lse.explain_non_finite", lambda m, toks, seen_at="": seen.append(toks) or seen_at)
    x = torch.randint(4, 128, (3, 16))
    with pytest.raises(NonFiniteError, match="fused engine's column sums"):
        measure_sinks(model, x, method="lse", progress=False)
    assert 3 in calls and len(seen) == 1 and torch.equal(seen[0].cpu(), x[1:2])  # the sample that holds the NaN
