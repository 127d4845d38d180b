"""Rename the metric keys of saved results to the one vocabulary (sink_interp._internal.vocab), numbers untouched.

Run once on docs/results (``python scripts/migrate_names.py docs/results``); ``--check OLD_DIR`` compares a
migrated tree with the tree before (e.g. ``git archive`` of the commit before) and fails unless every number
is identical: the multiset of leaf values of each file is unchanged, and every leaf sits at its old path with
the old keys replaced by the new ones (a table written out here, independent of the migration's code).
Running it again changes nothing (new keys pass through).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sink_interp._internal.provenance import dumps
from sink_interp._internal.vocab import upgrade, upgrade_summary

#: old path component -> new path component(s), for the check (written out by hand on purpose)
OLD_TO_NEW = {
    "Sink_1": "sink_rate_1",
    "Sink_2": "sink_rate_2",
    "sink_rate": "sink_rate_1",
    "sink_rate_eps0.1": "sink_rate_1_by_eps/0.1",
    "sink_rate_eps0.2": "sink_rate_1_by_eps/0.2",
    "sink_rate_eps0.3": "sink_rate_1_by_eps/0.3",
    "mean_alpha1": "mean_alpha_1",
    "sink_pos_max": "top_sink_k",
    "sink_star": "sink_rate_star",
    "sink_rate_with_first": "sink_rate_1_with_first",
    "sink_rate_without_first": "sink_rate_1_without_first",
    "mean_alpha1_with_first": "mean_alpha_1_with_first",
    "mean_alpha1_without_first": "mean_alpha_1_without_first",
    "sink_rate_visible_queries": "sink_rate_1_visible_queries",
    "mean_alpha1_visible_queries": "mean_alpha_1_visible_queries",
    "alpha1_bound": "alpha_1_bound",
    "sink_rate_raw": "sink_rate_1_raw",
    "mean_alpha1_raw": "mean_alpha_1_raw",
    "Sink_k (eps=0.3)": "sink_rate",
    "rates": "sink_rates",
    "sinks": "n_sinks",  # StreamReport's summary (the only files here with a top-level "sinks")
}


def report_type(d: dict[str, Any]) -> str:
    """The report a summary-only JSON of docs/results came from."""
    if "effects" in d:
        return "EffectReport"
    if "top_keys" in d:
        return "LongContextReport"
    if "ppl_all" in d:
        return "StreamReport"
    if "rows" in d and "scale" in d:
        return "ReproTable"
    raise ValueError("unknown result file")


def migrate_json(d: dict[str, Any]) -> dict[str, Any]:
    kind = report_type(d)
    if kind == "ReproTable":
        return {**d, "rows": [{**r, "numbers": upgrade("metrics", r["numbers"])} for r in d["rows"]]}
    return upgrade_summary(kind, d)


def flatten(obj: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        return [x for k, v in obj.items() for x in flatten(v, f"{path}/{k}")]
    if isinstance(obj, list):
        return [x for i, v in enumerate(obj) for x in flatten(v, f"{path}[{i}]")]
    return [(path, obj)]


def renamed_path(path: str) -> str:
    parts = path.split("/")
    out = []
    for p in parts:
        name, bracket, rest = p.partition("[")
        out.append(OLD_TO_NEW.get(name, name) + bracket + rest)
    return "/".join(out)


def check_pair(old: Any, new: Any, where: str) -> list[str]:
    fo, fn = flatten(old), flatten(new)
    errors = []
    if sorted(repr(v) for _, v in fo) != sorted(repr(v) for _, v in fn):
        errors.append(f"{where}: the multiset of values (numbers, strings) changed")
    want = {renamed_path(p): v for p, v in fo}
    got = dict(fn)
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()), key=str)[:6]
        errors.append(f"{where}: leaves differ after renaming the old paths: {diff}")
    return errors


def files(root: Path) -> list[Path]:
    return sorted([*root.glob("*.json"), *root.glob("reproduce/reproduce.json"), *root.glob("reproduce/runs/*/metrics.jsonl")])


def migrate(root: Path) -> int:
    changed = 0
    for p in files(root):
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".jsonl":
            new = "".join(json.dumps(upgrade("metrics", json.loads(line))) + "\n" for line in text.splitlines() if line.strip())
        else:
            new = dumps(migrate_json(json.loads(text))) + ("\n" if text.endswith("\n") else "")
        if new != text:
            p.write_text(new, encoding="utf-8")
            changed += 1
    return changed


def check(root: Path, old_root: Path) -> list[str]:
    errors = []
    for p in files(root):
        q = old_root / p.relative_to(root)
        if p.suffix == ".jsonl":
            old = [json.loads(x) for x in q.read_text().splitlines() if x.strip()]
            new = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
        else:
            old, new = json.loads(q.read_text()), json.loads(p.read_text())
        errors += check_pair(old, new, str(p))
    return errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="a results folder (docs/results)")
    ap.add_argument("--check", type=Path, metavar="OLD_DIR", help="compare with this copy of the folder before migrating")
    args = ap.parse_args(argv)
    if args.check:
        errors = check(args.root, args.check)
        for e in errors:
            print(e)
        print(f"{len(files(args.root))} files checked: " + ("numbers identical" if not errors else f"{len(errors)} problems"))
        return 1 if errors else 0
    print(f"{migrate(args.root)} files rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
