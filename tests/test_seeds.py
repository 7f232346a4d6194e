"""``make seeds``: every assertion under several seeds and the alternative kernels."""

from __future__ import annotations

import nbformat
import pytest

from mlupdates import seeds

from .conftest import make_mini_book

SEED_CLAIM = """from mlupdates.runtime import current
assert current().seed != 3, "seed 3 breaks it\""""
KERNEL_CLAIM = """import os
assert "ATEN_CPU_CAPABILITY" not in os.environ, "other kernels break it\""""


def test_parse_runs():
    assert seeds.parse_runs("0-4") == [0, 1, 2, 3, 4]
    assert seeds.parse_runs("3,0, 1-2") == [0, 1, 2, 3]
    for bad in ("", "4-2", "-1"):
        with pytest.raises(ValueError):
            seeds.parse_runs(bad)


def test_failing_line_is_the_cells_own_line():
    tb = [
        "\x1b[31m---------------------------------------------------------------------------\x1b[39m",
        "\x1b[31mAssertionError\x1b[39m                            Traceback (most recent call last)",
        "Cell \x1b[32mIn[3]\x1b[39m, line 2\n      1 x = 1\n\x1b[32m----> 2\x1b[39m \x1b[38;5;28;01massert\x1b[39;00m x == 2\n",
        "File lib.py:9, in f()\n----> 9 raise ValueError\n",
    ]
    assert seeds.failing_line(tb) == "assert x == 2"
    assert seeds.failing_line(["no arrow here"]) == ""


def test_count_assertions_ignores_magics_and_prose():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("assert nothing here"),
        nbformat.v4.new_code_cell(
            "%matplotlib inline\nassert 1\nfor i in range(3):\n    assert i < 3"
        ),
        nbformat.v4.new_code_cell("def f(:\n  broken"),
    ]
    assert seeds.count_assertions(nb) == 2


@pytest.mark.slow
def test_runner_reports_each_failing_assertion_with_its_run(tmp_path, capsys):
    nb_path = make_mini_book(tmp_path)
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells += [nbformat.v4.new_code_cell(SEED_CLAIM), nbformat.v4.new_code_cell(KERNEL_CLAIM)]
    nbformat.write(nb, nb_path)
    before = nb_path.read_bytes()
    assert seeds.main([str(nb_path), "--seeds", "2-3"]) == 1
    out = capsys.readouterr().out
    assert "3 runs of 1 notebooks (2 assertions)" in out
    rows = [line for line in out.splitlines() if line.startswith("01-mini ")]
    assert len(rows) == 2, out
    assert (
        "seed 3, native" in rows[0] and 'assert current().seed != 3, "seed 3 breaks it"' in rows[0]
    )
    assert "seed 2, ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE" in rows[1]
    assert "other kernels break it" in rows[1]
    assert nb_path.read_bytes() == before  # nothing replaced
    assert not (tmp_path / "figures").exists()

    assert seeds.main([str(nb_path), "--seeds", "0", "--no-alt"]) == 0
    assert "all 2 assertions held on 1 runs" in capsys.readouterr().out
