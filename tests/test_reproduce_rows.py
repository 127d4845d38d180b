"""The reproduction table: every finding plans on its seeds and tabulates; a claim is decided across seeds (agree,
disagree or mixed); the judges the audit found lenient or strict now give the right verdict on hand-made numbers
the old ones got wrong; one row's command re-makes its numbers bit for bit; what is published re-tabulates."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from sink_interp.cli import main
from sink_interp.training.config import preset
from sink_interp.training.reproduce import FINDINGS, SEEDS, Run, decide, plan, reproduce
from sink_interp.training.reproduce.runs import mean_of, tail_mean
from sink_interp.training.reproduce.verdict import all_of, any_of, check

TINY = dict(
    d_model=32, d_mlp=64, seq_len=16, batch_size=4, eval_batches=1, probe_n=4, bb_vocab=16, text_vocab=300, text_corpus="natural"
)
ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- the plan


def test_the_findings_and_the_kbias_family_counted_once():
    assert len(FINDINGS) >= 25 and all(f.paper and f.claim for f in FINDINGS.values())
    merged = {"kv_bias", "bias_headwise", "kbias_fixed_v", "kbias_da", "kbias_official_rope", "sigmoid_mass"}
    assert not merged & set(FINDINGS)  # one finding each for the K-bias family and for sigmoid
    arms = set(FINDINGS["kbias"].configs("cpu"))
    assert {"kbias", "kv", "da1", "e1_x20", "ones_x5", "nope_kbias", "deep_kbias", "k_head", "kv_head", "bos_kbias"} <= arms
    # claims that are not in the seed documents say so in the row
    assert FINDINGS["relu_sgd"].not_in_seeds and FINDINGS["batch_size"].not_in_seeds and FINDINGS["data_amount"].not_in_seeds
    assert "5v' 3.71" in FINDINGS["kbias"].paper and "20v' 3.71" not in FINDINGS["kbias"].paper  # the seed's table


@pytest.mark.parametrize("scale", ["cpu", "gpu"])
def test_every_finding_plans_on_its_seeds(scale):
    p = plan("all", scale=scale)
    assert set(p.findings) == set(FINDINGS)
    dirs = [s.dir for s in p]
    assert len(dirs) == len(set(dirs))  # shared runs once
    for n, f in FINDINGS.items():
        arms = p.arms(n)
        assert arms, n
        for key, by_seed in arms.items():
            assert tuple(sorted(by_seed)) == tuple(sorted(f.seeds_at(scale))), (n, key)
            assert len({s.dir for s in by_seed.values()}) == len(by_seed)  # one folder per seed
    if scale == "cpu":
        assert all(len(v) >= 3 for n in FINDINGS if n != "text-emergence" for v in p.arms(n).values())
        assert all(len(v) >= 2 for v in p.arms("text-emergence").values())  # the 40k run too: no check rests on one seed
    else:
        assert all(s.config.task == "text" and s.config.d_model == 768 for s in p)
        assert all(s.config.batch_size == 512 for s in p if s.config.batch_size not in (128, 256, 1024))  # the paper's batch


def test_seeds_name_their_folders_and_measurements_go_with_the_runs():
    p = plan(["window", "lr"])
    base = p.arms("lr")["base"]
    assert base[0].config.seed == 0 and base[1].config.seed == 1 and base[1].config.name.endswith("-seed1")
    assert base[0] is p.arms("window")["base"][0]  # shared between findings
    assert set(p.arms("window")["base"][0].measures) == {"window:8", "window:32"}
    assert p.arms("window")["small"][2].measures == ("window",)


def test_the_papers_protocol():
    p = plan(["weight_decay", "lr_constant_budget", "kbias", "sink_token"])
    for s in p.uses("weight_decay").values():
        assert s.config.schedule == "cosine"
    paper = sorted(round(s.config.weight_decay * s.config.lr / 4e-4, 6) for s in p.uses("weight_decay").values())
    assert paper == [0.0, 0.1, 0.5, 1.0, 2.0, 5.0]
    assert len({round(s.config.lr * s.config.steps, 9) for s in p.uses("lr_constant_budget").values()}) == 1
    kb = p.uses("kbias")
    assert all(s.config.bb_bos_num == 0 for k, s in kb.items() if not k.startswith("bos_"))  # packed without BOS
    assert kb["bos_kbias"].config.bb_bos_num == 1  # the with-BOS arm beside
    st = p.uses("sink_token")
    assert st["sink_token"].config.bb_bos_num == 0 and st["bos_sink_token"].config.bb_bos_num == 1
    assert preset("gpu-text-softmax").batch_size == 512


def test_override_keeps_whole_sequence_random_and_da_within_the_head():
    p = plan(["random_data", "kbias"], overrides={"seq_len": 16, "d_model": 32})
    c = p.uses("random_data")["random_all"].config
    assert (c.random_token_pos, c.random_token_count, c.seq_len) == (1, 16, 16)
    assert all((s.config.k_bias_dims or 32) <= 32 for s in p.uses("kbias").values())


# --------------------------------------------------------------------------- deciding across seeds


def test_decide_needs_every_seed_and_a_margin_beyond_the_spread():
    one = lambda v: all_of(check("Sink_1", v, "<", 5.0))  # noqa: E731
    assert decide([one(v) for v in (0.0, 0.8, 1.6)]).verdict == "agree"
    assert decide([one(v) for v in (9.0, 12.0, 30.0)]).verdict == "disagree"
    assert decide([one(v) for v in (0.0, 9.0, 1.0)]).verdict == "mixed"  # the seeds disagree
    rise = lambda v: all_of(check("rise", v, ">", 10.0))  # noqa: E731
    d = decide([rise(v) for v in (11.0, 30.0, 12.0)])  # each seed passes, but margin 7.7 < spread 10.7
    assert d.verdict == "mixed" and d.per_seed == ["agree"] * 3 and d.checks[0]["state"] == "unsure"
    assert decide([rise(12.0)]).verdict == "agree"  # one seed: as before
    assert decide([one(0.0)] * 3).verdict == "agree"  # no spread at all
    # Kleene logic: one robust failure fails an all_of; one robust pass passes an any_of
    mix = [all_of(check("a", 0.0, "<", 5.0), check("b", v, "<", 5.0)) for v in (0.0, 9.0, 1.0)]
    assert decide(mix).verdict == "mixed"
    mix = [all_of(check("a", 9.0, "<", 5.0), check("b", v, "<", 5.0)) for v in (0.0, 9.0, 1.0)]
    assert decide(mix).verdict == "disagree"
    mix = [any_of(check("a", 0.0, "<", 5.0), check("b", v, "<", 5.0)) for v in (0.0, 9.0, 1.0)]
    assert decide(mix).verdict == "agree"
    # a precondition that fails on every seed: not comparable; on some: mixed
    ok = [one(0.0)] * 2
    assert decide(ok, [check("sink", 0.0, ">=", 10.0)] * 2).verdict == "not comparable"
    assert decide(ok, [check("sink", v, ">=", 10.0) for v in (0.0, 40.0)]).verdict == "mixed"  # one seed left
    # a seed whose base forms no sink cannot test "the knob weakens it": left out, the other two decide
    d = decide([one(v) for v in (0.0, 1.0, 30.0)], [check("base sink", v, ">=", 10.0) for v in (40.0, 45.0, 2.0)])
    assert d.verdict == "agree" and d.per_seed == ["agree", "agree", "not comparable"]
    assert [r["values"] for r in d.checks] == [[40.0, 45.0, 2.0], [0.0, 1.0]] and d.checks[1]["seeds"] == [0, 1]


def test_the_final_number_is_the_mean_of_the_last_evaluations():
    from sink_interp.training.config import TrainConfig

    ms = tuple(
        {"step": s, "sink_rate_1": v, "sink_rates": [v, 1.0]}
        for s, v in [(0, 0.0), (600, 50.0), (700, 0.78), (800, 2.34), (1000, 3.91)]
    )
    run = Run("base", TrainConfig(steps=1000), "", ms)
    f = run.final
    assert f["sink_rate_1"] == pytest.approx((0.78 + 2.34 + 3.91) / 3) and f["tail_steps"] == [700, 800, 1000]
    assert run.last["sink_rate_1"] == 3.91 and f["top_sink_k"] == 1
    assert tail_mean(ms[:1], 1000)["sink_rate_1"] == 0.0  # nothing but step 0: that evaluation
    assert mean_of([{"a": 1, "b": [1.0, 3.0], "c": True, "d": "x"}, {"a": 3, "b": [3.0, 5.0], "c": False, "d": "y"}]) == {
        "a": 2.0,
        "b": [2.0, 4.0],
        "c": True,
        "d": "x",
    }


# --------------------------------------------------------------------------- the judges on hand-made numbers


def _m(sink1: float = 0.0, star: float = 0.0, rates: list[float] | None = None, **kw) -> dict:
    rates = rates or [sink1] + [0.0] * 15
    m = dict(
        step=1000,
        val_loss=1.0,
        train_loss=1.0,
        sink_rate_1=sink1,
        sink_rate_star=star,
        sink_mass=star / 100,
        sink_rates=rates,
        top_sink_k=1 + max(range(len(rates)), key=lambda k: rates[k]),
        mean_alpha_1=sink1 / 100,
        value_norm_ratio_top=1.0,
        max_abs_sink=1.0,
        max_abs_rest=1.0,
        resid_norm_ratio=1.0,
    )
    return m | kw


def _runs(finding: str, metrics: dict[str, dict], measured: dict[str, dict] | None = None) -> dict[str, Run]:
    cfgs = FINDINGS[finding].configs("cpu")
    return {k: Run(k, cfgs[k], "", ({**_m(), "step": 0}, metrics[k]), (measured or {}).get(k, {})) for k in cfgs}


def _verdict(finding: str, runs: dict[str, Run]) -> str:
    v = FINDINGS[finding].judge(runs)
    return decide([v.test], None if v.comparable is None else [v.comparable]).verdict


def _states(finding: str, runs: dict[str, Run]) -> dict[str, str]:
    return {row["check"]: row["state"] for row in decide([FINDINGS[finding].judge(runs).test]).checks}


def _win(vis: float, rel: float = 0.0) -> dict:
    return {"sink_rate_1_visible_queries": vis, "sink_rate_relative_first": rel, "alpha_1_bound": 0.12, "window": 8}


def test_window_tests_the_queries_that_see_the_first_token():
    """Old judge: `window Sink_1 < base - 10`, true by construction (alpha_1 <= w/T)."""
    metrics = {"base": _m(46.0), "small": _m(0.0), "half": _m(20.0)}
    same = {
        "base": {"window:8": _win(60.0), "window:32": _win(50.0)},
        "small": {"window": _win(60.0)},
        "half": {"window": _win(50.0)},
    }
    assert _verdict("window", _runs("window", metrics, same)) == "disagree"  # the first 8 queries sink as much: no mitigation
    ok = {
        "base": {"window:8": _win(60.0), "window:32": _win(50.0)},
        "small": {"window": _win(3.0)},
        "half": {"window": _win(45.0, 2.0)},
    }
    assert _verdict("window", _runs("window", metrics, ok)) == "agree"
    relative = dict(ok, half={"window": _win(2.0, 40.0)})  # the sink sits on the relative first token
    assert _verdict("window", _runs("window", metrics, relative)) == "disagree"


def _heads(alpha: float, vratio: float) -> dict:
    return {
        "alpha_1_raw": [[alpha]],
        "alpha_1_proxy": [[alpha]],
        "row_sum": [[1.0]],
        "value_ratio": [[vratio]],
        "z_ratio": [[0.5]],
        "dloss_bigram": [[0.1]],
        "dormant": [[False]],
    }


def test_sigmoid_needs_the_normalised_arm_itself_no_softmax_stand_in():
    """Old judge (sigmoid_mass): `or base sink heads` let softmax stand in for the with-normaliser arm."""
    heads = {k: {"heads": _heads(0.6, 0.2)} for k in ("base", "nonorm", "norm")}
    heads["nonorm"]["raw"] = {"sink_rate_1_raw": 0.0, "mean_alpha_1_raw": 0.0, "attn_mass": 2.0}
    no_return = {"base": _m(46.0, resid_norm_ratio=3.0), "nonorm": _m(0.0), "norm": _m(0.0, resid_norm_ratio=3.0)}
    assert _verdict("sigmoid", _runs("sigmoid", no_return, heads)) == "disagree"
    returns = dict(no_return, norm=_m(40.0, resid_norm_ratio=3.0))
    assert _verdict("sigmoid", _runs("sigmoid", returns, heads)) == "agree"
    peaked = dict(returns, nonorm=_m(0.0, resid_norm_ratio=2.76))  # no sink but a residual peak: the massive half fails
    assert _verdict("sigmoid", _runs("sigmoid", peaked, heads)) == "disagree"


def test_softpick_needs_no_massive_activation_too():
    """Old judge: Sink_1 < 5 only; softpick's BOS norm ratio 2.34 against softmax's 1.07 was ignored."""
    runs = _runs("softpick", {"base": _m(46.1, resid_norm_ratio=1.07), "softpick": _m(0.0, resid_norm_ratio=2.34)})
    assert _verdict("softpick", runs) == "disagree"
    runs = _runs("softpick", {"base": _m(46.1, resid_norm_ratio=1.07), "softpick": _m(0.0, resid_norm_ratio=1.1)})
    assert _verdict("softpick", runs) == "agree"


def _wd(sinks):
    keys = list(FINDINGS["weight_decay"].configs("cpu"))  # paper wd 0, 0.1, 0.5, 1, 2, 5
    return _runs("weight_decay", {k: _m(s) for k, s in zip(keys, sinks)})


def test_weight_decay_needs_a_real_rise():
    """Old judge passed a 3.9-point rise (5 of 128 cells) with the peak at 0.1."""
    assert _verdict("weight_decay", _wd((32.8, 36.7, 15.6, 0.8, 0.0, 0.0))) == "disagree"
    assert _verdict("weight_decay", _wd((15.2, 18.2, 41.1, 37.7, 6.1, 0.01))) == "agree"  # the paper's own numbers
    v = FINDINGS["weight_decay"].judge(_wd((15.2, 18.2, 41.1, 37.7, 6.1, 0.01)))
    assert v.numbers["paper_wd"] == [0.0, 0.1, 0.5, 1.0, 2.0, 5.0] and v.numbers["peak_at_paper_wd"] == 0.5


def _data(d16, d65, d131, d1m, full):
    keys = ("data16384", "data65536", "data131072", "data1048576", "data_all")
    return _runs("data_amount", dict(zip(keys, (d16, d65, d131, d1m, full))))


def test_data_amount_tests_not_overfitting():
    """Old judge agreed although its only no-sink arm was memorised (train 0.17, val 3.07)."""
    memorised = _m(0.0, train_loss=0.17, val_loss=3.07)
    full = _m(46.1, train_loss=1.1, val_loss=1.05)
    assert _verdict("data_amount", _data(memorised, full, full, full, full)) == "disagree"
    lean = _m(0.0, train_loss=1.3, val_loss=1.5)  # little data, no sink, not memorised
    assert _verdict("data_amount", _data(memorised, lean, full, full, full)) == "agree"
    all_memorised = _m(46.1, train_loss=0.1, val_loss=3.0)
    assert _verdict("data_amount", _data(memorised, all_memorised, all_memorised, all_memorised, full)) == "not comparable"


def _kbias_metrics(taken: dict[str, dict] | None = None) -> dict[str, dict]:
    keys = FINDINGS["kbias"].configs("cpu")
    out = {k: _m(0.0, 60.0) for k in keys}
    for fam in ("e1", "ones"):
        for x, star in ((1, 70.0), (5, 40.0), (20, 1.0)):
            out[f"{fam}_x{x}"] = _m(0.0 if x < 20 else 5.0, star)
    return out | (taken or {})


def _kbias_measured() -> dict[str, dict]:
    hs = {"alpha_1_raw": [[0.0], [0.0]], "row_sum": [[0.4], [0.3]]}
    return {k: {"heads-fast": hs} for k in ("kbias", "nope_kbias", "deep_kbias", "bos_kbias")}


def test_kbias_without_a_base_sink_can_pass():
    """Old judge: `Sink_1 < min(5, base)`, never true when the base has no sink (Sink_1 0 without BOS)."""
    m = _kbias_metrics({"base": _m(0.0)})
    assert _verdict("kbias", _runs("kbias", m, _kbias_measured())) == "agree"
    m = _kbias_metrics({"kbias": _m(46.0, 39.0)})  # the bias does not take the sink
    assert _verdict("kbias", _runs("kbias", m, _kbias_measured())) == "disagree"


def test_headwise_judges_its_own_claim_only():
    """Old judge (bias_headwise) failed on the K bias's failure again although head-wise behaved as shared."""
    same = {k: _m(23.0, 1.0) for k in ("k_shared", "k_head", "kv_shared", "kv_head")}
    states = _states("kbias", _runs("kbias", _kbias_metrics(same), _kbias_measured()))
    head = {c: s for c, s in states.items() if "vs" in c}
    assert len(head) == 4 and set(head.values()) == {"pass"}
    differ = dict(same, k_head=_m(0.0, 60.0))
    states = _states("kbias", _runs("kbias", _kbias_metrics(differ), _kbias_measured()))
    assert {s for c, s in states.items() if c.startswith("k head vs")} == {"fail"}


