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

Strict where it can be, honest everywhere (``mlupdates.reproduction``): a notebook whose
recorded platform fingerprint equals this machine's is compared as above. Elsewhere (another
CPU, other kernels, a GPU) the cells tagged ``platform-dependent`` -- measured by
``make notebook``, never by hand -- are executed but not compared, so only their assertions
decide, and their figures get the measured-figure check; every other cell is still compared
exactly. The mode of every notebook, and why, is printed at the start and end of the run.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
NOT_COMPARED = ("text/html", "stderr")
_modes: dict[Path, object] = {}  # notebook path -> mlupdates.reproduction.Mode


def _notebook_modes(config) -> dict[Path, object]:
    """The comparison mode of every notebook named on the command line (or under it)."""
    from mlupdates.reproduction import decide
    from mlupdates.runtime import platform_fingerprint

    paths: set[Path] = set()
    for arg in config.args:
        target = Path(arg.split("::")[0])
        target = target if target.is_absolute() else Path(config.invocation_params.dir) / target
        if target.is_dir():
            paths.update(p for p in target.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        elif target.suffix == ".ipynb" and target.is_file():
            paths.add(target)
    if not paths:
        return {}
    fingerprint = platform_fingerprint()
    return {p.resolve(): decide(p, fingerprint) for p in sorted(paths)}


def pytest_configure(config):
    os.environ.setdefault("MPLBACKEND", "Agg")
    if config.getoption("nbval", default=False):
        # Kernels started by nbval inherit these: figures are re-drawn aside and checked.
        os.environ["MLUPDATES_FIGURE_CHECK"] = str(ROOT / "figures")
        os.environ["MLUPDATES_FIGURE_DIR"] = tempfile.mkdtemp(prefix="mlupdates-figures-")
        from mlupdates.plots import MEASURED_FIGURES_ENV
        from mlupdates.reproduction import measured_figures_value

        _modes.update(_notebook_modes(config))
        os.environ[MEASURED_FIGURES_ENV] = measured_figures_value(list(_modes.values()))


def pytest_report_header(config):
    if _modes:
        return ["notebook comparison modes:"] + [f"  {m.summary()}" for m in _modes.values()]
    return None


def pytest_collection_modifyitems(config, items):
    """Cross-platform notebooks: tagged cells run, but only their assertions decide."""
    for item in items:
        mode = _modes.get(Path(str(item.path)).resolve())
        cell = getattr(item, "cell", None)
        options = getattr(item, "options", None)
        if mode is None or cell is None or options is None or mode.mode == "strict":
            continue
        if cell.get("id") in mode.tagged:
            options["check"] = False


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _modes:
        terminalreporter.section("notebook comparison modes")
        for mode in _modes.values():
            terminalreporter.write_line(mode.summary())


def pytest_collectstart(collector):
    skip = getattr(collector, "skip_compare", None)
    if skip is not None and hasattr(collector, "compare_outputs"):  # an nbval notebook
        collector.skip_compare = tuple(skip) + NOT_COMPARED
