"""pytest configuration shared by the unit tests and the notebook run (nbval).

What nbval compares, decided deliberately (DESIGN.md §4):

- compared: ``text/plain`` (including ``<Figure size ...>`` reprs), ``text/markdown``
  (the book's tables) and ``stdout`` -- everything a reader sees that is meant to be
  deterministic. Cells whose output is a measurement start with ``# NBVAL_IGNORE_OUTPUT``
  and are followed by an assertion.
- not compared: PNG/JPEG bytes (figures are compared as images instead, below),
  ``text/html`` (a second rendering of what ``text/plain`` already shows, full of
  generated element ids) and ``stderr`` (library warnings whose text carries paths and
  versions; a real failure raises, and nbval fails the cell on any exception).
- figures: every ``show(fig, label)`` call re-draws the figure into a scratch folder and
  compares it with the committed ``figures/<notebook>/<label>.png`` (see
  ``mlupdates.plots``), failing the cell with the file name when they differ.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
NOT_COMPARED = ("text/html", "stderr")


def pytest_configure(config):
    os.environ.setdefault("MPLBACKEND", "Agg")
    if config.getoption("nbval", default=False):
        # Kernels started by nbval inherit these: figures are re-drawn aside and checked.
        os.environ["MLUPDATES_FIGURE_CHECK"] = str(ROOT / "figures")
        os.environ["MLUPDATES_FIGURE_DIR"] = tempfile.mkdtemp(prefix="mlupdates-figures-")


def pytest_collectstart(collector):
    skip = getattr(collector, "skip_compare", None)
    if skip is not None and hasattr(collector, "compare_outputs"):  # an nbval notebook
        collector.skip_compare = tuple(skip) + NOT_COMPARED