def test_other_judges_on_the_papers_numbers():
    f = {k: _m(s) for k, s in zip(FINDINGS["lr_constant_budget"].configs("cpu"), (23.44, 18.18, 16.81, 6.29))}
    assert _verdict("lr_constant_budget", _runs("lr_constant_budget", f)) == "agree"
    flat = {k: _m(30.0) for k in FINDINGS["lr_constant_budget"].configs("cpu")}
    assert _verdict("lr_constant_budget", _runs("lr_constant_budget", flat)) == "disagree"
    fixed = {"no_bos": _m(0.0)} | {f"fixed{p}": _m(rates=[0.0] * (p - 1) + [70.0] + [0.0] * (16 - p)) for p in (1, 2, 3)}
    assert _verdict("fixed_token", _runs("fixed_token", fixed)) == "agree"
    st = {"base": _m(0.0), "sink_token": _m(0.0, rates=[74.0] + [0.0] * 15), "bos_base": _m(46.0), "bos_sink_token": _m(35.9)}
    assert _verdict("sink_token", _runs("sink_token", st)) == "agree"
    assert _verdict("sink_token", _runs("sink_token", dict(st, sink_token=_m(35.9)))) == "disagree"
    alpha = {"base": _m(30.0), "alpha2": _m(20.0), "alpha4": _m(10.0)}
    assert _verdict("softmax_alpha", _runs("softmax_alpha", alpha)) == "agree"
    assert _verdict("softmax_alpha", _runs("softmax_alpha", dict(alpha, alpha2=_m(0.0), alpha4=_m(0.0)))) == "disagree"
    keys = FINDINGS["pos_types"].configs("cpu")
    assert _verdict("pos_types", _runs("pos_types", {k: _m(30.0) for k in keys})) == "agree"
    assert _verdict("pos_types", _runs("pos_types", {k: _m(0.0 if k == "nope" else 30.0) for k in keys})) == "disagree"


