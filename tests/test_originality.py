"""The book's prose is its own: no run of 10 words shared with the 2023 source notebook.

The checker and the seed live in the project's shared folder (``../shared``), which sits
beside every checkout, CI's included.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT.parent / "shared" / "tools" / "seed_overlap.py"
SEED = ROOT.parent / "shared" / "seed" / "000_22de11879875f283.txt"

needs_shared = pytest.mark.skipif(
    not (TOOL.is_file() and SEED.is_file()),
    reason=f"the seed-overlap tool and seed are not beside this checkout ({TOOL.parent})",
)


def overlap(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOL), "--root", str(root)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@needs_shared
def test_no_sentence_is_copied_from_the_seed():
    result = overlap(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 runs" in result.stdout


@needs_shared
def test_a_copied_sentence_is_caught(tmp_path):
    words = SEED.read_text(encoding="utf-8").split()
    start = words.index("Transformer", 400)  # somewhere in chapter 1's prose
    (tmp_path / "page.qmd").write_text("# Page\n\n" + " ".join(words[start : start + 14]) + "\n")
    result = overlap(tmp_path)
    assert result.returncode == 1
    assert "page.qmd" in result.stdout
