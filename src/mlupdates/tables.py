"""Render rows as a Markdown table, the output format Quarto needs for ``tbl-`` cells.

A chapter's table cell computes its rows and ends with ``markdown_table(...)``; Quarto
captions the Markdown output it finds under a ``#| label: tbl-...`` cell, so the numbers
in a table are always the ones the cell computed rather than typed by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

from IPython.display import Markdown


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_text(
    header: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None
) -> str:
    """The Markdown source of a pipe table with ``header`` and ``rows``.

    ``align`` is one character per column: ``l``, ``r`` or ``c`` (default: all left).
    """
    if not header:
        raise ValueError("header must name at least one column")
    align = align or "l" * len(header)
    if len(align) != len(header) or set(align) - set("lrc"):
        raise ValueError(f"align={align!r} must be one of l/r/c per column ({len(header)} columns)")
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"rows[{i}] has {len(row)} cells but header has {len(header)}")
    rule = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = [
        "| " + " | ".join(_cell(h) for h in header) + " |",
        "|" + "|".join(rule[a] for a in align) + "|",
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None
) -> Markdown:
    """Display-ready version of :func:`markdown_text` for a notebook cell's output."""
    return Markdown(markdown_text(header, rows, align))
