"""Written with sink_interp at commit 19a05cb (before the names changed): reports and a run in the old vocabulary."""

import shutil
from pathlib import Path

import torch

from sink_interp import MaskKey, compare, long_context_sinks, massive_activations, measure_sinks, streaming_ppl, tiny_model
from sink_interp.training import preset, train


def main() -> None:
    out = Path("tests/data/old_names")
    torch.manual_seed(0)
    m = tiny_model()
    toks = torch.randint(4, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    measure_sinks(m, toks, progress=False).to_json(out / "sinks.json")
    compare(m, toks, {"mask": MaskKey()}, progress=False).to_json(out / "effects.json")
    massive_activations(m, toks, progress=False).to_json(out / "massive.json")
    streaming_ppl(
        m, torch.randint(4, 128, (1, 24), generator=torch.Generator().manual_seed(1)), sinks=1, window=6, bucket=6, progress=False
    ).to_json(out / "stream.json")
    long_context_sinks(m, toks, buckets=2, progress=False).to_json(out / "long.json")
    cfg = preset("bb-softmax", steps=2, eval_every=2, d_model=32, d_mlp=64, probe_n=4, eval_batches=1, batch_size=4)
    res = train(cfg, "/tmp/old_run", progress=False)
    res.to_json(out / "train.json")
    (out / "run").mkdir(exist_ok=True)
    shutil.copy("/tmp/old_run/metrics.jsonl", out / "run" / "metrics.jsonl")


if __name__ == "__main__":  # never on import: pytest --doctest-modules imports every file under tests/
    main()
