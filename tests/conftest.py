"""Fixtures that build books to break: a copy of the real one, and a minimal one."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BOOK_PARTS = ["_quarto.yml", "index.qmd", "references.bib", "chapters", "notebooks", "figures"]


@pytest.fixture
def book_copy(tmp_path: Path) -> Path:
    """A copy of this book (pages, figures, bibliography, seed map) to corrupt."""
    for name in BOOK_PARTS:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name)
        elif src.exists():
            shutil.copy2(src, tmp_path / name)
    (tmp_path / "tests" / "data").mkdir(parents=True)
    shutil.copy2(ROOT / "tests/data/seed_sections.yaml", tmp_path / "tests/data")
    return tmp_path


MINI_FIGURE = """#| label: fig-mini-line
#| fig-cap: "A straight line: the minimal figure."
import matplotlib.pyplot as plt
from mlupdates.plots import show
fig, ax = plt.subplots()
ax.plot([0, 1, 2], [0, 1, 2])
show(fig, "fig-mini-line")"""


def make_mini_book(root: Path, extra_code: str = "") -> Path:
    """A one-chapter book: setup, a printed number, a figure; returns the notebook path."""
    (root / "notebooks").mkdir(parents=True, exist_ok=True)
    (root / "_quarto.yml").write_text(
        "project:\n  type: book\nbook:\n  title: Mini\n  chapters:\n"
        "    - index.qmd\n    - notebooks/01-mini.ipynb\n"
    )
    (root / "index.qmd").write_text("# Mini {.unnumbered}\n\nA book to test the tools.\n")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    cells = [
        nbformat.v4.new_markdown_cell("# Mini {#sec-mini}\n\nOne chapter."),
        nbformat.v4.new_code_cell(
            'from mlupdates.runtime import setup\nrt = setup(notebook="01-mini")\nprint(rt)'
        ),
        nbformat.v4.new_code_cell("print(sum(range(10)))"),
        nbformat.v4.new_code_cell(MINI_FIGURE),
    ]
    if extra_code:
        cells.append(nbformat.v4.new_code_cell(extra_code))
    nb.cells = cells
    path = root / "notebooks" / "01-mini.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def mini_book(tmp_path: Path) -> Path:
    """Root of a minimal one-chapter book (not yet executed)."""
    make_mini_book(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def one_thread():
    """Unit tests use one CPU thread, like the chapters' default: tiny tensors gain nothing
    from threads, and on a busy 2-core machine every OpenMP region waits for the other core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def scramble(model: torch.nn.Module, seed: int = 1) -> None:
    """Give every weight a large random value, so that a bug moves the output by much more
    than float rounding does (small initialisations keep logits near zero and hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.dim() == 1 else 0.0))


FLOAT32_EPS = torch.finfo(torch.float32).eps


def assert_close_f32(actual: torch.Tensor, expected: torch.Tensor, ulps: float = 64) -> None:
    """Equal up to float32 rounding, wherever the rounding happens.

    Two correct computations that add in different orders (another BLAS code path, another
    CPU, a fused kernel) differ by a few units in the last place *of the largest values they
    accumulate*, so the tolerance scales with ``max |expected|``: ``ulps`` float32 epsilons of
    it. A bug moves outputs by a sizeable fraction of that scale, far beyond the tolerance;
    a fixed ``atol=1e-6`` would instead fail on correct logits near 10 and pass a bug in
    values near 1e-3.
    """
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(
        actual, expected, rtol=0.0, atol=ulps * FLOAT32_EPS * max(scale, 1e-30)
    )
