"""The book checks pass on the book, and each one fails, naming file and problem, when a
copy of the book is broken in the way it guards against."""

import json
from pathlib import Path

import pytest

from mlupdates import bookcheck
from mlupdates.bookcheck import CHECKS, Book, check_book, citations_in

ROOT = Path(__file__).resolve().parents[1]
PILOT = "notebooks/01-transformer.ipynb"


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_the_book_passes(check):
    problems = check_book(ROOT, only=[check])
    assert not problems, "\n".join(map(str, problems))


# --- helpers that break a copy -----------------------------------------------------------


def load(book: Path, rel: str) -> dict:
    return json.loads((book / rel).read_text())


def save(book: Path, rel: str, nb: dict) -> None:
    (book / rel).write_text(json.dumps(nb, indent=1))


def source(cell: dict) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def first_figure_cell(nb: dict) -> dict:
    return next(
        c for c in nb["cells"] if c["cell_type"] == "code" and "#| label: fig-" in source(c)
    )


def figure_label(cell: dict) -> str:
    line = next(x for x in source(cell).splitlines() if x.startswith("#| label:"))
    return line.split(":", 1)[1].strip()


def problems_of(book: Path, check: str) -> list[str]:
    return [str(p) for p in check_book(book, only=[check])]


def assert_reported(book: Path, check: str, *fragments: str) -> None:
    found = problems_of(book, check)
    assert any(all(f in p for f in fragments) for p in found), (fragments, found)


def test_copy_of_book_starts_clean(book_copy):
    assert check_book(book_copy) == []


# --- chapters ----------------------------------------------------------------------------


def test_listed_chapter_that_does_not_exist(book_copy):
    (book_copy / "notebooks/07-azure.ipynb").unlink()
    assert_reported(
        book_copy, "chapters", "_quarto.yml", "notebooks/07-azure.ipynb", "does not exist"
    )


def test_notebook_missing_from_quarto_yml(book_copy):
    (book_copy / "notebooks/99-extra.ipynb").write_text((book_copy / PILOT).read_text())
    assert_reported(book_copy, "chapters", "notebooks/99-extra.ipynb", "not listed in _quarto.yml")


def test_setup_call_must_come_first_and_name_the_notebook(book_copy):
    nb = load(book_copy, PILOT)
    setup_cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    setup_cell["source"] = source(setup_cell).replace('"01-transformer"', '"01-other"')
    save(book_copy, PILOT, nb)
    assert_reported(book_copy, "chapters", PILOT, "does not name this notebook")
    setup_cell["source"] = "x = 1"
    save(book_copy, PILOT, nb)
    assert_reported(book_copy, "chapters", PILOT, "first code cell must call setup")


# --- labels and references ---------------------------------------------------------------


def test_broken_cross_reference(book_copy):
    nb = load(book_copy, PILOT)
    cell = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
    cell["source"] = source(cell) + "\n\nAs @fig-does-not-exist shows, nothing."
    save(book_copy, PILOT, nb)
    assert_reported(book_copy, "references", PILOT, "@fig-does-not-exist")


def test_label_defined_twice(book_copy):
    preface = book_copy / "chapters/preface.qmd"
    preface.write_text(preface.read_text() + "\n## Again {#sec-attention-mechanism}\n\nText.\n")
    assert_reported(book_copy, "labels", "sec-attention-mechanism", "defined 2 times")


# --- citations ---------------------------------------------------------------------------


def test_citation_missing_from_bibliography(book_copy):
    preface = book_copy / "chapters/preface.qmd"
    preface.write_text(preface.read_text() + "\nA claim [@nobody2099claim].\n")
    assert_reported(book_copy, "citations", "chapters/preface.qmd", "@nobody2099claim")


def test_bibliography_entry_never_cited(book_copy):
    bib = book_copy / "references.bib"
    bib.write_text(
        bib.read_text() + "\n@misc{orphan2000entry,\n  title = {Unused},\n  year = {2000}\n}\n"
    )
    assert_reported(book_copy, "citations", "references.bib", "orphan2000entry", "never cited")


def test_citation_syntax_is_told_apart_from_emails_code_and_crossrefs():
    text = "See [@vaswani2017attention; -@hu2022lora] and @su2024roformer, not a@b.com or @fig-x."
    assert citations_in(text) == {"vaswani2017attention", "hu2022lora", "su2024roformer"}


