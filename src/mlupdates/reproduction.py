"""How strictly a stored notebook can be reproduced here, and whether its classification is current.

DESIGN.md §4: outputs that do not depend on float rounding (counts, parities, tokenizers,
tables of published facts) are compared exactly on every machine; outputs computed by
training or sampling are compared exactly only where the machine rounds like the one that
executed the notebook. :mod:`mlupdates.execution` measures which cells are which (the
``platform-dependent`` tag) and records the executing machine's platform fingerprint; this
module turns that record into a decision for the test run, and checks that the record still
describes the notebook.

Modes, per notebook:

``strict``
    This machine's fingerprint equals the recorded one (or the notebook records none, as
    hand-made test notebooks do): every compared output must match, every figure must match
    its committed PNG within RMS 1.0.
``cross-platform``
    The fingerprints differ (another CPU, another kernel set, a GPU): untagged cells are
    compared exactly; tagged cells are executed and only their assertions decide; their
    figures get the measured-figure check (exists, same size, not blank).

``MLUPDATES_COMPARE=strict`` or ``=cross-platform`` forces a mode (for experiments; the
test run never sets it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nbformat

from mlupdates.execution import (
    METADATA_KEY,
    PLATFORM_TAG,
    compared_text,
    digest,
    figure_digests,
    output_is_ignored,
    sanitize_patterns,
)

STRICT, CROSS = "strict", "cross-platform"


@dataclass(frozen=True)
class Mode:
    """The comparison a notebook gets on this machine, and why."""

    notebook: str
    mode: str  # STRICT or CROSS
    reason: str
    compared: int  # code cells whose outputs the test run compares
    tagged: frozenset[str]  # ids of the platform-dependent cells
    figures: tuple[str, ...]  # platform-dependent figure labels

    @property
    def exact_cells(self) -> int:
        """Cells compared exactly in this mode."""
        return self.compared if self.mode == STRICT else self.compared - len(self.tagged)

    @property
    def assertion_cells(self) -> int:
        """Cells executed but judged by their assertions only."""
        return 0 if self.mode == STRICT else len(self.tagged)

    def summary(self) -> str:
        return (
            f"{self.notebook}: {self.mode} ({self.reason}); {self.exact_cells} cells compared "
            f"exactly, {self.assertion_cells} checked by assertions"
            + (f", {len(self.figures)} figures as measured" if self.mode == CROSS else "")
        )


def compared_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    """The code cells whose outputs the test run compares (measurement cells excluded)."""
    return [c for c in nb.cells if c.cell_type == "code" and not output_is_ignored(c)]


def decide(path: Path, fingerprint: str) -> Mode:
    """The mode notebook ``path`` is compared in on a machine with ``fingerprint``."""
    nb = nbformat.read(path, as_version=4)
    record = nb.metadata.get(METADATA_KEY, {})
    cells = compared_cells(nb)
    tagged = frozenset(c.id for c in cells if PLATFORM_TAG in c.metadata.get("tags", []))
    figures = tuple(record.get("platform_dependent_figures", []))
    recorded = record.get("fingerprint")
    forced = os.environ.get("MLUPDATES_COMPARE", "").strip()
    if forced and forced not in (STRICT, CROSS):
        raise ValueError(f"MLUPDATES_COMPARE={forced!r} must be {STRICT!r} or {CROSS!r}")
    if forced:
        mode, reason = forced, "forced by MLUPDATES_COMPARE"
    elif recorded is None:
        mode, reason = STRICT, "no fingerprint recorded"
    elif recorded == fingerprint:
        mode, reason = STRICT, f"fingerprint {fingerprint} as recorded"
    else:
        mode, reason = CROSS, f"fingerprint here {fingerprint}, recorded {recorded}"
    return Mode(path.stem, mode, reason, len(cells), tagged, figures)


def measured_figures_value(modes: list[Mode]) -> str:
    """The value of :data:`MEASURED_FIGURES_ENV` for kernels: ``notebook/label`` words."""
    return " ".join(f"{m.notebook}/{f}" for m in modes if m.mode == CROSS for f in m.figures)


def stale_classification(path: Path, root: Path) -> list[str]:
    """Problems with a notebook's recorded classification, found without executing it.

    The record (written by ``make notebook``) holds, per compared cell, a digest of its
    source and of its outputs under the alternative kernels, and a digest of every figure
    drawn under them. The classification is stale when a cell was edited since, when a
    cell's stored outputs differ from its alternative-kernel outputs but it is not tagged
    (or is tagged though they agree), or when the committed figures disagree likewise.
    """
    nb = nbformat.read(path, as_version=4)
    record = nb.metadata.get(METADATA_KEY)
    if not record or "cells" not in record:
        return ["no platform classification recorded; re-execute it (make notebook NB=...)"]
    patterns = sanitize_patterns(root)
    problems = []
    cells = record["cells"]
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or output_is_ignored(cell):
            continue
        where = f"cell {index} ({cell.id})"
        entry = cells.get(cell.id)
        if entry is None:
            problems.append(f"{where} was added after the classification; re-execute")
            continue
        if entry["source"] != digest(cell.source):
            problems.append(f"{where} was edited after the classification; re-execute")
            continue
        differs = digest(compared_text(cell, patterns)) != entry["alt_outputs"]
        tagged = PLATFORM_TAG in cell.metadata.get("tags", [])
        if differs and not tagged:
            problems.append(
                f"{where} changes under the alternative kernels but is not tagged {PLATFORM_TAG}"
            )
        elif tagged and not differs and not _draws(cell, record):
            problems.append(f"{where} is tagged {PLATFORM_TAG} but its outputs do not change")
    committed = figure_digests(root / "figures" / path.stem)
    alt = record.get("alt_figures", {})
    listed = set(record.get("platform_dependent_figures", []))
    for label, png in committed.items():
        if label not in alt:
            continue  # drawn by a cell added later: reported above
        if (alt[label] != png) != (label in listed):
            problems.append(
                f"figure {label}: the committed PNG "
                + ("differs from" if alt[label] != png else "equals")
                + " its alternative-kernel drawing but is "
                + ("" if label in listed else "not ")
                + "listed as platform-dependent; re-execute"
            )
    return problems


def _draws(cell: nbformat.NotebookNode, record: dict) -> bool:
    """True if the cell draws one of the platform-dependent figures (tagged for it)."""
    from mlupdates.execution import cell_label

    return cell_label(cell) in record.get("platform_dependent_figures", [])
