"""Copy a finished reproduce output into docs/results/reproduce/ without the models.

    python scripts/publish_reproduce.py OUT [--dest docs/results/reproduce]

``OUT`` is the folder of ``sink-interp reproduce --out OUT``. Copied: ``reproduce.json``,
``reproduce.md``, ``curves/*.html`` and, for every run folder the table names, its
``config.json``, ``metrics.jsonl`` and ``timing.jsonl`` (the weights and checkpoints stay behind:
``sink-interp reproduce --finding NAME --out OUT`` re-makes them). Every path in the table is
relative to ``OUT``, so it stays valid in the copy; the copy's ``out`` field becomes the
destination relative to the repository. The destination is replaced atomically (written beside
it, then renamed), and nothing is written unless every path the table names exists in ``OUT``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_FILES = ("config.json", "metrics.jsonl", "timing.jsonl")


def publish(src: Path, dest: Path) -> int:
    table = json.loads((src / "reproduce.json").read_text(encoding="utf-8"))
    paths = sorted({p for row in table["rows"] for p in row["runs"].values()})
    missing = [p for p in paths if Path(p).is_absolute() or not (src / p).exists()]
    if missing:
        raise SystemExit(
            f"{len(missing)} path(s) of {src / 'reproduce.json'} are absolute or missing, e.g. {missing[0]}; nothing written"
        )
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    for p in paths:
        if p.endswith(".html"):
            (tmp / p).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / p, tmp / p)
            continue
        (tmp / p).mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            if (src / p / name).is_file():
                shutil.copy2(src / p / name, tmp / p / name)
    try:
        table["out"] = dest.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        table["out"] = str(dest)
    (tmp / "reproduce.json").write_text(json.dumps(table, indent=2), encoding="utf-8")  # as reproduce writes it
    shutil.copy2(src / "reproduce.md", tmp / "reproduce.md")
    old = dest.with_name(dest.name + ".old")
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return len(table["rows"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="the reproduce output folder (holds reproduce.json)")
    ap.add_argument("--dest", type=Path, default=ROOT / "docs" / "results" / "reproduce")
    a = ap.parse_args()
    n = publish(a.src.expanduser(), a.dest)
    print(f"published {n} findings to {a.dest}")


if __name__ == "__main__":
    main()
