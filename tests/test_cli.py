"""The sink-interp command: output, JSON contents and error exits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sink_interp.cli import main


def test_measure_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(
        ["measure", "--model", "tiny-gqa", "--data", "random", "--n", "6", "--length", "12", "--json", str(out), "--quiet"]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "Sink_1 =" in text and "per layer" in text and "top" in text
    d = json.loads(out.read_text())
    for key in ("model", "eps", "length", "n", "bos", "sink_rates", "layer_rates"):
        assert key in d
    assert d["model"] == "tiny-gqa" and d["n"] == 6 and d["length"] == 12 and d["bos"] is False and d["eps"] == 0.3
    assert len(d["sink_rates"]) == 12 and len(d["layer_rates"]) == 2
    assert d["sink_rates"][0] == pytest.approx(d["sink_rate_1"])


@pytest.mark.parametrize(
    "method, line",
    [("lse-hooks", "lse through the bridge's hooks (not fused: method='lse-hooks')"), ("lse-fused", "lse, fused attention")],
)
def test_measure_method_picks_the_lse_engine(capsys, method, line):
    base = ["measure", "--model", "tiny-gqa", "--data", "random", "--n", "2", "--length", "12", "--quiet"]
    assert main([*base, "--method", method]) == 0
    assert f"method  {line}" in capsys.readouterr().out


def test_measure_jsonl_with_bos(tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text("\n".join(json.dumps({"text": " ".join(f"t{i}" for i in range(5, 30))}) for _ in range(4)))
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "measure",
                "--model",
                "tiny-mha",
                "--data",
                str(data),
                "--n",
                "3",
                "--length",
                "8",
                "--bos",
                "--json",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    d = json.loads(out.read_text())
    assert d["bos"] is True and d["data"] == str(data)


@pytest.mark.parametrize(
    "args, match",
    [
        (["--model", "no-such-model"], "unknown model name"),
        (["--model", "tiny-gqa", "--eps", "1.5"], "eps"),
        (["--model", "tiny-gqa", "--length", "1"], "length"),
        (["--model", "tiny-gqa", "--data", "missing.jsonl"], "no such file 'missing.jsonl'"),
    ],
)
def test_measure_errors_exit_2_with_a_message(capsys, args, match):
    assert main(["measure", "--quiet", "--n", "2", *args]) == 2
    assert match in capsys.readouterr().err


def test_massive_prints_and_writes_json_equal_to_the_residual_stream(tmp_path, capsys):
    """`sink-interp massive`: each layer's max |x| entering the block, checked against the cached residual stream."""
    import torch

    from sink_interp import load_model, probe_tokens

    out = tmp_path / "m.json"
    args = ["--model", "tiny-gqa", "--data", "random", "--n", "3", "--length", "12", "--seed", "4"]
    assert main(["massive", *args, "--json", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "max |x|" in text and "extreme tokens" in text and f"wrote {out}" in text
    d = json.loads(out.read_text())
    model = load_model("tiny-gqa")
    tokens = probe_tokens(model, "random", n=3, length=12, seed=4).tokens
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    for layer, row in enumerate(d["layers"]):
        x = cache[f"blocks.{layer}.hook_resid_pre"].abs()
        assert row["max"] == pytest.approx(float(x.max()), rel=1e-6)
        s, p, k = (int(i) for i in np.unravel_index(int(x.argmax()), x.shape))
        assert (row["sample"], row["pos"], row["dim"]) == (s, p, k)


HEAVY = ("torch", "pandas", "transformers", "transformer_lens", "numpy")


@pytest.mark.parametrize(
    "argv, code, says",
    [
        (["--help"], 0, "usage: sink-interp"),
        (["report", "--help"], 0, "--no-interventions"),
        (["train", "--help"], 0, "bb-softmax"),
        (["measure", "--n", "-3"], 2, "argument --n: must be >= 1, got -3"),
        (["measure", "--eps", "0"], 2, "argument --eps: must be between 0 and 1 (exclusive), got 0"),
        (["trace", "--data", "nope.jsonl"], 2, "argument --data: no such file 'nope.jsonl'"),
        (["patch", "--corrupt", "nope"], 2, "invalid choice: 'nope'"),
    ],
)
def test_help_and_argument_errors_answer_without_loading_torch(argv, code, says):
    """`--help` and wrong arguments come back before any heavy module is imported (so in well under 2 s)."""
    import subprocess
    import sys

    probe = (
        "import sys, contextlib, io; from sink_interp.cli import main; out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out): rc = main(sys.argv[1:])\n"
        f"print(rc, sorted(m for m in {HEAVY!r} if m in sys.modules)); print(out.getvalue())"
    )
    res = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=60)
    first, _, rest = res.stdout.partition("\n")
    assert first == f"{code} []", res.stdout + res.stderr
    assert says in rest
    if code == 2:
        assert len(rest.strip().splitlines()) <= 3  # usage lines and the one-line error, no traceback
