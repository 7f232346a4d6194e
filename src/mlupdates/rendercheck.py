"""The render checks: what a real ``quarto render`` of the book printed and produced.

``tests/test_quarto_render.py`` renders the whole book (HTML and Typst PDF) where Quarto is
installed and hands the log and the output folder to :func:`check_render`, which reports:

- every line of the log that warns or errs: Quarto's ``WARN``/``ERROR``, Pandoc's
  ``[WARNING]``, Typst's ``warning:``/``error:`` (deprecated symbols, unknown fonts...);
- every unresolved cross-reference left in the text of an HTML page or of the PDF: Quarto
  prints a reference it cannot resolve as ``?@sec-...``, LaTeX and others as ``??``;
- a missing PDF, or one shorter than ``min_pages`` (a chapter silently dropped).

Each check is a small function of text, so the tests prove it on synthetic inputs (a log
with a warning, a page with ``?@``, a three-page PDF) without rendering twice.
Run ``python -m mlupdates.rendercheck OUTPUT_DIR LOG`` to check a render made by hand.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

MIN_PAGES = 150
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Quarto: "WARN: ...", "ERROR: ..."; Pandoc: "[WARNING] ..."; Typst and other compilers:
# "warning: ...", "error: ...", also mid-line ("Compiling index.typ...warning: ...").
LOG_PROBLEM = re.compile(r"\b(?:WARN|WARNING|ERROR)\b|\b(?:warning|error)(?:\[\w+\])?:")
STRAY_REFERENCE = re.compile(r"\?@[\w:.-]*|\?\?")


def log_problems(log: str) -> list[str]:
    """The lines of a render log that report a warning or an error, colour codes removed."""
    lines = (ANSI_ESCAPE.sub("", line).strip() for line in log.splitlines())
    return [line for line in lines if LOG_PROBLEM.search(line)]


def stray_references(text: str, context: int = 30) -> list[str]:
    """Each unresolved reference (``?@label`` or ``??``) in ``text``, with some context."""
    return [
        " ".join(text[max(0, m.start() - context) : m.end() + context].split())
        for m in STRAY_REFERENCE.finditer(text)
    ]


class _VisibleText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hidden = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style"):
            self.hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self.hidden = max(0, self.hidden - 1)

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def html_text(html: str) -> str:
    """The text a reader sees on an HTML page: no tags, no scripts (which may say ``??``)."""
    parser = _VisibleText()
    parser.feed(html)
    parser.close()
    return "".join(parser.parts)


def pdf_pages(path: Path) -> list[str]:
    """The text of each page of a PDF."""
    from pypdf import PdfReader

    return [page.extract_text() or "" for page in PdfReader(path).pages]


def pdf_problems(pages: list[str], min_pages: int = MIN_PAGES) -> list[str]:
    """A PDF (its pages' text) that is too short, or whose text holds a stray reference."""
    problems = []
    if len(pages) < min_pages:
        problems.append(f"the PDF has {len(pages)} pages, fewer than {min_pages}")
    for number, text in enumerate(pages, start=1):
        problems += [
            f"PDF page {number}: unresolved reference {s!r}" for s in stray_references(text)
        ]
    return problems


def check_render(output_dir: Path, log: str, min_pages: int = MIN_PAGES) -> list[str]:
    """Every problem with a rendered book: its log, its HTML pages and its PDF."""
    output_dir = Path(output_dir)
    problems = [f"render log: {line}" for line in log_problems(log)]
    pages = sorted(output_dir.rglob("*.html"))
    if not pages:
        problems.append(f"{output_dir}: no HTML pages")
    for page in pages:
        text = html_text(page.read_text(encoding="utf-8"))
        rel = page.relative_to(output_dir)
        problems += [f"{rel}: unresolved reference {s!r}" for s in stray_references(text)]
    pdfs = sorted(output_dir.glob("*.pdf"))
    if len(pdfs) != 1:
        problems.append(f"{output_dir}: expected one PDF, found {[p.name for p in pdfs]}")
    for pdf in pdfs:
        problems += pdf_problems(pdf_pages(pdf), min_pages)
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m mlupdates.rendercheck OUTPUT_DIR LOG", file=sys.stderr)
        return 2
    problems = check_render(Path(args[0]), Path(args[1]).read_text(encoding="utf-8"))
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
