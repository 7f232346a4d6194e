"""Strict where it can be, honest everywhere: the cross-platform comparison, end to end.

A one-chapter book whose outputs partly depend on the float kernels (here, simulated by
printing and drawing what ``ATEN_CPU_CAPABILITY`` says, which is exactly what the alternative
kernel run changes) is executed and classified by ``make notebook``'s code, then checked by
the test command's nbval run under its own fingerprint and under a foreign one.
"""

from __future__ import annotations

import re

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import nbformat
import pytest

from mlupdates.bookcheck import check_book
from mlupdates.execution import PLATFORM_TAG, execute_in_place, fingerprint_in, native_env
from mlupdates.reproduction import CROSS, STRICT, decide

from .conftest import make_mini_book
from .test_notebook_figures import run_nbval

pytestmark = pytest.mark.slow

KERNEL_TEXT = """import os
print("kernels:", os.environ.get("ATEN_CPU_CAPABILITY", "native"))"""
KERNEL_FIGURE = """#| label: fig-mini-kernels
#| fig-cap: "A line whose end depends on the float kernels."
import os
import matplotlib.pyplot as plt
from mlupdates.plots import show
fig, ax = plt.subplots()
ax.plot([0, 1, 2], [0, 1, 2 if "ATEN_CPU_CAPABILITY" not in os.environ else 3])
show(fig, "fig-mini-kernels")"""
CLAIM = """import os
assert sum(range(10)) == int(os.environ.get("MINI_EXPECT", "45")), "the claim is false\""""
FOREIGN = "0123456789ab"
# The machine that executes the mini book is this one with the alternative-kernel switches
# removed (``make notebook`` executes natively), so its own nbval runs happen in that
# environment too (``native_env()``, read at call time): the suite may itself run under
# ATEN_CPU_CAPABILITY=default, where this process's fingerprint is the alternative one.

# Code cells of the book: 0 setup, 1 print(45), 2 figure, 3 kernel text, 4 kernel figure, 5 claim.
TAGGED_TEXT, UNTAGGED_TEXT, TAGGED_FIGURE, CLAIM_CELL = 3, 1, 4, 5


def code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def failed_cells(proc) -> set[int]:
    return {int(n) for n in re.findall(r"FAILED \S*01-mini\.ipynb::Cell (\d+)", proc.stdout)}


def set_fingerprint(nb_path, value: str) -> None:
    nb = nbformat.read(nb_path, as_version=4)
    nb.metadata["mlupdates"]["fingerprint"] = value
    nbformat.write(nb, nb_path)


def redraw(png) -> None:
    """Replace a committed figure by a different drawing of exactly its size."""
    height, width = mpimg.imread(png).shape[:2]
    fig, ax = plt.subplots(figsize=(width / 100, height / 100), dpi=100)
    ax.plot([0, 1, 2], [2, 0, 2], color="red")
    fig.savefig(png, dpi=100)
    plt.close(fig)


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    """The mini book executed and classified once (natively and under the alternative kernels)."""
    root = tmp_path_factory.mktemp("book")
    nb_path = make_mini_book(root)
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells += [nbformat.v4.new_code_cell(src) for src in (KERNEL_TEXT, KERNEL_FIGURE, CLAIM)]
    nbformat.write(nb, nb_path)
    result = execute_in_place(nb_path)
    return root, nb_path, result


@pytest.fixture
def book(classified, tmp_path):
    """A fresh copy of the classified mini book to corrupt."""
    import shutil

    root, _, _ = classified
    shutil.copytree(root, tmp_path / "book")
    return tmp_path / "book", tmp_path / "book/notebooks/01-mini.ipynb"


def test_classification_tags_exactly_the_cells_and_figures_that_change(classified):
    root, nb_path, result = classified
    nb = nbformat.read(nb_path, as_version=4)
    cells = code_cells(nb)
    tagged = [i for i, c in enumerate(cells) if PLATFORM_TAG in c.metadata.get("tags", [])]
    assert tagged == [TAGGED_TEXT, TAGGED_FIGURE]
    assert result.figures == ["fig-mini-kernels"] and result.compared == 6
    record = nb.metadata["mlupdates"]
    assert record["fingerprint"] == fingerprint_in(native_env())
    assert (
        record["alt_fingerprint"] != record["fingerprint"]
    )  # the alternative kernels round otherwise
    assert record["platform_dependent_figures"] == ["fig-mini-kernels"]
    assert check_book(root, only=["platform", "execution", "captions"]) == []
    assert decide(nb_path, record["fingerprint"]).mode == STRICT
    assert decide(nb_path, FOREIGN).mode == CROSS


