"""Do the book's claims hold on every seed and under other float kernels? (``make seeds``)

A claim the book asserts is meant to be a fact about the method, not about one draw of the
random numbers or one machine's rounding (DESIGN.md §4). This runner executes every chapter
under each of several seeds (``MLUPDATES_SEED``, which reaches every random choice through
:mod:`mlupdates.runtime`) and once more under the alternative float kernels
(:data:`mlupdates.runtime.ALT_KERNELS`), replacing nothing, and prints every assertion that
failed: notebook, cell, run and the ``assert`` line. A clean run ends with
``all N assertions held on S runs``.

``python -m mlupdates.seeds [notebooks...] [--seeds 0-4] [--no-alt] [--workers 2]``

Each run executes the whole notebook with errors allowed, so one failed claim does not hide
the others; a cell that fails only because an earlier one did is reported too (its error is
not an ``AssertionError``). It takes a while (six runs of every chapter; about half an hour
on two cores) and is not part of ``make test``.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path

import nbformat

from mlupdates.execution import env_label, native_env, pool, run_notebook
from mlupdates.runtime import ALT_KERNELS

ANSI = re.compile(r"\x1b\[[0-9;]*m")
ARROW = re.compile(r"^-*>\s*(\d+)\s?(.*)$")


@dataclass(frozen=True)
class Run:
    """One execution of one notebook: a seed and a kernel set."""

    notebook: Path
    seed: int
    alt: bool

    @property
    def env(self) -> dict[str, str]:
        env = {**native_env(), "MLUPDATES_SEED": str(self.seed)}
        if self.alt:
            env.update(ALT_KERNELS)
        return env

    @property
    def label(self) -> str:
        kernels = env_label(self.env) if self.alt else "native"
        return f"seed {self.seed}, {kernels}"


@dataclass(frozen=True)
class Failure:
    notebook: str
    cell: int  # index in the notebook's cells, as Jupyter shows it (0-based)
    run: str
    line: str  # the failing source line (the assert), or the error itself
    message: str


def parse_runs(spec: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3"`` -> [0, 3]."""
    seeds: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-", 1))
            if hi < lo:
                raise ValueError(f"seed range {part!r} is empty")
            seeds.extend(range(lo, hi + 1))
        else:
            seeds.append(int(part))
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds {spec!r} must name non-negative seeds")
    return sorted(set(seeds))


def count_assertions(nb: nbformat.NotebookNode) -> int:
    """``assert`` statements in the notebook's code cells (IPython magics ignored)."""
    total = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        code = "\n".join(
            "" if line.lstrip().startswith(("%", "!")) else line
            for line in cell.source.splitlines()
        )
        try:
            tree = ast.parse(code)
        except SyntaxError:
            continue
        total += sum(isinstance(node, ast.Assert) for node in ast.walk(tree))
    return total


def failing_line(traceback: Sequence[str]) -> str:
    """The cell's own failing line from an IPython traceback (first ``---->`` arrow)."""
    for chunk in traceback:
        for line in ANSI.sub("", chunk).splitlines():
            match = ARROW.match(line.strip())
            if match and match.group(2).strip():
                return match.group(2).strip()
    return ""


def failures_in(nb: nbformat.NotebookNode, run: Run) -> list[Failure]:
    """Every error output of an executed notebook, as :class:`Failure` rows."""
    rows = []
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") != "error":
                continue
            ename, evalue = out.get("ename", ""), ANSI.sub("", out.get("evalue", ""))
            line = failing_line(out.get("traceback", []))
            message = f"{ename}: {evalue}" if evalue else ename
            rows.append(Failure(run.notebook.stem, index, run.label, line or message, message))
    return rows


def execute(run: Run) -> tuple[list[Failure], float]:
    """Worker: execute one run (errors allowed), return its failures and wall time."""
    start = time.perf_counter()
    os.environ.clear()
    os.environ.update(run.env)
    with tempfile.TemporaryDirectory(prefix="mlupdates-seeds-") as figures:
        try:
            nb = run_notebook(run.notebook, Path(figures), allow_errors=True)
        except Exception as exc:  # a timeout or a dead kernel: the whole run failed
            return [Failure(run.notebook.stem, -1, run.label, type(exc).__name__, str(exc))], (
                time.perf_counter() - start
            )
    return failures_in(nb, run), time.perf_counter() - start


def format_table(failures: Sequence[Failure]) -> str:
    """The failed assertions as a plain-text table, one row each."""
    header = ("notebook", "cell", "run", "assertion")
    rows = [(f.notebook, str(f.cell), f.run, f.line[:110]) for f in failures]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(header[:3], widths, strict=True)) + "  " + header[3]
    ]
    for row in rows:
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument(
        "--seeds", default="0-4", help="seeds to run, e.g. 0-4 or 0,2 (default 0-4)"
    )
    parser.add_argument(
        "--no-alt", action="store_true", help="skip the run under the alternative kernels"
    )
    parser.add_argument("--alt-only", action="store_true", help="only the alternative kernels")
    parser.add_argument("--workers", type=int, default=2, help="notebooks run at once (default 2)")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted(Path("notebooks").glob("*.ipynb"))
    if not notebooks:
        parser.error("no notebooks given and none under notebooks/")
    seeds = parse_runs(args.seeds)
    runs = [] if args.alt_only else [Run(nb, s, False) for nb in notebooks for s in seeds]
    if not args.no_alt:
        runs += [Run(nb, seeds[0], True) for nb in notebooks]
    assertions = sum(count_assertions(nbformat.read(nb, as_version=4)) for nb in notebooks)
    print(
        f"{len(runs)} runs of {len(notebooks)} notebooks ({assertions} assertions), {args.workers} at a time"
    )
    failures: list[Failure] = []
    with pool(args.workers) as ex:
        futures = {ex.submit(execute, run): run for run in runs}
        for future in as_completed(futures):
            run = futures[future]
            found, seconds = future.result()
            failures += found
            status = "ok" if not found else f"{len(found)} failed"
            print(
                f"  {run.notebook.stem:<18} {run.label:<55} {seconds:6.1f} s  {status}", flush=True
            )
    if failures:
        failures.sort(key=lambda f: (f.notebook, f.cell, f.run))
        print(f"\n{len(failures)} failures in {len({(f.notebook, f.run) for f in failures})} runs:")
        print(format_table(failures))
        return 1
    print(f"\nall {assertions} assertions held on {len(runs)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