def test_prefix_is_not_comparable_without_a_positional_sink():
    keys = FINDINGS["prefix"].configs("cpu")
    none = {k: _m(46.0) if k.startswith("bos") else _m(0.0) for k in keys}
    v = FINDINGS["prefix"].judge(_runs("prefix", none))
    assert _verdict("prefix", _runs("prefix", none)) == "not comparable" and v.ours.startswith("not comparable")
    moved = dict(none, learned_causal=_m(40.0), learned_prefix=_m(rates=[5.0, 0.0, 35.0] + [0.0] * 13))
    assert _verdict("prefix", _runs("prefix", moved)) == "agree"
    stays = dict(none, learned_causal=_m(40.0), learned_prefix=_m(40.0))
    assert _verdict("prefix", _runs("prefix", stays)) == "disagree"


# --------------------------------------------------------------------------- running and tabulating


@pytest.mark.slow
def test_all_findings_run_and_tabulate_on_a_few_steps(tmp_path):
    table = reproduce("all", out=tmp_path, steps=2, overrides=TINY, seeds=[0, 1], progress=False)
    d = json.loads((tmp_path / "reproduce.json").read_text())
    assert d["n"] == len(FINDINGS) and sum(d[k] for k in ("agree", "disagree", "mixed", "not_comparable")) == d["n"]
    for r in d["rows"]:
        assert {"finding", "paper", "ours", "verdict", "agree", "numbers", "checks", "command", "runs", "seeds"} <= set(r)
        assert r["verdict"] in ("agree", "disagree", "mixed", "not comparable") and "not run" not in r["ours"]
        assert r["command"].startswith(f"sink-interp reproduce --finding {r['finding']} --steps 2 --seeds 0,1 ")
        assert r["seeds"] == [0, 1] and set(r["numbers"]["verdict_per_seed"]) == {"0", "1"}
        assert all(not Path(p).is_absolute() and (tmp_path / p).exists() for v in r["runs"].values() for p in v.values())
        assert (tmp_path / r["curves"]).is_file()
    md = (tmp_path / "reproduce.md").read_text()
    assert "| finding | paper | ours | verdict | command |" in md and "checks over seeds 0, 1" in md
    assert table.to_frame()["command"].str.contains("--finding").all()