def test_tagged_changes_pass_only_under_a_foreign_fingerprint(book):
    root, nb_path = book
    nb = nbformat.read(nb_path, as_version=4)
    cells = code_cells(nb)
    cells[TAGGED_TEXT].outputs[0]["text"] = "kernels: another machine\n"
    nbformat.write(nb, nb_path)
    redraw(root / "figures/01-mini/fig-mini-kernels.png")

    own = run_nbval(root, native_env())
    assert own.returncode != 0
    assert failed_cells(own) == {TAGGED_TEXT, TAGGED_FIGURE}, own.stdout[-3000:]
    assert "fig-mini-kernels.png: regenerated figure differs" in own.stdout
    assert "01-mini: strict" in own.stdout

    set_fingerprint(nb_path, FOREIGN)
    foreign = run_nbval(root, native_env())
    assert foreign.returncode == 0, foreign.stdout[-3000:]
    assert "01-mini: cross-platform" in foreign.stdout
    assert "4 cells compared exactly, 2 checked by assertions" in foreign.stdout


def test_untagged_changes_and_false_claims_fail_under_both_fingerprints(book, monkeypatch):
    root, nb_path = book
    nb = nbformat.read(nb_path, as_version=4)
    code_cells(nb)[UNTAGGED_TEXT].outputs[0]["text"] = "46\n"
    nbformat.write(nb, nb_path)
    redraw(root / "figures/01-mini/fig-mini-line.png")  # an untagged figure
    monkeypatch.setenv("MINI_EXPECT", "46")  # the claim cell's assertion is now false
    expected = {UNTAGGED_TEXT, 2, CLAIM_CELL}
    for fingerprint in (None, FOREIGN):
        if fingerprint:
            set_fingerprint(nb_path, fingerprint)
        proc = run_nbval(root, native_env())
        assert proc.returncode != 0
        assert failed_cells(proc) == expected, proc.stdout[-3000:]
        assert "the claim is false" in proc.stdout


def test_a_stale_classification_is_reported_by_the_book_checks(book):
    root, nb_path = book
    nb = nbformat.read(nb_path, as_version=4)
    cells = code_cells(nb)
    cells[TAGGED_TEXT].metadata.pop("tags")  # changes under the alternative kernels, untagged
    cells[UNTAGGED_TEXT].metadata["tags"] = [PLATFORM_TAG]  # tagged, but does not change
    cells[CLAIM_CELL].source += "\n# edited after make notebook"
    nbformat.write(nb, nb_path)
    messages = [p.message for p in check_book(root, only=["platform"])]
    untagged = f"cell {nb.cells.index(cells[TAGGED_TEXT])} "
    assert any(m.startswith(untagged) and "is not tagged" in m for m in messages), messages
    assert any("is tagged platform-dependent but its outputs do not change" in m for m in messages)
    assert any("was edited after the classification" in m for m in messages)
    assert len(messages) == 3

    nb.metadata.pop("mlupdates")
    nbformat.write(nb, nb_path)
    assert [p.message for p in check_book(root, only=["platform"])] == [
        "no platform classification recorded; re-execute it (make notebook NB=...)"
    ]


def test_a_figure_listed_wrongly_is_reported(book):
    root, nb_path = book
    nb = nbformat.read(nb_path, as_version=4)
    nb.metadata["mlupdates"]["platform_dependent_figures"] = ["fig-mini-line"]
    nbformat.write(nb, nb_path)
    messages = [p.message for p in check_book(root, only=["platform"])]
    assert any("fig-mini-line" in m and "equals" in m for m in messages), messages
    assert any("fig-mini-kernels" in m and "differs from" in m for m in messages), messages
