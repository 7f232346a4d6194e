"""The book checks: what ``quarto render`` would trip over, found without Quarto.

Quarto is not installable on the machines that build and test this book, so these checks
are the render guard. They read ``_quarto.yml``, every page it lists (``.qmd`` prose and
``.ipynb`` chapters with their stored outputs) and ``references.bib``, and report each
problem with the file it is in:

- ``chapters``: every page listed in ``_quarto.yml`` exists; every notebook and prose page
  is listed; a notebook's first code cell makes the one setup call.
- ``labels``: no label (``sec-``, ``fig-``, ``tbl-``, ``eq-``) is defined twice in the book
  (the Typst PDF fails on duplicates).
- ``references``: every ``@fig-/@tbl-/@sec-/@eq-`` reference resolves to a label.
- ``citations``: every cited key is in the bibliography, every entry is cited, and no key is
  defined twice (Quarto's citeproc would silently pick one).
- ``captions``: every figure and table label has a caption, every figure cell writes its
  image through ``show(fig, "<label>")`` and the committed PNG exists, and no PNG in
  ``figures/`` is orphaned.
- ``sections``: no heading is followed directly by another heading or the end of the page.
- ``seed``: every section of the 2023 source notebook has a home (``tests/data``).
- ``execution``: notebooks are executed top to bottom in one kernel, without errors.
- ``platform``: each notebook's record of which cells depend on float rounding (written by
  ``make notebook``) is current: no cell edited since, every cell whose outputs changed under
  the alternative kernels tagged ``platform-dependent`` and no other
  (:func:`mlupdates.reproduction.stale_classification`).

Run ``python -m mlupdates.bookcheck [ROOT]`` to print every problem (exit status 1 if any).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CROSSREF_KINDS = ("sec", "fig", "tbl", "eq")
_KIND = "|".join(CROSSREF_KINDS)
LABEL_DEF = re.compile(rf"\{{#((?:{_KIND})-[A-Za-z0-9_-]*[A-Za-z0-9])[\s}}]")
LABEL_REF = re.compile(rf"(?<![\w@./:-])-?@((?:{_KIND})-[A-Za-z0-9_-]*[A-Za-z0-9])")
CITATION = re.compile(r"(?<![\w@./:-])-?@([A-Za-z][\w:.#$%&+?<>~/-]*\w)")
BIB_ENTRY = re.compile(r"^@(\w+)\s*\{\s*([^,\s]+)\s*,", re.MULTILINE)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
CELL_OPTION = re.compile(r"^#\|\s*([\w-]+)\s*:\s*(.*?)\s*$")
SHOW_CALL = re.compile(r"\bshow\(\s*\w+\s*,\s*['\"](fig-[a-z0-9-]+)['\"]")
SETUP_CALL = re.compile(r"\bsetup\(\s*(?:notebook\s*=\s*)?['\"]([^'\"]+)['\"]")
SEED_SECTIONS = Path("tests/data/seed_sections.yaml")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the book, located by file."""

    check: str
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message} [{self.check}]"


@dataclass
class Cell:
    kind: str  # "markdown" or "code"
    source: str
    outputs: list[dict] = field(default_factory=list)
    execution_count: int | None = None

    @property
    def options(self) -> dict[str, str]:
        """Quarto cell options (``#| key: value`` lines at the top of a code cell)."""
        opts: dict[str, str] = {}
        for line in self.source.splitlines():
            match = CELL_OPTION.match(line)
            if not match:
                break
            opts[match[1]] = match[2].strip().strip("'\"")
        return opts


@dataclass
class Page:
    path: Path  # relative to the book root
    cells: list[Cell]

    @property
    def is_notebook(self) -> bool:
        return self.path.suffix == ".ipynb"

    def prose(self) -> Iterator[str]:
        """Markdown text with code (fenced blocks and inline spans) removed, plus captions."""
        for cell in self.cells:
            if cell.kind == "markdown":
                yield INLINE_CODE.sub("", _without_fences(cell.source))
            else:
                for key in ("fig-cap", "tbl-cap", "fig-alt"):
                    if key in cell.options:
                        yield cell.options[key]


