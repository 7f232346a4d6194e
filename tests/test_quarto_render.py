"""Render the whole book with Quarto where Quarto is installed (readers' machines)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUARTO = shutil.which("quarto")


@pytest.mark.slow
@pytest.mark.skipif(
    QUARTO is None,
    reason="quarto is not installed here (its installer downloads from GitHub, which this "
    "machine cannot reach); the book checks in test_bookcheck.py guard the render instead",
)
def test_quarto_renders_html_and_typst_pdf(tmp_path):
    out = tmp_path / "_book"
    for fmt, product in (("html", "index.html"), ("typst", "*.pdf")):
        proc = subprocess.run(
            [QUARTO, "render", "--to", fmt, "--output-dir", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert list(out.glob(product)), f"quarto render --to {fmt} produced no {product}"
