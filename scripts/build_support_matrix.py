"""Rewrite docs/support.md from a run of the model-zoo tests (tests/test_zoo.py).

The page is the test run's own record of each family x analysis outcome, so it is never written by hand:

    python scripts/build_support_matrix.py

runs the zoo tests with SINK_INTERP_WRITE_SUPPORT=1, which makes their last test write the page instead of
comparing it. The normal test run then checks that the committed page is the one the run produces.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    env = dict(os.environ, SINK_INTERP_WRITE_SUPPORT="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_zoo.py")]
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    if rc == 0:
        print(f"wrote {ROOT / 'docs' / 'support.md'}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
