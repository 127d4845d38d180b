"""Build the figures of the docs' results gallery (docs/figures/*.html) from real runs.

    python scripts/build_gallery.py

Figures computed here (offline SmolLM2, CPU, ~1 min):
  smollm2_alpha1.html     measure_sinks, natural text, 100 x 64, no BOS (the numbers of `sink-interp measure`)
  smollm2_massive.html    massive_activations, natural text, 20 x 64
  smollm2_trace.html      trace_sink, natural text, 20 x 64 (the numbers of `sink-interp trace`)
Figures drawn from results saved by the CLI (their commands are in each JSON's "argv" or in docs/gallery.md):
  smollm2_effects.html    docs/results/ablate-nobos.json     (sink-interp ablate)
  smollm2_stream.html     docs/results/stream-nobos.json     (sink-interp stream)
  smollm2_long.html       docs/results/long-8192.json        (sink-interp long --length 8192)
  training_*.html         docs/results/reproduce/ (sink-interp reproduce; scripts/publish_reproduce.py)
Each page is standalone and offline (docs/gallery.md shows them in iframes).
``--only training`` redraws the training figures alone (no model is loaded).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "figures"
RESULTS = ROOT / "docs" / "results"


REPRO = RESULTS / "reproduce"


def arms(finding: str) -> dict[str, dict[str, Path]]:
    """``{arm: {seed: metrics.jsonl}}`` of one finding of the published table (keys as in its ``runs``)."""
    rows = {r["finding"]: r for r in json.loads((REPRO / "reproduce.json").read_text())["rows"]}
    return {k: {s: REPRO / d / "metrics.jsonl" for s, d in by_seed.items()} for k, by_seed in rows[finding]["runs"].items()}


def seed_mean(paths: dict[str, Path]) -> pd.DataFrame:
    """One arm's evaluations averaged over its seeds (the curve behind the row's "mean of N seeds")."""
    return pd.concat(pd.read_json(p, lines=True) for p in paths.values()).groupby("step", as_index=False).mean(numeric_only=True)


def training_figures() -> None:
    from sink_interp.views import training_curves

    base = arms("relu_sgd")
    contrast = {
        "softmax": base["base"],
        "sigmoid, no normaliser": arms("sigmoid")["nonorm"],
        "softpick": arms("softpick")["softpick"],
        "ReLU attention": base["relu"],
        "SGD": base["sgd"],
        "lr / 8": arms("lr")["small_lr"],
    }
    training_curves(
        {k: seed_mean(v) for k, v in contrast.items()},
        y=["val_loss", "sink_rate_1", "value_norm_ratio_top"],
        title="Bigram-Backcopy task: the sink emerges with softmax, not with softpick, ReLU or SGD",
        caption="Two-layer, one-head models trained 1000 steps on the BB task (CPU), each curve the mean of 3 seeds (each seed's "
        "curves: docs/results/reproduce/curves/). Sink_1 in %, and ||v_BOS|| / mean ||v|| of the top sink head (below 1: a "
        "value drain). Sigmoid without normaliser still reaches Sink_1 ~35% by the proxy metric, but without a value drain. "
        "Command: sink-interp reproduce --finding all --scale cpu",
    ).save(OUT / "training_bb.html")

    training_curves(
        {f"paper wd {k[2:]}": seed_mean(v) for k, v in arms("weight_decay").items()},
        y=["sink_rate_1", "val_loss"],
        title="Weight decay with the paper's schedule (cosine, lr x wd per step as the paper's): the largest decays remove the sink",
        caption="Bigram-Backcopy, 2 layers x 1 head, 1000 steps, each curve the mean of 3 seeds; weight decay scaled so that "
        "lr x wd per step equals the paper's for its wd 0, 0.1, 0.5, 1, 2, 5. Command: sink-interp reproduce --finding weight_decay",
    ).save(OUT / "training_wd_schedule.html")

    text = arms("text-emergence")
    names = {
        "softmax_long": "softmax, fixed BOS, 40k steps",
        "softmax": "softmax, fixed BOS, 20k steps",
        "sigmoid_nonorm": "sigmoid without normaliser, fixed BOS, 20k",
        "no_bos": "softmax without BOS, 20k",
    }
    training_curves(
        {f"{label} (seed {s})": p for k, label in names.items() for s, p in text[k].items()},
        x="tokens",
        y=["sink_rate_1", "mean_alpha_1", "val_loss"],
        title="Natural text at CPU scale: a first-token sink forms with softmax and a fixed BOS",
        caption="4 layers x 4 heads, d 128, 64-token windows of the offline corpus (scripts/build_corpus.py, 24M tokens, BPE 2048), "
        "one CPU thread per run, 2 seeds per arm. Sink_1 in % at eps 0.3. Command: sink-interp reproduce --finding text-emergence",
    ).save(OUT / "training_text.html")


def main() -> None:
    ap = argparse.ArgumentParser(description="Build the gallery's figures (docs/figures/*.html).")
    ap.add_argument("--only", choices=["training"], help="redraw only the training figures (from docs/results/reproduce)")
    if ap.parse_args().only == "training":
        OUT.mkdir(parents=True, exist_ok=True)
        training_figures()
        print("wrote", ", ".join(sorted(p.name for p in OUT.glob("training_*.html"))))
        return
    import torch

    torch.set_num_threads(1)
    from sink_interp import load_model, massive_activations, measure_sinks, probe_tokens, trace_sink
    from sink_interp.views import effect_bars, head_heatmap, training_curves, view_for

    OUT.mkdir(parents=True, exist_ok=True)
    model = load_model("smollm2-135m", device="cpu")

    report = measure_sinks(model, probe_tokens(model, "natural", n=100, length=64), progress=False)
    head_heatmap(
        report.mean_alpha(1),
        layers=list(report.layers),
        extra={"Sink_1 (% of samples)": report.head_rates(1)},
        title="SmolLM2-135M: mean α₁ of every head (natural text, no BOS)",
        caption=f"Mean sink score of the first token over 100 natural-text inputs of 64 tokens; Sink_1 = {report.rate(1):.2f}% at eps 0.3. "
        "Command: sink-interp measure --model smollm2-135m --data natural",
    ).save(OUT / "smollm2_alpha1.html")

    tokens = probe_tokens(model, "natural", n=20, length=64)
    massive = massive_activations(model, tokens, progress=False)
    view_for(massive).save(OUT / "smollm2_massive.html")
    view_for(trace_sink(model, tokens, massive=massive, progress=False)).save(OUT / "smollm2_trace.html")

    ablate = json.loads((RESULTS / "ablate-nobos.json").read_text())
    effects = pd.DataFrame(ablate["effects"])
    effect_bars(
        effects,
        label="label",
        values=["delta_loss", "kl", "sink_rate_1", "sink_rate_2"],
        title="SmolLM2-135M: what removing or replacing the sink does (no BOS)",
        caption="Change in next-token loss, KL to the clean model, and Sink_1 / Sink_2 after each intervention, on 32 natural inputs of 64 tokens. "
        "Command: " + " ".join(["sink-interp", *ablate["argv"]]),
    ).save(OUT / "smollm2_effects.html")

    stream = json.loads((RESULTS / "stream-nobos.json").read_text())
    df = pd.DataFrame(stream["buckets"])
    df["position"] = df["end"]
    training_curves(
        df,
        x="position",
        y=["ppl"],
        run="condition",
        log_y=["ppl"],
        title="SmolLM2-135M streaming: 4 sinks + a 256-token window vs the window alone",
        caption=f"Perplexity by position over {stream['n']} texts of {stream['length']} tokens. "
        "Command: sink-interp stream --model smollm2-135m --sinks 4 --window 256",
    ).save(OUT / "smollm2_stream.html")

    long = json.loads((RESULTS / "long-8192.json").read_text())
    buckets = pd.DataFrame(
        {"query position": long["edges"][1:], "Sink_1": long["bucket_sink_rate_1"], "mean alpha_1": long["bucket_mean_alpha_1"]}
    )
    training_curves(
        buckets,
        x="query position",
        y=["Sink_1", "mean alpha_1"],
        title="SmolLM2-135M at 8k tokens: the first-token sink by query position",
        caption="alpha_1 restricted to the queries of each 1024-token bucket (bucket end on the x axis; natural text joined to 8192 tokens, no BOS). "
        "Command: sink-interp long --length 8192",
    ).save(OUT / "smollm2_long.html")

    training_figures()
    print("wrote", ", ".join(sorted(p.name for p in OUT.glob("*.html"))))


if __name__ == "__main__":
    main()
