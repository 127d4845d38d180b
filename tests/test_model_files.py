"""A model folder is data, never a risk: ``load_model`` reads only the weights its index (or
``model.safetensors``) names, like Hugging Face's own loader; a planted pickle, a cut safetensors file and a
bad ``config.json`` are one line naming the file; ``--fresh`` removes only what the run's save recorded.

References: Hugging Face's ``from_pretrained`` on the same folder (which weights it reads), the
safetensors format itself (files cut by hand), and the bytes of every user file before and after.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import sink_interp as si
from sink_interp.cli import main
from sink_interp.training import load_trained, train
from sink_interp.training.model import MARKER

from .test_train import tiny
from .test_train_safety import SMALL, snapshot


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (its model/ folder is copied by each test that changes it)."""
    d = tmp_path_factory.mktemp("trained") / "run"
    train(tiny(steps=2), d, progress=False)
    return d


def copy_run(trained: Path, tmp_path: Path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(trained, d, ignore=shutil.ignore_patterns(".sink_interp.lock"))
    return d


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- which weights are read


def test_an_extra_safetensors_file_is_not_read(trained, tmp_path):
    """Before: every *.safetensors was merged (mean alpha_1 0.0867 -> 0.0772 on a trained run in the issue)."""
    from transformers import AutoModelForCausalLM

    md = copy_run(trained, tmp_path) / "model"
    toks = torch.randint(4, 12, (4, 12), generator=torch.Generator().manual_seed(0))
    clean = si.measure_sinks(si.load_model(str(md), device="cpu"), toks, progress=False)
    st = load_file(str(md / "model.safetensors"))
    save_file({k: torch.randn_like(v) * 3 for k, v in st.items()}, str(md / "zz_experiment.safetensors"))
    lab = load_trained(md)
    hf = AutoModelForCausalLM.from_pretrained(str(md))  # Hugging Face's own choice of files: the reference
    ref = _weights(hf)
    ours = {k: v for k, v in lab.state_dict().items() if k in ref}
    assert ours and all(torch.equal(ours[k], ref[k]) for k in ours)
    after = si.measure_sinks(si.load_model(str(md), device="cpu"), toks, progress=False)
    assert (after.alpha == clean.alpha).all()


def test_a_sharded_checkpoint_reads_the_files_its_index_names(trained, tmp_path):
    md = copy_run(trained, tmp_path) / "model"
    ref = load_trained(md).state_dict()
    st = load_file(str(md / "model.safetensors"))
    names = sorted(st)
    half = len(names) // 2
    save_file({k: st[k] for k in names[:half]}, str(md / "model-00001-of-00002.safetensors"))
    save_file({k: st[k] for k in names[half:]}, str(md / "model-00002-of-00002.safetensors"))
    weight_map = {
        k: ("model-00001-of-00002.safetensors" if i < half else "model-00002-of-00002.safetensors") for i, k in enumerate(names)
    }
    (md / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    save_file({k: torch.zeros_like(v) for k, v in st.items()}, str(md / "model.safetensors"))  # not named by the index
    got = load_trained(md).state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    weight_map[names[0]] = "../../outside.safetensors"
    (md / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(
        ValueError, match=r"model.safetensors.index.json names the file '../../outside.safetensors', which is not in the folder"
    ):
        load_trained(md)


# --------------------------------------------------------------------------- hostile files: one line naming the file


class Payload:
    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling would create the file


def _plant(md: Path, case: str, tmp_path: Path) -> str:
    """Damage one file of ``md``; returns the file name the one line must name."""
    if case == "planted pickle":
        with open(md / "sink_knobs.pt", "wb") as f:
            pickle.dump({"x": Payload(tmp_path / "pwned")}, f, protocol=2)
        return "sink_knobs.pt holds more than tensors and plain data (it would need code to load); refused, nothing in it was run"
    if case == "planted torch.save":
        torch.save({"x": Payload(tmp_path / "pwned")}, md / "sink_knobs.pt")
        return "sink_knobs.pt holds more than tensors and plain data"
    if case == "cut safetensors":
        data = (md / "model.safetensors").read_bytes()
        (md / "model.safetensors").write_bytes(data[: len(data) // 2])
        return f"model.safetensors is cut short: {len(data) // 2} bytes, its header describes {len(data)}"
    if case == "safetensors header garbage":
        (md / "model.safetensors").write_bytes(b"\xff" * 64)
        return "model.safetensors is not a complete safetensors file"
    if case == "bad config.json":
        (md / "config.json").write_text('{"vocab_size": 12,')
        return "config.json is not valid JSON (Expecting property name enclosed in double quotes at line 1, column 19)"
    if case == "config.json a list":
        (md / "config.json").write_text("[1]")
        return "config.json holds a JSON list, not a JSON dict"
    if case == "bad marker":
        (md / MARKER).write_text('{"format": 1, "train_config": {"d_model": "x"}}')
        return f"{MARKER} does not hold a valid train_config"
    if case == "weights missing":
        (md / "model.safetensors").unlink()
        return "lacks the weights file model.safetensors"
    raise AssertionError(case)


CASES = [
    "planted pickle",
    "planted torch.save",
    "cut safetensors",
    "safetensors header garbage",
    "bad config.json",
    "config.json a list",
    "bad marker",
    "weights missing",
]


@pytest.mark.parametrize("case", CASES)
def test_a_damaged_trained_folder_is_one_line_naming_the_file(trained, tmp_path, case):
    md = copy_run(trained, tmp_path) / "model"
    want = _plant(md, case, tmp_path)
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        si.load_model(str(md), device="cpu")
    msg = str(e.value)
    assert want in msg and str(md) in msg and "\n" not in msg and "fix: " in msg, msg
    assert "weights_only=False" not in msg
    assert not (tmp_path / "pwned").exists()  # the payload never ran


@pytest.mark.parametrize("case", ["planted pickle", "cut safetensors", "bad config.json"])
def test_the_cli_gives_one_line_for_a_damaged_model_folder(trained, tmp_path, capsys, case):
    """Before: a 42-line UnpicklingError (suggesting weights_only=False), and tracebacks for the other two."""
    md = copy_run(trained, tmp_path) / "model"
    want = _plant(md, case, tmp_path)
    code = main(["measure", "--model", str(md), "--data", "random", "--n", "2", "--length", "8", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and want in err[0], err
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("case", ["cut safetensors", "bad config.json"])
def test_a_damaged_hugging_face_folder_is_one_line_naming_the_file(tmp_path, case):
    """A plain Hugging Face checkpoint (not trained here) gets the same checks before Hugging Face reads it."""
    from sink_interp.models import tiny_hf_model

    md = tmp_path / "hf"
    tiny_hf_model().save_pretrained(str(md))
    assert si.load_model(str(md), device="cpu") is not None
    want = _plant(md, case, tmp_path)
    with pytest.raises(ValueError) as e:
        si.load_model(str(md), device="cpu")
    assert want in str(e.value) and "\n" not in str(e.value), str(e.value)


# --------------------------------------------------------------------------- --fresh keeps user files


@pytest.mark.parametrize("name", ["tokenizer_notes.txt", "zz_experiment.safetensors", "model-00001-of-00009.safetensors"])
def test_fresh_keeps_user_files_inside_model(trained, tmp_path, capsys, name):
    """Before: --fresh deleted user files inside model/ whose names matched Hugging Face patterns."""
    d = copy_run(trained, tmp_path)
    (d / "model" / name).write_bytes(b"mine")
    before = snapshot(d)
    args = ["train", "--preset", "bb-softmax", "--steps", "2", "--fresh", "--out", str(d), "--quiet"]
    code = main(args + SMALL)  # refused before any training: the folder's model/ is checked first
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and name in err[0] and "its save did not write" in err[0], err
    after = snapshot(d)
    assert {k: v for k, v in after.items() if ".lock" not in k} == {k: v for k, v in before.items() if ".lock" not in k}


def test_fresh_keeps_a_file_the_save_wrote_if_the_user_changed_it(trained, tmp_path):
    d = copy_run(trained, tmp_path)
    (d / "model" / "config.json").write_text((d / "model" / "config.json").read_text().replace("{", '{"my_note": 1, ', 1))
    with pytest.raises(FileExistsError, match=r"holds config.json, which its save did not write \(or which changed since\)"):
        train(tiny(steps=2), d, resume=False, progress=False)
    assert "my_note" in (d / "model" / "config.json").read_text()


def test_fresh_removes_what_the_save_recorded_and_nothing_else(trained, tmp_path):
    d = copy_run(trained, tmp_path)
    recorded = json.loads((d / "model" / MARKER).read_text())["files"]
    assert set(recorded) == {e.name for e in (d / "model").iterdir()} - {MARKER}
    assert all(set(r) == {"size", "sha256"} for r in recorded.values())
    (d / "notes.txt").write_text("mine")
    res = train(tiny(steps=2, lr=0.01), d, resume=False, progress=False)
    assert res.resumed_from is None and (d / "notes.txt").read_text() == "mine"


def test_a_save_of_an_older_version_is_still_replaced(trained, tmp_path):
    """A model folder written before saves kept their record: its known file names are its own."""
    d = copy_run(trained, tmp_path)
    meta = json.loads((d / "model" / MARKER).read_text())
    del meta["files"]
    (d / "model" / MARKER).write_text(json.dumps(meta))
    (d / "model" / "tokenizer_notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="tokenizer_notes.txt"):
        train(tiny(steps=2), d, resume=False, progress=False)
    (d / "model" / "tokenizer_notes.txt").unlink()
    assert train(tiny(steps=2, lr=0.01), d, resume=False, progress=False).resumed_from is None
