"""A report file is data, never a risk: ``load_report`` refuses bombs before inflating them and tampered
files by the field, in one line that names the file.

The hostile files are made here by hand from the JSON a report writes (the reference is the file format
itself, not the loader): arrays re-encoded with other shapes, dtypes or bytes, fields removed or changed,
and zlib streams of zeros that inflate a thousand-fold. Memory and time of the bomb are measured in a fresh
process with ``resource.getrusage``.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

import sink_interp as si
from sink_interp._internal.report import ReportFileError

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- hand-made arrays and bombs


def zlib_zeros(n_bytes: int, piece: int = 1 << 20) -> bytes:
    """A valid zlib stream of ``n_bytes`` zeros (~1000x smaller), made in milliseconds.

    Full flushes reset the compressor, so every 1 MiB piece compresses to the same bytes: the stream is
    one header piece, the repeated piece, an empty final block and the Adler-32 of n zeros, which is
    ``(n mod 65521) << 16 | 1`` (sum A stays 1, sum B grows by 1 per byte).
    """
    assert n_bytes % piece == 0
    c = zlib.compressobj(9)
    first = c.compress(bytes(piece)) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(bytes(piece)) + c.flush(zlib.Z_FULL_FLUSH)
    empty = zlib.compress(b"", 9)[2:-4]  # a final empty block, without the header and the checksum
    adler = ((n_bytes % 65521) << 16) | 1
    return first + again * (n_bytes // piece - 1) + empty + struct.pack(">I", adler)


def test_zlib_zeros_is_what_zlib_inflates():
    n = 5 << 20
    assert zlib.decompress(zlib_zeros(n)) == bytes(n)


def array_json(a: np.ndarray, dtype: str | None = None, shape: list[int] | None = None) -> dict[str, Any]:
    a = np.ascontiguousarray(a)
    return {
        "__ndarray__": base64.b64encode(zlib.compress(a.tobytes())).decode(),
        "dtype": dtype or a.dtype.str,
        "shape": list(a.shape) if shape is None else shape,
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A SinkReport with a real sink (alpha_1 of heads 0.9+) as written, its JSON and its alpha."""
    model = si.tiny_model()
    toks = torch.randint(4, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    rep = si.measure_sinks(model, toks, progress=False)
    path = tmp_path_factory.mktemp("rep") / "sinks.json"
    rep.to_json(path)
    return {"path": path, "json": json.loads(path.read_text()), "rep": rep}


def write(tmp_path: Path, d: Any, name: str = "hostile.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(d) if not isinstance(d, str) else d)
    return p


# --------------------------------------------------------------------------- bombs: refused within 2 s and 200 MB

MEASURE = textwrap.dedent(
    """
    import resource, sys, time
    import sink_interp as si
    si.load_report(sys.argv[2])  # a good report first: every import and registry is loaded before measuring
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    try:
        si.load_report(sys.argv[1])
        out = "LOADED"
    except Exception as e:
        out = type(e).__name__ + ": " + str(e)
    print(time.perf_counter() - t)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)  # MB (ru_maxrss is in KiB)
    print(out)
    """
)


def _load_in_fresh_process(path: Path, good: Path) -> tuple[float, float, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), str(good)], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    seconds, grew, message = r.stdout.strip().split("\n", 2)
    return float(seconds), float(grew), message


@pytest.mark.parametrize(
    "case",
    [
        "declared 8 GiB",  # the bomb: alpha's shape declares 8 GiB, its data is 8 GiB of zeros (8 MB)
        "declared 2 KiB, inflates to 4 GiB",  # the shape lies small: the data alone is the bomb
        "declared 1 GiB in 40 fields of 26 MiB",  # each under the floor, together far beyond it
    ],
)
def test_a_bomb_is_refused_in_2_s_and_200_mb(saved, tmp_path, case):
    d = copy.deepcopy(saved["json"])
    fields = d["report"]["fields"]
    if case == "declared 8 GiB":
        n = 8 << 30
        fields["alpha"] = {"__ndarray__": base64.b64encode(zlib_zeros(n)).decode(), "dtype": "<f4", "shape": [n // 512, 2, 4, 16]}
        want = "field alpha declares 8.0 GiB (shape [16777216, 2, 4, 16], float32)"
    elif case == "declared 2 KiB, inflates to 4 GiB":
        fields["alpha"] = {"__ndarray__": base64.b64encode(zlib_zeros(4 << 30)).decode(), "dtype": "<f4", "shape": [4, 2, 4, 16]}
        want = "field alpha holds more bytes than its shape [4, 2, 4, 16] and dtype float32 declare (2048)"
    else:
        piece = {"__ndarray__": base64.b64encode(zlib_zeros(26 << 20)).decode(), "dtype": "<f4", "shape": [26 << 18]}
        fields["distributed"] = {"__dict__": {f"x{i}": piece for i in range(40)}}
        want = "field distributed['x2'] declares 26.0 MiB"
    path = write(tmp_path, d)
    seconds, grew, message = _load_in_fresh_process(path, saved["path"])
    assert message.startswith(f"ReportFileError: {path}: {want}"), message
    assert "\n" not in message and "fix: " in message
    assert seconds < 2.0 and grew < 200, (seconds, grew)


def test_a_trusted_big_file_loads_with_max_bytes(saved, tmp_path):
    """The limit is a default, not a ceiling: a file declaring more than 16 x its size loads when the caller raises it."""
    d = copy.deepcopy(saved["json"])
    d["report"]["fields"]["distributed"] = {
        "__dict__": {
            "zeros": {"__ndarray__": base64.b64encode(zlib_zeros(80 << 20)).decode(), "dtype": "<f4", "shape": [20 << 20]}
        }
    }
    path = write(tmp_path, d)
    with pytest.raises(ReportFileError, match=r"max_bytes"):
        si.load_report(path)
    back = si.load_report(path, max_bytes=100 << 20)
    assert back.distributed["zeros"].shape == (20 << 20,) and not back.distributed["zeros"].any()
    assert back.distributed["zeros"].flags.writeable  # an array as any other report's, not a read-only view
    with pytest.raises(ValueError, match="max_bytes must be a whole number"):
        si.load_report(path, max_bytes=-1)


# --------------------------------------------------------------------------- tampered reports: refused naming the field


def _set(field: str, value: Any) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    return lambda f, s: f.__setitem__(field, value(s) if callable(value) else value)


def _alpha(fn: Callable[[np.ndarray], np.ndarray], **kw: Any) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    return lambda f, s: f.__setitem__("alpha", array_json(fn(s["rep"].alpha), **kw))


def _negative_last_key(a: np.ndarray) -> np.ndarray:
    """1 taken from the last key's score (weight 1/T in the row-sum identity) and 1/T added to the first key's
    (weight 1): the identity holds, the range does not."""
    b = a.copy()
    b[..., -1] -= 1.0
    b[..., 0] += 1.0 / a.shape[-1]
    return b


TAMPERED: dict[str, tuple[Callable[[dict[str, Any], dict[str, Any]], None], str]] = {
    # the five: each loaded silently with a wrong Sink_1 before
    "reversed shape": (
        _alpha(lambda a: a.transpose(3, 2, 1, 0)),
        "field row_sum has 4 entries along 'n' (shape [4, 2, 4]), but alpha has 16",
    ),
    "all-NaN alpha": (_alpha(lambda a: np.full_like(a, np.nan)), "field alpha holds 512 NaN/Inf of 512 values"),
    "eps=5": (_set("eps", 5), "field eps is 5; the sink threshold eps lies strictly between 0 and 1"),
    "shape [-1]": (
        lambda f, s: f["alpha"].__setitem__("shape", [-1]),
        "field alpha declares the shape [-1]; sizes are whole numbers >= 0",
    ),
    "dtype <i4 over float bytes": (
        lambda f, s: f["alpha"].__setitem__("dtype", "<i4"),
        "field alpha holds int32 values where the report keeps float numbers",
    ),
    # more of the same kind
    "alpha + 2": (_alpha(lambda a: a + 2), "field alpha does not add up to its row sums (row_sum)"),
    "alpha positions reversed": (_alpha(lambda a: a[..., ::-1]), "field alpha does not add up to its row sums"),
    "alpha negative, sums kept": (_alpha(_negative_last_key), "field alpha holds values from -0.9"),
    "float64 alpha": (_alpha(lambda a: a.astype(np.float64)), None),  # another float dtype is still a float: loads
    "one dimension missing": (
        _alpha(lambda a: a[0]),
        "field alpha has shape [2, 4, 16], not the 4 dimensions [n, layer, head, pos]",
    ),
    "bytes cut short": (
        lambda f, s: f["alpha"].__setitem__("shape", [4, 2, 4, 17]),
        "field alpha holds 2048 bytes, fewer than its shape [4, 2, 4, 17]",
    ),
    "eps as text": (_set("eps", "0.3"), "field eps holds a str ('0.3'), not float"),
    "eps NaN": (_set("eps", {"__float__": "nan"}), "field eps is nan"),
    "layers not a tuple": (_set("layers", "ab"), "field layers holds a str ('ab'), not tuple[int, ...]"),
    "layers too many": (_set("layers", {"__tuple__": [0, 1, 2]}), "field layers names 3 layers, but alpha holds 2"),
    "layers repeated": (_set("layers", {"__tuple__": [1, 1]}), "field layers holds [1, 1]; indices are distinct"),
    "proxy layer not measured": (_set("proxy_layers", {"__items__": [[7, "proxy"]]}), "field proxy_layers names layers [7]"),
    "row_sum missing": (lambda f, s: f.pop("row_sum"), "field row_sum is missing (a SinkReport needs it)"),
    "unknown field": (_set("zzz", 1), "field zzz is not a field of SinkReport"),
    "alpha is a number": (_set("alpha", 7), "field alpha holds an int (7), not Float[np.ndarray"),
    "alpha is a list": (_set("alpha", [1, 2]), "field alpha holds a list ([1, 2])"),
    "not base64": (
        lambda f, s: f["alpha"].__setitem__("__ndarray__", "!!!"),
        "field alpha holds array data that is not base64 text",
    ),
    "not zlib": (
        lambda f, s: f["alpha"].__setitem__("__ndarray__", base64.b64encode(b"notzlib").decode()),
        "field alpha holds array data that is not zlib-compressed",
    ),
    "cut zlib stream": (
        lambda f, s: f["alpha"].__setitem__(
            "__ndarray__", base64.b64encode(zlib.compress(s["rep"].alpha.tobytes())[:-40]).decode()
        ),
        "field alpha holds a cut (truncated) compressed stream",
    ),
    "object dtype": (lambda f, s: f["alpha"].__setitem__("dtype", "|O"), "field alpha declares the dtype '|O'"),
    "structured dtype": (
        lambda f, s: f["alpha"].__setitem__("dtype", [["a", "<f4"]]),
        "field alpha declares the dtype [['a', '<f4']]",
    ),
    "unknown record": (
        _set("distributed", {"__record__": "Nope", "fields": {}}),
        "field distributed holds a record of unknown type 'Nope'",
    ),
    "bad float tag": (_set("eps", {"__float__": "1e999"}), "field eps holds the float '1e999'"),
    "dict items with a list key": (
        _set("proxy_layers", {"__items__": [[{"__dict__": {}}, "proxy"]]}),
        "field proxy_layers[0] has a key that cannot be a dict key",
    ),
    "nested 300 deep": (
        _set("distributed", json.loads('{"__dict__": {"a": ' + "[" * 300 + "]" * 300 + "}}")),
        "field distributed['a']" + "[0]" * 28 + "... is nested more than 200 levels deep",
    ),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_report_is_refused_naming_the_field(saved, tmp_path, case):
    edit, want = TAMPERED[case]
    d = copy.deepcopy(saved["json"])
    edit(d["report"]["fields"], saved)
    path = write(tmp_path, d)
    if want is None:
        back = si.load_report(path)
        np.testing.assert_array_equal(back.alpha, saved["rep"].alpha)
        return
    with pytest.raises(ReportFileError) as e:
        si.load_report(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: {want}"), msg
    assert "\n" not in msg and "; fix: " in msg


@pytest.mark.parametrize(
    "text, want",
    [
        (b'{"a": "\xff"}', "is not UTF-8 text (byte 7: b'\\xff')"),
        (b"[" * 100_000 + b"]" * 100_000, "is nested too deeply to be a report"),
        (b'{"report": ', "is not JSON (Expecting value at line 1)"),
        (b'{"report": {"type": "SinkReport", "fields": [1]}}', "field report.fields is not a JSON object"),
        (b'{"report": {"type": "Bomb", "fields": {}}}', "holds a 'Bomb', which this version does not know"),
        (b'{"report": {"type": ["SinkReport"], "fields": {}}}', "holds a ['SinkReport'], which this version does not know"),
        (b'{"x": 1' + b"1" * 5000 + b"}", "is not JSON (Exceeds the limit"),
        (b"[1, 2]", "holds no report (a JSON list)"),
    ],
)
def test_a_file_that_is_no_report_is_one_line_naming_it(tmp_path, text, want):
    path = tmp_path / "x.json"
    path.write_bytes(text)
    with pytest.raises(ReportFileError) as e:
        si.load_report(path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and msg[len(str(path)) :].lstrip(": ").startswith(want) and "\n" not in msg, msg


def test_old_summary_only_sink_report_is_checked_too(saved, tmp_path):
    """A file of the old ``include_alpha=True`` kind (alpha as a JSON list) goes through the same checks."""
    rep = saved["rep"]
    old = {**rep.summary(), "alpha": rep.alpha.tolist(), "row_sum": rep.row_sum.tolist()}
    assert np.array_equal(si.load_report(write(tmp_path, old, "old.json")).alpha, rep.alpha)
    bad = {**old, "alpha": (rep.alpha * 0 + np.nan).tolist()}
    with pytest.raises(ReportFileError, match=r"old_bad.json: field alpha holds 512 NaN/Inf"):
        si.load_report(write(tmp_path, bad, "old_bad.json"))
    ragged = {**old, "alpha": [[1.0], [1.0, 2.0]]}
    with pytest.raises(ReportFileError, match=r"old_ragged.json: a SinkReport summary that does not make a report \(ValueError"):
        si.load_report(write(tmp_path, ragged, "old_ragged.json"))


# --------------------------------------------------------------------------- other report types


def _reports() -> dict[str, Any]:
    m = si.tiny_model()
    t = torch.randint(4, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    return {
        "massive": si.massive_activations(m, t, progress=False),
        "patch": si.patch_heads(m, t, t.roll(1, 0), "logprob", layers=[1], progress=False),
        "long": si.long_context_sinks(
            m, torch.randint(4, 128, (1, 32), generator=torch.Generator().manual_seed(2)), buckets=2, progress=False
        ),
        "stream": si.streaming_ppl(
            m, torch.randint(4, 128, (2, 24), generator=torch.Generator().manual_seed(1)), n_sinks=1, window=8, progress=False
        ),
        "summary": si.sink_summary(m, t, progress=False),
    }


OTHER: dict[str, tuple[str, Callable[[dict[str, Any]], None], str]] = {
    "massive: a negative |x|": (
        "massive",
        lambda f: f.__setitem__("top_abs", array_json(-np.ones((4, 2, 5), np.float32))),
        "field top_abs holds values from -1 to -1, outside [0, inf]",
    ),
    "massive: position past the input": (
        "massive",
        lambda f: f.__setitem__("top_pos", array_json(np.full((4, 2, 5), 99))),
        "field top_pos holds values from 99 to 99, outside [0, 15]",
    ),
    "massive: nested sink report eps": (
        "massive",
        lambda f: f["sink_report"]["fields"].__setitem__("eps", 1.5),
        "field sink_report.eps is 1.5",
    ),
    "patch: NaN for a patched head": (
        "patch",
        lambda f: f.__setitem__("values", array_json(np.full((2, 4), np.nan))),
        "field values holds NaN for 4 patched heads",
    ),
    "patch: clean Inf": ("patch", lambda f: f.__setitem__("clean", {"__float__": "inf"}), "field clean is inf"),
    "patch: head out of range": (
        "patch",
        lambda f: f.__setitem__("heads", {"__tuple__": [0, 9]}),
        "field heads holds [0, 9]; indices are distinct, in [0, 4)",
    ),
    "long: Inf in a bucket": (
        "long",
        lambda f: f.__setitem__("bucket_alpha", array_json(np.full((1, 2, 4, 2, 32), np.inf, np.float32))),
        "field bucket_alpha holds Inf",
    ),
    "long: edges do not reach the end": (
        "long",
        lambda f: f.__setitem__("edges", {"__tuple__": [0, 16, 20]}),
        "field edges is [0, 16, 20]",
    ),
    "stream: negative loss": (
        "stream",
        lambda f: f.__setitem__("nll", array_json(-np.ones((4, 23)))),
        "field nll holds values from -1 to -1",
    ),
    "stream: conditions do not match": (
        "stream",
        lambda f: f.__setitem__("conditions", {"__tuple__": ["full"]}),
        "field conditions names 1 conditions, but nll holds 4",
    ),
    "summary: counts above n": (
        "summary",
        lambda f: f.__setitem__("counts", array_json(np.full((19, 2, 4, 16), 9))),
        "field counts holds values from 9 to 9, outside [0, 4]",
    ),
    "summary: eps off the grid": ("summary", lambda f: f.__setitem__("eps", 0.33), "field eps is 0.33, which is not on eps_grid"),
}


@pytest.fixture(scope="module")
def others(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("others")
    out = {}
    for name, rep in _reports().items():
        rep.to_json(d / f"{name}.json")
        out[name] = json.loads((d / f"{name}.json").read_text())
        assert type(si.load_report(d / f"{name}.json")) is type(rep)  # as written: loads
    return out


@pytest.mark.parametrize("case", list(OTHER))
def test_other_tampered_reports_are_refused_naming_the_field(others, tmp_path, case):
    kind, edit, want = OTHER[case]
    d = copy.deepcopy(others[kind])
    edit(d["report"]["fields"])
    path = write(tmp_path, d)
    with pytest.raises(ReportFileError) as e:
        si.load_report(path)
    assert str(e.value).startswith(f"{path}: {want}"), str(e.value)


def test_load_report_in_a_fresh_process(saved):
    """``import sink_interp; sink_interp.load_report(path)`` with nothing else imported finds the report's class
    (before, the lazy package had not imported the analyses: "holds a 'SinkReport', which this version does not know")."""
    code = "import sink_interp, sys; print(type(sink_interp.load_report(sys.argv[1])).__name__)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code, str(saved["path"])], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "SinkReport", r.stderr[-2000:]