def test_code_is_not_mistaken_for_citations(book_copy):
    preface = book_copy / "chapters/preface.qmd"
    preface.write_text(
        preface.read_text() + "\nUse `@dataclass`.\n\n```python\n@torch.no_grad()\n```\n"
    )
    assert problems_of(book_copy, "citations") == []


# --- captions and figures ------------------------------------------------------------------


def test_figure_without_caption(book_copy):
    nb = load(book_copy, PILOT)
    cell = first_figure_cell(nb)
    label = figure_label(cell)
    cell["source"] = "\n".join(
        x for x in source(cell).splitlines() if not x.startswith("#| fig-cap")
    )
    save(book_copy, PILOT, nb)
    assert_reported(book_copy, "captions", PILOT, label, "has no fig-cap")


def test_figure_image_missing(book_copy):
    label = figure_label(first_figure_cell(load(book_copy, PILOT)))
    (book_copy / "figures/01-transformer" / f"{label}.png").unlink()
    assert_reported(book_copy, "captions", PILOT, label, "no committed image")


def test_figure_written_under_another_label(book_copy):
    nb = load(book_copy, PILOT)
    cell = first_figure_cell(nb)
    label = figure_label(cell)
    cell["source"] = source(cell).replace(f'"{label}"', '"fig-something-else"')
    save(book_copy, PILOT, nb)
    assert_reported(book_copy, "captions", PILOT, f"show(fig, '{label}')")


def test_orphaned_figure_file(book_copy):
    folder = book_copy / "figures/01-transformer"
    (folder / "fig-stale.png").write_bytes(next(folder.glob("*.png")).read_bytes())
    assert_reported(book_copy, "captions", "figures/01-transformer/fig-stale.png", "delete it")


# --- sections and the seed ---------------------------------------------------------------


def test_empty_section(book_copy):
    preface = book_copy / "chapters/preface.qmd"
    preface.write_text(preface.read_text() + "\n## Nothing here yet\n\n## Next\n\nText.\n")
    assert_reported(book_copy, "sections", "chapters/preface.qmd", "'Nothing here yet' is empty")


def test_headings_inside_code_fences_are_not_sections(book_copy):
    preface = book_copy / "chapters/preface.qmd"
    preface.write_text(preface.read_text() + "\n```python\n# a comment, not a heading\n```\n")
    assert problems_of(book_copy, "sections") == []


def test_seed_section_without_a_home(book_copy):
    nb = load(book_copy, PILOT)
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            cell["source"] = source(cell).replace("{#sec-attention-mechanism}", "")
    save(book_copy, PILOT, nb)
    assert_reported(book_copy, "seed", PILOT, "1.3 'Attention Mechanism' has no home")


# --- execution -----------------------------------------------------------------------------


def test_error_output_stored_in_notebook(book_copy):
    nb = load(book_copy, PILOT)
    cell = [c for c in nb["cells"] if c["cell_type"] == "code"][1]
    cell["outputs"].append(
        {"output_type": "error", "ename": "ValueError", "evalue": "boom", "traceback": []}
    )
    save(book_copy, PILOT, nb)
    assert_reported(book_copy, "execution", PILOT, "stored an error: ValueError: boom")


def test_cells_executed_out_of_order(book_copy):
    nb = load(book_copy, PILOT)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    code[0]["execution_count"], code[1]["execution_count"] = 2, 1
    save(book_copy, PILOT, nb)
    assert_reported(book_copy, "execution", PILOT, "not executed top to bottom")


def test_command_line_lists_problems_and_fails(book_copy, capsys):
    (book_copy / "notebooks/07-azure.ipynb").unlink()
    assert bookcheck.main([str(book_copy)]) == 1
    out = capsys.readouterr().out
    assert "notebooks/07-azure.ipynb" in out and "problem(s)" in out
    assert isinstance(Book(book_copy).pages, list)


def test_bibliography_key_defined_twice(book_copy):
    bib = book_copy / "references.bib"
    text = bib.read_text()
    first = text[text.index("@") : text.index("\n}\n") + 3]  # the first entry, verbatim
    bib.write_text(text + "\n" + first)
    key = first.split("{", 1)[1].split(",", 1)[0]
    assert_reported(book_copy, "citations", "references.bib", key, "more than once")
