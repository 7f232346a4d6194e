"""Wall time and peak memory of every chapter in a fresh kernel, in reference units (``make bench``).

The book promises each chapter runs in under 90 s on the slower 2-core CPUs readers have.
Machines of this kind differ about 2x in speed, so seconds measured on one say little about
another. The budget is therefore stated in *reference units*: the wall time of one fixed
workload, the base-model recipe (:func:`mlupdates.recipes.train_base`: 1,000 AdamW steps of
chapter 2's 0.16 M-parameter GPT), timed in a fresh process on the same machine just before
the chapters. A chapter may take at most :data:`CHAPTER_BUDGET` units and the whole book
:data:`BOOK_BUDGET`; on the slowest machine measured (reference 37-41 s) 2.2 units is about
90 s.

The recipe cache starts empty (a private folder), as on a fresh clone, and the chapters run
in order, as a reader would run them: chapter 2 pays for the base model and the assistant,
later chapters load them. Nothing in the book is replaced: executions go to scratch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlupdates.execution import measure

CHAPTER_BUDGET = 2.2
BOOK_BUDGET = 10.0
REFERENCE = """
import time
from mlupdates import recipes, runtime
runtime.setup(notebook="bench-reference")
cfg = recipes.base_config(recipes.corpus().tokenizer.vocab_size)
start = time.perf_counter()
recipes.train_base(cfg)
print(time.perf_counter() - start)
"""


def reference_seconds() -> float:
    """Wall time of the reference workload in a fresh process (corpus build excluded)."""
    proc = subprocess.run(
        [sys.executable, "-c", REFERENCE], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"reference workload failed:\n{proc.stderr[-3000:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def main(paths: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="mlupdates-bench-cache-") as cache:
        os.environ["MLUPDATES_CACHE_DIR"] = cache  # cold recipe cache, as on a fresh clone
        start = time.perf_counter()
        unit = reference_seconds()
        print(f"reference workload (recipes.train_base): {unit:.1f} s = 1 unit")
        print(
            f"{'notebook':<24} {'wall':>8} {'units':>6} {'peak RSS':>12}"
            f"   budget {CHAPTER_BUDGET} units per chapter"
        )
        over, total = 0, 0.0
        for path in paths:
            m = measure(Path(path))
            units = m.wall_s / unit
            total += units
            flag = "" if units <= CHAPTER_BUDGET else "  OVER BUDGET"
            over += bool(flag)
            print(f"{m.notebook:<24} {m.wall_s:7.1f}s {units:6.2f} {m.peak_rss_mib:9.0f} MiB{flag}")
        flag = "" if total <= BOOK_BUDGET else "  OVER BUDGET"
        over += bool(flag)
        print(f"{'book':<24} {'':>8} {total:6.2f}   budget {BOOK_BUDGET} units{flag}")
        print(f"(measured in {time.perf_counter() - start:.0f} s)")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or sorted(str(p) for p in Path("notebooks").glob("*.ipynb"))))
