"""The book's one way to draw a figure: one style, one writer, byte-stable PNGs.

A chapter draws with matplotlib as usual and ends the cell with ``show(fig, "fig-...")``.
That call

1. writes ``figures/<notebook>/<label>.png`` with fixed size, dpi and no metadata that
   changes between runs (matplotlib stamps its version into PNGs unless told not to), so
   re-running a chapter on the same machine reproduces the file byte for byte;
2. displays exactly that file in the notebook, so the stored output Quarto renders, the
   reference image CI compares with and what the reader sees are one and the same;
3. in check mode (``MLUPDATES_FIGURE_CHECK`` names the folder of committed figures, as
   the test run does) compares the new image with the committed one and raises
   :class:`FigureMismatchError` naming the file when they differ by more than
   :data:`RMS_TOLERANCE`.

Figures of measured wall-clock timings change from run to run by nature; they are drawn
with ``measured=True`` and checked for existence and sanity (same pixel size, not blank)
instead of pixels.

Environment:

``MLUPDATES_FIGURE_DIR``
    where figures are written (default: ``<book>/figures``). The safe re-execution
    target points it at a scratch folder and moves the figures in only on success.
``MLUPDATES_FIGURE_CHECK``
    folder of reference figures to compare with (unset: no comparison).
``MLUPDATES_MEASURED_FIGURES``
    ``notebook/label`` words: figures to give the measured-figure check even though they are
    not timings. The test run sets it on a machine that rounds differently from the one that
    executed the notebook, for the figures measured to depend on float rounding
    (:mod:`mlupdates.reproduction`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.testing.compare import compare_images

from mlupdates import runtime

DPI = 110
#: Largest root-mean-square pixel difference (0-255 scale) accepted between a regenerated
#: figure and the committed one. Re-running on the same machine gives 0; 1.0 absorbs the
#: sub-pixel anti-aliasing differences seen across FreeType builds, while a changed curve,
#: label or colour gives RMS differences well above 5.
RMS_TOLERANCE = 1.0
LABEL = re.compile(r"^fig-[a-z0-9]+(-[a-z0-9]+)*$")
MEASURED_FIGURES_ENV = "MLUPDATES_MEASURED_FIGURES"

BOOK_STYLE: dict[str, object] = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "savefig.bbox": "standard",  # "tight" can shift by a pixel when text metrics change
    "font.family": "DejaVu Sans",  # ships with matplotlib: same glyphs everywhere
    "font.size": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": mpl.cycler(
        color=["#1b6ca8", "#d1495b", "#2e933c", "#edae49", "#6b4c9a", "#00798c", "#555555"]
    ),
    "image.cmap": "viridis",
    "legend.frameon": False,
    "path.simplify": False,
    "svg.hashsalt": "mlupdates",
}


class FigureMismatchError(AssertionError):
    """A regenerated figure differs from the committed reference."""


def use_book_style() -> None:
    """Apply the book's matplotlib style (called by :func:`mlupdates.runtime.setup`)."""
    mpl.rcdefaults()
    mpl.rcParams.update(BOOK_STYLE)


def figure_dir() -> Path:
    """Folder that receives ``<notebook>/<label>.png`` files."""
    override = os.environ.get("MLUPDATES_FIGURE_DIR")
    return Path(override) if override else runtime.project_root() / "figures"


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG whose bytes depend only on what is drawn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path


def check_against(new: Path, reference: Path, measured: bool = False) -> None:
    """Raise :class:`FigureMismatchError` unless ``new`` reproduces ``reference``.

    Pixel comparison uses matplotlib's own test helper (the one its image tests use).
    ``measured`` figures only need to exist, keep their pixel size and not be blank.
    """
    if not reference.is_file():
        raise FigureMismatchError(
            f"{reference}: no committed figure to compare with; re-execute the notebook "
            "(make notebook NB=...) and commit the figure"
        )
    if measured:
        new_px, ref_px = plt.imread(new), plt.imread(reference)
        if new_px.shape != ref_px.shape:
            raise FigureMismatchError(
                f"{reference}: measured figure changed size {ref_px.shape} -> {new_px.shape}"
            )
        if np.ptp(new_px) == 0:
            raise FigureMismatchError(f"{new}: measured figure is blank")
        return
    try:
        failure = compare_images(str(reference), str(new), tol=RMS_TOLERANCE, in_decorator=True)
    except Exception as exc:  # e.g. ImageComparisonFailure for a size change
        raise FigureMismatchError(f"{reference}: cannot be compared with {new}: {exc}") from exc
    if failure is not None:
        raise FigureMismatchError(
            f"{reference}: regenerated figure differs from the committed one "
            f"(RMS {failure['rms']:.2f} > tolerance {RMS_TOLERANCE}); diff image at "
            f"{failure['diff']}"
        )


def figure_path(label: str) -> Path:
    """Where :func:`show` writes the figure ``label`` of the current notebook."""
    if not LABEL.match(label):
        raise ValueError(f"label={label!r} must look like 'fig-lower-case-words'")
    return figure_dir() / runtime.current().notebook / f"{label}.png"


def show(fig: Figure, label: str, *, measured: bool = False) -> None:
    """Write ``fig`` to ``figures/<notebook>/<label>.png``, check it if asked, display it.

    ``label`` must equal the cell's Quarto label (``#| label: fig-...``) so that the book
    checks can pair every captioned figure with its file. Returns nothing, so that a cell
    ending in ``show(...)`` displays the figure and no ``Path`` repr after it.
    """
    path = save(fig, figure_path(label))
    notebook = runtime.current().notebook
    plt.close(fig)
    reference_root = os.environ.get("MLUPDATES_FIGURE_CHECK")
    if reference_root:
        measured = measured or is_measured_figure(notebook, label)
        check_against(path, Path(reference_root) / notebook / f"{label}.png", measured)
    _display(path)


def is_measured_figure(notebook: str, label: str) -> bool:
    """True if the test run asked for figure ``label`` of ``notebook`` to be checked as
    measured (see ``MLUPDATES_MEASURED_FIGURES`` above)."""
    return f"{notebook}/{label}" in os.environ.get(MEASURED_FIGURES_ENV, "").split()


def _display(path: Path) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:  # plain Python: the file on disk is the result
        return
    if get_ipython() is not None:
        display(Image(filename=str(path)))
