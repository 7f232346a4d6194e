"""Wall time and peak memory of every chapter in a fresh kernel (``make bench``).

The book promises each chapter runs in under 90 s on a 2-core CPU; this is where that
promise is measured, not in a timed test. Nothing is replaced: executions go to scratch.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlupdates.execution import measure

BUDGET_S = 90.0


def main(paths: list[str]) -> int:
    print(f"{'notebook':<24} {'wall':>8} {'peak RSS':>12}   budget {BUDGET_S:.0f} s")
    over = 0
    for path in paths:
        m = measure(Path(path))
        flag = "" if m.wall_s <= BUDGET_S else "  OVER BUDGET"
        over += bool(flag)
        print(f"{m.notebook:<24} {m.wall_s:7.1f}s {m.peak_rss_mib:9.0f} MiB{flag}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or sorted(str(p) for p in Path("notebooks").glob("*.ipynb"))))
