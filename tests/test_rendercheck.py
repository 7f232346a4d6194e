"""The render checks on synthetic inputs: each is shown to catch what it is for."""

from pathlib import Path

from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

from mlupdates.rendercheck import (
    check_render,
    html_text,
    log_problems,
    pdf_pages,
    pdf_problems,
    stray_references,
)

# Shaped like the output of the book's real renders (ANSI colours included).
CLEAN_LOG = """\x1b[1m\x1b[34m[ 1/15] index.qmd\x1b[39m\x1b[22m
[ 5/15] notebooks/01-transformer.ipynb
pandoc
  to: typst
  output-file: index.typ
[typst]: Compiling index.typ to index.pdf...DONE

Output created: _book/index.html
"""
QUARTO_WARN = "\x1b[33mWARN: Unable to resolve crossref @sec-missing\x1b[39m\n"
QUARTO_ERROR = "\x1b[91mERROR: Typst compilation failed\x1b[39m\n"
PANDOC_WARNING = "[WARNING] Citeproc: citation vaswani2017 not found\n"
TYPST_WARNING = (
    "[typst]: Compiling index.typ to index.pdf...warning: `angle.l` is deprecated, "
    "use `chevron.l` instead\n     ┌─ index.typ:1280:69\n"
)
TYPST_ERROR = "error: expected alignment, found integer\n"


def test_a_clean_log_has_no_problems():
    assert log_problems(CLEAN_LOG) == []


def test_every_kind_of_warning_or_error_line_is_reported():
    for bad in (QUARTO_WARN, QUARTO_ERROR, PANDOC_WARNING, TYPST_WARNING, TYPST_ERROR):
        problems = log_problems(CLEAN_LOG + bad)
        assert len(problems) == 1, bad
        assert "\x1b" not in problems[0]


def test_stray_references_are_found_with_their_context():
    assert stray_references("See Chapter 2 and Figure 1.3.") == []
    assert stray_references("as shown in ?@sec-missing, the loss") == [
        "as shown in ?@sec-missing, the loss"
    ]
    assert stray_references("see Table ?? above") == ["see Table ?? above"]


def test_html_text_ignores_scripts_but_not_the_page():
    page = "<p>ok</p><script>const a = b ?? c;</script><style>x{}</style>"
    assert stray_references(html_text(page)) == []
    assert stray_references(html_text("<p>see <strong>?@fig-gone</strong></p>")) == [
        "see ?@fig-gone"
    ]


def write_pdf(path: Path, pages: int, text: str = "") -> Path:
    """A PDF of blank pages; the first shows ``text`` in Helvetica."""
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=200, height=200)
    if text:
        page = writer.pages[0]
        font = DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Font"),
                NameObject("/Subtype"): NameObject("/Type1"),
                NameObject("/BaseFont"): NameObject("/Helvetica"),
            }
        )
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        stream = DecodedStreamObject()
        stream.set_data(f"BT /F1 12 Tf 20 100 Td ({text}) Tj ET".encode())
        page.replace_contents(stream)
    with path.open("wb") as f:
        writer.write(f)
    return path


def test_a_short_pdf_is_reported(tmp_path):
    assert pdf_problems(pdf_pages(write_pdf(tmp_path / "long.pdf", 150))) == []
    assert pdf_problems(pdf_pages(write_pdf(tmp_path / "short.pdf", 3))) == [
        "the PDF has 3 pages, fewer than 150"
    ]


def test_a_stray_reference_in_the_pdf_is_reported(tmp_path):
    pages = pdf_pages(write_pdf(tmp_path / "book.pdf", 2, "as in Section ?? we saw"))
    assert pdf_problems(pages, min_pages=2) == [
        "PDF page 1: unresolved reference 'as in Section ?? we saw'"
    ]


def test_check_render_reports_log_pages_and_pdf_together(tmp_path):
    out = tmp_path / "_book"
    (out / "notebooks").mkdir(parents=True)
    (out / "index.html").write_text("<p>Welcome</p>")
    (out / "notebooks" / "01.html").write_text("<p>Chapter 1</p>")
    write_pdf(out / "Book.pdf", 150)
    assert check_render(out, CLEAN_LOG) == []

    (out / "notebooks" / "01.html").write_text("<p>see ?@sec-gone</p>")
    write_pdf(out / "Book.pdf", 3)
    assert check_render(out, CLEAN_LOG + QUARTO_WARN) == [
        "render log: WARN: Unable to resolve crossref @sec-missing",
        "notebooks/01.html: unresolved reference 'see ?@sec-gone'",
        "the PDF has 3 pages, fewer than 150",
    ]


def test_check_render_wants_pages_and_one_pdf(tmp_path):
    assert check_render(tmp_path, CLEAN_LOG) == [
        f"{tmp_path}: no HTML pages",
        f"{tmp_path}: expected one PDF, found []",
    ]
