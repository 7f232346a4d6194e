"""Render the whole book with Quarto, HTML and Typst PDF, where Quarto is installed.

CI puts Quarto on PATH (.ci/run), so this runs there; on a machine without Quarto it is
skipped and the book checks (test_bookcheck.py) guard the render instead. The render must
print no warning at all, leave no unresolved reference in any page or in the PDF, and give
a PDF of the book's length: mlupdates.rendercheck, whose checks test_rendercheck.py proves
on synthetic inputs.
"""

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from mlupdates.rendercheck import check_render

ROOT = Path(__file__).resolve().parents[1]
QUARTO = shutil.which("quarto")


@pytest.mark.slow
@pytest.mark.skipif(
    QUARTO is None,
    reason="quarto is not on PATH (its installer downloads from GitHub, which this "
    "machine cannot reach); the book checks in test_bookcheck.py guard the render instead",
)
def test_quarto_renders_the_book_without_a_warning(tmp_path):
    out = tmp_path / "_book"
    start = time.monotonic()
    proc = subprocess.run(
        [QUARTO, "render", "--output-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    print(f"quarto render: {time.monotonic() - start:.0f} s")
    problems = check_render(out, log)
    assert not problems, "\n".join(problems)
