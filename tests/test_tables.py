"""Markdown tables for tbl- cells."""

import pytest

from mlupdates.tables import markdown_table, markdown_text


def test_renders_pipe_table():
    text = markdown_text(["a", "b"], [[1, "x|y"], [2, "z"]], align="lr")
    assert text.splitlines() == ["| a | b |", "|:--|--:|", "| 1 | x\\|y |", "| 2 | z |"]
    assert markdown_table(["a"], [[1]]).data == "| a |\n|:--|\n| 1 |"


def test_errors():
    with pytest.raises(ValueError, match=r"rows\[1\] has 1 cells but header has 2"):
        markdown_text(["a", "b"], [[1, 2], [3]])
    with pytest.raises(ValueError, match="align='lx'"):
        markdown_text(["a", "b"], [], align="lx")
    with pytest.raises(ValueError, match="header"):
        markdown_text([], [])
