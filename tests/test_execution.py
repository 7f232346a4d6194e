"""Safe re-execution: a good run replaces notebook and figures, a failing one touches nothing."""

import json
import sys

import nbformat
import pytest

from mlupdates.bookcheck import check_book
from mlupdates.execution import coalesce_streams, execute_in_place, main

from .conftest import make_mini_book

pytestmark = pytest.mark.slow


def test_successful_run_replaces_notebook_and_figure_folder(mini_book):
    nb_path = mini_book / "notebooks/01-mini.ipynb"
    stale = mini_book / "figures/01-mini/fig-no-longer-drawn.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    execute_in_place(nb_path)
    nb = nbformat.read(nb_path, as_version=4)
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == [1, 2, 3]
    assert nb.cells[2].outputs[0]["text"] == "45\n"
    assert (mini_book / "figures/01-mini/fig-mini-line.png").is_file()
    assert not stale.exists()  # the folder is replaced whole
    assert "execution" not in json.dumps([c.metadata for c in nb.cells])  # no timestamps
    assert check_book(mini_book, only=["execution", "captions", "chapters"]) == []


def test_failing_run_leaves_committed_files_untouched(tmp_path, capsys):
    nb_path = make_mini_book(tmp_path)
    execute_in_place(nb_path)  # a good, committed state
    png = tmp_path / "figures/01-mini/fig-mini-line.png"
    good_nb, good_png = nb_path.read_bytes(), png.read_bytes()
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells[2].source = "raise RuntimeError('the experiment broke')"
    nbformat.write(nb, nb_path)
    edited = nb_path.read_bytes()
    assert main([str(nb_path)]) == 1
    assert "the experiment broke" in capsys.readouterr().out
    assert nb_path.read_bytes() == edited  # not replaced by a half-executed copy
    assert png.read_bytes() == good_png
    assert not list(tmp_path.glob("notebooks/.*"))  # no staging files left behind
    assert good_nb != edited


def test_measure_reports_time_and_memory(mini_book):
    from mlupdates.execution import measure

    m = measure(mini_book / "notebooks/01-mini.ipynb")
    assert m.notebook == "01-mini"
    assert 0 < m.wall_s < 120
    assert m.peak_rss_mib > 50  # a kernel that imported torch and matplotlib
    assert sys.executable  # measured in a child of this interpreter


def test_stream_chunks_are_joined_per_run_of_one_stream():
    out = nbformat.v4.new_output
    cell = nbformat.v4.new_code_cell("print('a b')")
    cell.outputs = [
        out("stream", name="stdout", text="architecture:"),
        out("stream", name="stdout", text=" 2 layers\n"),
        out("stream", name="stderr", text="warning\n"),
        out("stream", name="stdout", text="after\n"),
        out("execute_result", data={"text/plain": "1"}, execution_count=1),
        out("stream", name="stdout", text="x\n"),
    ]
    nb = nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_markdown_cell("text")])
    coalesce_streams(nb)
    assert [(o.output_type, o.get("name"), o.get("text")) for o in nb.cells[0].outputs] == [
        ("stream", "stdout", "architecture: 2 layers\n"),
        ("stream", "stderr", "warning\n"),
        ("stream", "stdout", "after\n"),
        ("execute_result", None, None),
        ("stream", "stdout", "x\n"),
    ]