def test_row_command_remakes_the_numbers_bit_for_bit(tmp_path):
    tiny = {**TINY, "eval_every": 2}
    argv = ["reproduce", "--finding", "fixed_token", "--steps", "3", "--seeds", "0,1", "--quiet", "--out", str(tmp_path / "a")]
    for k, v in tiny.items():
        argv += ["--set", f"{k}={v}"]
    assert main(argv) == 0
    row = json.loads((tmp_path / "a" / "reproduce.json").read_text())["rows"][0]
    cmd = shlex.split(row["command"].replace("--out OUT", f"--out {tmp_path / 'b'}"))
    assert cmd[0] == "sink-interp" and "--seeds 0,1" in row["command"]
    assert main(cmd[1:] + ["--quiet"]) == 0
    again = json.loads((tmp_path / "b" / "reproduce.json").read_text())["rows"][0]
    assert again["numbers"] == row["numbers"] and again["ours"] == row["ours"] and again["checks"] == row["checks"]


def _script(name: str):
    import importlib.util

    path = ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_published_runs_without_models_tabulate_to_the_same_table(tmp_path):
    src, dest = tmp_path / "out", tmp_path / "published"
    table = reproduce(["window"], out=src, steps=2, overrides=TINY, seeds=[0, 1], progress=False)
    copied, total = _script("publish_reproduce").publish(src, dest)
    assert copied == total == 6
    for spec_dir in {p for row in table.rows for v in row.runs.values() for p in v.values()}:
        d = dest / spec_dir
        assert (d / "metrics.jsonl").read_bytes() == (src / spec_dir / "metrics.jsonl").read_bytes()
        assert (d / "measured").is_dir() and not (d / "model").exists() and not (d / "checkpoint.pt").exists()
    assert _script("publish_reproduce").publish(src, dest) == (0, 6)  # nothing new
    assert not (dest / "reproduce.json").exists() and not (dest / "curves").exists()  # OUT's table is never copied
    assert main(["reproduce", "--out", str(dest), "--tabulate"]) == 0
    again = json.loads((dest / "reproduce.json").read_text())["rows"]
    assert again == json.loads(table.to_json())["rows"]


