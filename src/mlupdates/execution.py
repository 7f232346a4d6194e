"""Re-execute chapter notebooks without ever destroying good outputs.

``python -m mlupdates.execution notebooks/01-transformer.ipynb [...]`` runs each notebook
top to bottom in a fresh kernel, with figures written to a scratch folder. Only when every
cell succeeds are the committed notebook and its ``figures/<notebook>/`` folder replaced
(figures as a whole folder, so a figure the chapter no longer draws disappears). A failing
run prints the error and leaves the committed files exactly as they were.

``--measure`` executes without replacing anything and reports wall time and the kernel's
peak resident memory; ``benchmarks/notebooks.py`` (``make bench``) uses it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from mlupdates.runtime import project_root

KERNEL = "python3"
CELL_TIMEOUT_S = 600


@dataclass(frozen=True)
class Measurement:
    notebook: str
    wall_s: float
    peak_rss_mib: float


def _run(path: Path, figure_dir: Path) -> nbformat.NotebookNode:
    """Execute ``path`` in a fresh kernel with figures going to ``figure_dir``."""
    nb = nbformat.read(path, as_version=4)
    saved = {k: os.environ.get(k) for k in ("MLUPDATES_FIGURE_DIR", "MLUPDATES_FIGURE_CHECK")}
    os.environ["MLUPDATES_FIGURE_DIR"] = str(figure_dir)
    os.environ.pop("MLUPDATES_FIGURE_CHECK", None)
    try:
        client = NotebookClient(
            nb,
            timeout=CELL_TIMEOUT_S,
            kernel_name=KERNEL,
            record_timing=False,  # no timestamps in the committed notebook
            resources={"metadata": {"path": str(path.parent)}},
        )
        client.execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return nb


def execute_in_place(path: Path) -> None:
    """Execute one notebook; replace it and its figures only if every cell succeeded."""
    path = path.resolve()
    if path.suffix != ".ipynb" or not path.is_file():
        raise FileNotFoundError(f"{path}: not a notebook")
    root = project_root(path.parent)
    target = root / "figures" / path.stem
    with tempfile.TemporaryDirectory(prefix=f"mlupdates-{path.stem}-") as scratch:
        figures = Path(scratch) / "figures"
        nb = _run(path, figures)  # raises on a failing cell: nothing replaced
        staged = path.with_name(f".{path.name}.new")
        nbformat.write(nb, staged)
        new_figures = figures / path.stem
        backup = target.with_name(f".{path.stem}.old")
        if backup.exists():
            shutil.rmtree(backup)
        if target.exists():
            target.rename(backup)
        if new_figures.exists():
            shutil.copytree(new_figures, target)
        os.replace(staged, path)
        if backup.exists():
            shutil.rmtree(backup)


def measure(path: Path) -> Measurement:
    """Execute ``path`` in a child process and report its wall time and peak memory.

    A child process per notebook makes ``RUSAGE_CHILDREN`` count only this notebook's
    kernel (and whatever the kernel itself waited for).
    """
    code = (
        "import json, resource, sys, tempfile, time; from pathlib import Path;"
        "from mlupdates.execution import _run;"
        "t = time.perf_counter();"
        "d = tempfile.mkdtemp();"
        "_run(Path(sys.argv[1]), Path(d));"
        "w = time.perf_counter() - t;"
        "kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;"
        "print(json.dumps({'wall_s': w, 'kb': kb}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{path}: execution failed\n{proc.stderr[-3000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Measurement(path.stem, data["wall_s"], data["kb"] / 1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--measure", action="store_true", help="time only; replace nothing")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.notebooks:
        start = time.perf_counter()
        try:
            if args.measure:
                m = measure(path)
                print(f"{m.notebook:<24} {m.wall_s:7.1f} s  {m.peak_rss_mib:8.0f} MiB peak")
                continue
            execute_in_place(path)
        except (CellExecutionError, RuntimeError, FileNotFoundError) as exc:
            failed += 1
            print(f"FAILED {path}: committed notebook and figures left unchanged\n{exc}")
            continue
        print(f"executed {path} in {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