def _without_fences(text: str) -> str:
    kept, inside = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            kept.append(line)
    return "\n".join(kept)


def _strip_front_matter(text: str) -> str:
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            return text[end + 4 :]
    return text


def read_page(root: Path, rel: Path) -> Page:
    """Load a ``.qmd`` page as one markdown cell, or a notebook cell by cell."""
    path = root / rel
    if rel.suffix == ".ipynb":
        nb = json.loads(path.read_text(encoding="utf-8"))
        cells = []
        for c in nb.get("cells", []):
            src = c.get("source", "")
            src = "".join(src) if isinstance(src, list) else src
            if c.get("cell_type") == "markdown":
                cells.append(Cell("markdown", src))
            elif c.get("cell_type") == "code":
                cells.append(Cell("code", src, c.get("outputs", []), c.get("execution_count")))
        return Page(rel, cells)
    return Page(rel, [Cell("markdown", _strip_front_matter(path.read_text(encoding="utf-8")))])


class Book:
    """A Quarto book on disk: its configuration, pages and bibliography."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        config_path = self.root / "_quarto.yml"
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path}: not a Quarto book (no _quarto.yml)")
        self.config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        self.listed = self._listed_files()
        self.pages = [read_page(self.root, p) for p in self.listed if (self.root / p).is_file()]

    def _listed_files(self) -> list[Path]:
        book = self.config.get("book", {})
        files: list[Path] = []

        def walk(entries: list) -> None:
            for entry in entries or []:
                if isinstance(entry, str):
                    files.append(Path(entry))
                elif isinstance(entry, dict):
                    part = entry.get("part")
                    if isinstance(part, str) and part.endswith((".qmd", ".md", ".ipynb")):
                        files.append(Path(part))
                    walk(entry.get("chapters", []))

        walk(book.get("chapters", []))
        walk(book.get("appendices", []))
        return files

    @property
    def bibliography_files(self) -> list[Path]:
        bib = self.config.get("bibliography", [])
        return [Path(b) for b in ([bib] if isinstance(bib, str) else bib)]

    def bib_keys(self) -> dict[str, Path]:
        keys: dict[str, Path] = {}
        for rel in self.bibliography_files:
            path = self.root / rel
            if path.is_file():
                for _kind, key in BIB_ENTRY.findall(path.read_text(encoding="utf-8")):
                    keys[key] = rel
        return keys

    def labels(self) -> dict[str, list[Path]]:
        """Every cross-reference label and the pages that define it."""
        found: dict[str, list[Path]] = {}
        for page in self.pages:
            for cell in page.cells:
                if cell.kind == "markdown":
                    names = LABEL_DEF.findall(_without_fences(cell.source) + "\n")
                else:
                    label = cell.options.get("label", "")
                    names = (
                        [label] if label.startswith(tuple(f"{k}-" for k in CROSSREF_KINDS)) else []
                    )
                for name in names:
                    found.setdefault(name, []).append(page.path)
        return found


# --- the checks -------------------------------------------------------------------------


def check_chapters(book: Book) -> Iterator[Problem]:
    for rel in book.listed:
        if not (book.root / rel).is_file():
            yield Problem("chapters", "_quarto.yml", f"lists {rel}, which does not exist")
    listed = {p.as_posix() for p in book.listed}
    candidates = [*sorted((book.root / "notebooks").glob("*.ipynb"))]
    candidates += sorted((book.root / "chapters").glob("*.qmd"))
    for path in candidates:
        rel = path.relative_to(book.root).as_posix()
        if rel not in listed:
            yield Problem("chapters", rel, "is not listed in _quarto.yml (book.chapters)")
    for page in book.pages:
        code = [c for c in page.cells if c.kind == "code" and c.source.strip()]
        if not page.is_notebook or not code:
            continue
        setups = [(i, SETUP_CALL.search(c.source)) for i, c in enumerate(code)]
        calls = [(i, m) for i, m in setups if m]
        if not calls or calls[0][0] != 0:
            yield Problem(
                "chapters",
                str(page.path),
                f'first code cell must call setup(notebook="{page.path.stem}")',
            )
        elif calls[0][1][1] != page.path.stem:
            yield Problem(
                "chapters",
                str(page.path),
                f"setup(notebook={calls[0][1][1]!r}) does not name this notebook "
                f"({page.path.stem!r}); its figures would land in the wrong folder",
            )
        if len(calls) > 1:
            yield Problem("chapters", str(page.path), "calls setup() more than once")


def check_labels(book: Book) -> Iterator[Problem]:
    for label, pages in sorted(book.labels().items()):
        if len(pages) > 1:
            where = ", ".join(str(p) for p in pages)
            yield Problem(
                "labels", str(pages[0]), f"label {label} is defined {len(pages)} times ({where})"
            )


def check_references(book: Book) -> Iterator[Problem]:
    labels = book.labels()
    for page in book.pages:
        for text in page.prose():
            for ref in LABEL_REF.findall(text):
                if ref not in labels:
                    yield Problem(
                        "references",
                        str(page.path),
                        f"@{ref} refers to a label that no page defines",
                    )


def citations_in(text: str) -> set[str]:
    """Citation keys in Pandoc syntax (``[@key]``, ``@key``), cross-references excluded."""
    return {
        key
        for key in CITATION.findall(text)
        if not key.startswith(tuple(f"{k}-" for k in CROSSREF_KINDS))
    }


def check_citations(book: Book) -> Iterator[Problem]:
    keys = book.bib_keys()
    for rel in book.bibliography_files:
        if not (book.root / rel).is_file():
            yield Problem("citations", "_quarto.yml", f"bibliography {rel} does not exist")
    for rel in book.bibliography_files:
        path = book.root / rel
        if path.is_file():
            seen: set[str] = set()
            for _kind, key in BIB_ENTRY.findall(path.read_text(encoding="utf-8")):
                if key in seen:
                    yield Problem("citations", str(rel), f"entry {key} is defined more than once")
                seen.add(key)
    cited: set[str] = set()
    for page in book.pages:
        for text in page.prose():
            for key in sorted(citations_in(text)):
                cited.add(key)
                if key not in keys:
                    yield Problem(
                        "citations",
                        str(page.path),
                        f"cites @{key}, which is not in the bibliography",
                    )
    for key, rel in sorted(keys.items()):
        if key not in cited:
            yield Problem("citations", str(rel), f"entry {key} is never cited in the book")


def check_captions(book: Book) -> Iterator[Problem]:
    figures_root = book.root / "figures"
    expected: set[Path] = set()
    for page in book.pages:
        for cell in page.cells:
            if cell.kind != "code":
                if cell.kind == "markdown":
                    for match in re.finditer(r"!\[([^\]]*)\]\([^)]*\)\{#(fig-[\w-]+)", cell.source):
                        if not match[1].strip():
                            yield Problem(
                                "captions", str(page.path), f"figure {match[2]} has no caption"
                            )
                continue
            label = cell.options.get("label", "")
            if label.startswith("fig-"):
                if not cell.options.get("fig-cap"):
                    yield Problem("captions", str(page.path), f"figure {label} has no fig-cap")
                shown = SHOW_CALL.findall(cell.source)
                if shown != [label]:
                    yield Problem(
                        "captions",
                        str(page.path),
                        f"figure cell {label} must end with show(fig, {label!r}) "
                        f"(found {shown or 'no show() call'})",
                    )
                png = figures_root / page.path.stem / f"{label}.png"
                expected.add(png)
                if not png.is_file():
                    yield Problem(
                        "captions",
                        str(page.path),
                        f"figure {label} has no committed image {png.relative_to(book.root)}",
                    )
            elif label.startswith("tbl-") and not cell.options.get("tbl-cap"):
                yield Problem("captions", str(page.path), f"table {label} has no tbl-cap")
            elif not label and SHOW_CALL.search(cell.source):
                yield Problem(
                    "captions", str(page.path), "a cell calls show() but has no '#| label: fig-...'"
                )
    if figures_root.is_dir():
        for png in sorted(figures_root.glob("*/*.png")):
            notebook = Path("notebooks") / f"{png.parent.name}.ipynb"
            if notebook in book.listed and png not in expected:
                yield Problem(
                    "captions",
                    str(png.relative_to(book.root)),
                    "no figure cell writes this image any more; delete it",
                )


def sections(page: Page) -> Iterator[tuple[str, bool]]:
    """Each heading of a page with whether content follows it before the next heading.

    Lines inside fenced code blocks are content, never headings (``# comment`` in a
    fenced Python example is not a section).
    """
    current: str | None = None
    has_content = False
    for cell in page.cells:
        if cell.kind == "code":
            has_content = has_content or bool(cell.source.strip())
            continue
        inside_fence = False
        for line in cell.source.splitlines():
            if FENCE.match(line):
                inside_fence = not inside_fence
                has_content = True
                continue
            match = None if inside_fence else HEADING.match(line)
            if match:
                if current is not None:
                    yield current, has_content
                current, has_content = match[2], False
            elif line.strip():
                has_content = True
    if current is not None:
        yield current, has_content


def check_sections(book: Book) -> Iterator[Problem]:
    for page in book.pages:
        for heading, has_content in sections(page):
            if not has_content:
                yield Problem(
                    "sections",
                    str(page.path),
                    f"section '{heading}' is empty (no text before the next heading)",
                )


def check_seed(book: Book, seed_sections: Path | None = None) -> Iterator[Problem]:
    path = book.root / (seed_sections or SEED_SECTIONS)
    if not path.is_file():
        yield Problem("seed", str(seed_sections or SEED_SECTIONS), "seed section list is missing")
        return
    pages = {p.path.as_posix(): p for p in book.pages}
    for entry in yaml.safe_load(path.read_text(encoding="utf-8")):
        name = f"{entry['number'] or 'unnumbered'} '{entry['title']}'"
        page = pages.get(entry["home"])
        if page is None:
            yield Problem(
                "seed", entry["home"], f"seed section {name} has no home: page not in the book"
            )
            continue
        found = [h for h, _ in sections(page) if re.search(rf"\{{#{entry['label']}[\s}}]", h + " ")]
        if not found:
            yield Problem(
                "seed",
                entry["home"],
                f"seed section {name} has no home: no heading with id {{#{entry['label']}}}",
            )


def check_execution(book: Book) -> Iterator[Problem]:
    for page in book.pages:
        if not page.is_notebook:
            continue
        code = [c for c in page.cells if c.kind == "code" and c.source.strip()]
        counts = [c.execution_count for c in code]
        if counts != list(range(1, len(code) + 1)):
            yield Problem(
                "execution",
                str(page.path),
                f"not executed top to bottom in one fresh kernel (execution counts {counts[:10]}"
                f"{'...' if len(counts) > 10 else ''}); re-run: make notebook NB={page.path.stem}",
            )
        for i, cell in enumerate(code, start=1):
            for out in cell.outputs:
                if out.get("output_type") == "error":
                    yield Problem(
                        "execution",
                        str(page.path),
                        f"code cell {i} stored an error: {out.get('ename')}: {out.get('evalue')}",
                    )


def check_platform(book: Book) -> Iterator[Problem]:
    from mlupdates.reproduction import stale_classification  # imports nbformat/nbclient

    for page in book.pages:
        if page.is_notebook:
            for message in stale_classification(book.root / page.path, book.root):
                yield Problem("platform", str(page.path), message)


CHECKS: dict[str, Callable[[Book], Iterator[Problem]]] = {
    "chapters": check_chapters,
    "labels": check_labels,
    "references": check_references,
    "citations": check_citations,
    "captions": check_captions,
    "sections": check_sections,
    "seed": check_seed,
    "execution": check_execution,
    "platform": check_platform,
}


def check_book(root: Path | str = ".", only: list[str] | None = None) -> list[Problem]:
    """Run the named checks (all by default) on the book at ``root``."""
    unknown = set(only or []) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; choose from {sorted(CHECKS)}")
    book = Book(Path(root))
    return [p for name, check in CHECKS.items() if not only or name in only for p in check(book)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    problems = check_book(args[0] if args else ".")
    for problem in problems:
        print(problem)
    print(f"book checks: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
