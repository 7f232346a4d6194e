"""End to end: the test command's nbval run fails, naming the file, when a committed figure
no longer matches what its notebook draws."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlupdates.execution import execute_in_place

from .conftest import make_mini_book

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_nbval(book: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The test command's nbval run over ``book`` (in ``env``, else this process's)."""
    shutil.copy2(ROOT / "conftest.py", book / "conftest.py")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rfE",
            "-p",
            "no:cacheprovider",
            "--nbval",
            "--nbval-current-env",
            "--nbval-sanitize-with",
            str(ROOT / "tests/nbval_sanitize.cfg"),
            "notebooks",
        ],
        cwd=book,
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=300,
    )


def test_nbval_passes_then_catches_a_changed_figure_and_a_changed_output(tmp_path):
    nb_path = make_mini_book(tmp_path)
    execute_in_place(nb_path)
    ok = run_nbval(tmp_path)
    assert ok.returncode == 0, ok.stdout[-3000:]

    png = tmp_path / "figures/01-mini/fig-mini-line.png"
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    # A different drawing of exactly the committed size, so the check must compare pixels
    # (a size change would be caught earlier, by a different message).
    height, width = mpimg.imread(png).shape[:2]
    fig, ax = plt.subplots(figsize=(width / 100, height / 100), dpi=100)
    ax.plot([0, 1, 2], [2, 0, 2], color="red")
    fig.savefig(png, dpi=100)
    plt.close(fig)
    assert mpimg.imread(png).shape[:2] == (height, width)
    broken = run_nbval(tmp_path)
    assert broken.returncode != 0
    assert "fig-mini-line.png: regenerated figure differs" in broken.stdout

    execute_in_place(nb_path)  # restore, then corrupt a stored text output instead
    text = nb_path.read_text().replace('"45\\n"', '"46\\n"')
    nb_path.write_text(text)
    changed = run_nbval(tmp_path)
    assert changed.returncode != 0
    assert "46" in changed.stdout and "45" in changed.stdout