def test_row_times_add_the_segments_of_a_resumed_run(tmp_path):
    times = _script("row_times")
    lines = [
        {"step": 100, "wall_s": 10.0},
        {"step": 200, "wall_s": 25.0},
        {"step": 300, "wall_s": 9.0},
        {"step": 400, "wall_s": 20.5},
    ]
    (tmp_path / "timing.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert times.run_seconds(tmp_path) == 25.0 + 20.5  # killed after step 200, resumed: the clock started again
    assert times.run_seconds(tmp_path / "missing") == 0.0


def test_markdown_cells_escape_brackets_and_bars():
    from sink_interp.training.reproduce import ReproRow, ReproTable

    row = ReproRow(
        "sink_token", "claim", "token ([q*; Q][k*; K]^T)", "a | b", True, "src", {}, command="x --set a=[1]", verdict="agree"
    )
    md = ReproTable((row,), "cpu", "out", {}).to_markdown()
    assert r"token (\[q*; Q\]\[k*; K\]^T)" in md and r"a \| b" in md and "`x --set a=[1]`" in md and "1 agree" in md


def test_the_published_table_is_whole():
    """docs/results/reproduce: a reproduce output without models; every row decided on its seeds, with its runs present."""
    root = ROOT / "docs" / "results" / "reproduce"
    d = json.loads((root / "reproduce.json").read_text())
    assert d["n"] == len(d["rows"]) >= 25 and d["scale"] == "cpu" and not Path(d["out"]).is_absolute()
    assert not d.get("pending"), f"a partial table (--tabulate --partial) was published: pending {d['pending']}"
    assert {r["finding"] for r in d["rows"]} <= set(FINDINGS)
    for r in d["rows"]:
        assert r["command"] == f"sink-interp reproduce --finding {r['finding']} --out OUT"  # the paper's scale, no overrides
        assert r["verdict"] in ("agree", "disagree", "mixed", "not comparable") and r["numbers"] and r["checks"]
        assert len(r["seeds"]) >= (2 if r["finding"] == "text-emergence" else len(SEEDS["cpu"]))
        for by_seed in r["runs"].values():
            for rel in by_seed.values():
                assert not Path(rel).is_absolute() and (root / rel / "metrics.jsonl").is_file(), rel
            assert len(by_seed) == len(r["seeds"])
    for v, k in (("agree", "agree"), ("disagree", "disagree"), ("mixed", "mixed"), ("not comparable", "not_comparable")):
        assert sum(r["verdict"] == v for r in d["rows"]) == d[k]


def test_the_committed_table_is_what_its_committed_runs_give():
    """Every committed row equals the row the judges give on the committed runs now: a judge that changed since
    the table was written (or a hand-edited number) fails here; republish with ``--tabulate``."""
    from sink_interp.training.reproduce.runner import Plan, row
    from sink_interp.training.reproduce.table import ReproTable

    root = ROOT / "docs" / "results" / "reproduce"
    p = Plan.read(root)
    d = json.loads((root / "reproduce.json").read_text())
    assert set(d.get("pending", {})) | {r["finding"] for r in d["rows"]} == set(p.findings)
    for committed in d["rows"]:
        now = json.loads(ReproTable((row(p, committed["finding"], root),), "cpu", "", {}).to_json())["rows"][0]
        assert {k: v for k, v in now.items() if k != "curves"} == {k: v for k, v in committed.items() if k != "curves"}
