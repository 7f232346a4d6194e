"""Re-execute chapter notebooks without ever destroying good outputs, and classify their cells.

``python -m mlupdates.execution notebooks/01-transformer.ipynb [...]`` runs each notebook
top to bottom in a fresh kernel, with figures written to a scratch folder, and at the same
time (on the second core) runs it again under the alternative float kernels
(:data:`mlupdates.runtime.ALT_KERNELS`), which round the way another CPU does. Only when
both runs succeed are the committed notebook and its ``figures/<notebook>/`` folder replaced
(figures as a whole folder, so a figure the chapter no longer draws disappears). A failing
run prints the error and leaves the committed files exactly as they were.

The second run *measures* which outputs depend on float rounding, so nobody tags cells by
hand (DESIGN.md §4):

- every code cell whose compared outputs differ between the two runs gets the cell tag
  :data:`PLATFORM_TAG`, and every figure whose PNG differs is listed in the notebook's
  metadata; on a machine with another platform fingerprint the test run compares only the
  other cells exactly and lets the tagged cells' assertions decide (``conftest.py``);
- the notebook's metadata (``mlupdates``) records the fingerprint of the machine that
  executed it, and, per cell, a digest of the cell's source and of its outputs under the
  alternative kernels, so that ``make check`` can tell a stale classification (a cell edited
  since, or a tag that no longer matches the recorded difference) without executing.

``--measure`` executes without replacing anything and reports wall time and the kernel's
peak resident memory; ``benchmarks/notebooks.py`` (``make bench``) uses it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from mlupdates.runtime import ALT_KERNELS, project_root

KERNEL = "python3"
CELL_TIMEOUT_S = 600
#: Cell tag of a code cell whose outputs depend on float rounding (set by measurement).
PLATFORM_TAG = "platform-dependent"
#: Output parts the test run compares (``conftest.py``); the classification compares these.
COMPARED_MIMETYPES = ("text/plain", "text/markdown")
#: A cell whose output is a measurement (a timing): nbval never compares it, nor do we.
IGNORE_OUTPUT_MARKERS = ("# NBVAL_IGNORE_OUTPUT", "# PYTEST_VALIDATE_IGNORE_OUTPUT")
IGNORE_OUTPUT_TAGS = ("nbval-ignore-output", "nbval-skip")
METADATA_KEY = "mlupdates"
SANITIZE_FILE = "tests/nbval_sanitize.cfg"


@dataclass(frozen=True)
class Measurement:
    notebook: str
    wall_s: float
    peak_rss_mib: float


# --------------------------------------------------------------------------- running


def kernel_env(
    figure_dir: Path,
    extra: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of an executing kernel: ``base`` (default: ours) plus ``extra``,
    figures to ``figure_dir``, no figure checks."""
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if k != "MLUPDATES_FIGURE_CHECK"}
    env["MLUPDATES_FIGURE_DIR"] = str(figure_dir)
    env.update(extra or {})
    return env


def run_notebook(
    path: Path,
    figure_dir: Path,
    env: Mapping[str, str] | None = None,
    *,
    allow_errors: bool = False,
) -> nbformat.NotebookNode:
    """Execute ``path`` in a fresh kernel whose environment adds ``env``; return the result.

    Figures go to ``figure_dir``. With ``allow_errors`` every cell runs and failures stay in
    the outputs (``make seeds`` reads them); otherwise the first failing cell raises
    :class:`nbclient.exceptions.CellExecutionError`.
    """
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL,
        record_timing=False,  # no timestamps in the committed notebook
        allow_errors=allow_errors,
        resources={"metadata": {"path": str(path.parent)}},
    )
    # The kernel's own stderr (ZeroMQ transport notices) is not the notebook's: cell stderr
    # still reaches the outputs through the kernel protocol.
    client.execute(env=kernel_env(figure_dir, env), stderr=subprocess.DEVNULL)
    return nb


def _run(path: Path, figure_dir: Path) -> nbformat.NotebookNode:
    """Execute ``path`` with this process's environment (used by :func:`measure`)."""
    return run_notebook(path, figure_dir)


def native_env() -> dict[str, str]:
    """This machine as it is: the alternative-kernel switches removed from the environment."""
    return {k: v for k, v in os.environ.items() if k not in ALT_KERNELS}


def _run_to_file(path: str, figure_dir: str, env: dict[str, str], out: str) -> str:
    """Child-process entry: execute with exactly ``env`` and write the result to ``out``."""
    os.environ.clear()
    os.environ.update(env)
    try:
        nb = run_notebook(Path(path), Path(figure_dir))
    except CellExecutionError as exc:  # not picklable across processes: keep its text
        raise RuntimeError(f"{Path(path).name} ({env_label(env)}): {exc}") from None
    nbformat.write(nb, out)
    return out


def env_label(env: Mapping[str, str]) -> str:
    """``"ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE"``, or ``"native kernels"``."""
    switches = [f"{k}={env[k]}" for k in sorted(ALT_KERNELS) if k in env]
    return " ".join(switches) or "native kernels"


def pool(workers: int = 2) -> ProcessPoolExecutor:
    """Worker processes for notebook runs ("spawn": no forked torch or kernel state)."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))


def fingerprint_in(env: Mapping[str, str]) -> str:
    """The platform fingerprint a kernel started with exactly ``env`` would compute."""
    code = "from mlupdates.runtime import platform_fingerprint; print(platform_fingerprint())"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=dict(env), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fingerprint failed:\n{proc.stderr[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def platform_description(env: Mapping[str, str] | None = None) -> dict[str, object]:
    """What a reader needs to know about the machine that executed a notebook."""
    import platform

    import torch

    env = dict(env or os.environ)
    return {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kernels": {k: env[k] for k in sorted(ALT_KERNELS) if k in env},
    }


# --------------------------------------------------------------------------- comparing


def sanitize_patterns(root: Path) -> list[tuple[re.Pattern[str], str]]:
    """The regex replacements of nbval's sanitize file, applied the way nbval applies them."""
    path = root / SANITIZE_FILE
    if not path.is_file():
        return []
    patterns, regex = [], None
    for line in path.read_text().splitlines():
        if line.startswith("regex:"):
            regex = line[len("regex:") :].strip()
        elif line.startswith("replace:") and regex is not None:
            patterns.append((re.compile(regex), line[len("replace:") :].strip()))
            regex = None
    return patterns


def compared_text(cell: nbformat.NotebookNode, patterns=()) -> str:
    """What the test run compares of a code cell's outputs, as one sanitized string.

    The same parts nbval compares here (``conftest.py``): stdout (streams coalesced),
    ``text/plain`` and ``text/markdown``, and error names; never images, HTML or stderr.
    """
    parts: list[str] = []
    stdout = ""
    for out in cell.get("outputs", []):
        kind = out.get("output_type")
        if kind == "stream":
            if out.get("name") == "stdout":
                stdout += out.get("text", "")
            continue
        if stdout:
            parts.append("stdout:" + stdout)
            stdout = ""
        if kind in ("execute_result", "display_data"):
            data = out.get("data", {})
            for mime in COMPARED_MIMETYPES:
                if mime in data:
                    value = data[mime]
                    parts.append(
                        f"{mime}:" + ("".join(value) if isinstance(value, list) else value)
                    )
        elif kind == "error":
            parts.append(f"error:{out.get('ename')}")
    if stdout:
        parts.append("stdout:" + stdout)
    text = "\n".join(parts)
    for pattern, replacement in patterns:
        text = pattern.sub(replacement, text)
    return text


def digest(text: str) -> str:
    """A short content hash (12 hex digits)."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def output_is_ignored(cell: nbformat.NotebookNode) -> bool:
    """True for measurement cells whose outputs the test run never compares."""
    first = cell.source.lstrip().splitlines()[:1]
    tags = cell.get("metadata", {}).get("tags", [])
    return bool(first and first[0].strip() in IGNORE_OUTPUT_MARKERS) or any(
        t in tags for t in IGNORE_OUTPUT_TAGS
    )


def figure_digests(folder: Path) -> dict[str, str]:
    """``{label: digest of the PNG bytes}`` for every figure in ``folder``."""
    if not folder.is_dir():
        return {}
    return {
        p.stem: hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        for p in sorted(folder.glob("*.png"))
    }


@dataclass(frozen=True)
class Classification:
    """Which outputs of one notebook changed under the alternative kernels."""

    tagged: list[str]  # cell ids
    figures: list[str]  # figure labels
    compared: int  # code cells whose outputs the test run compares


def classify(
    nb: nbformat.NotebookNode,
    alt: nbformat.NotebookNode,
    figures: Path,
    alt_figures: Path,
    *,
    fingerprint: str,
    alt_fingerprint: str,
    root: Path,
    platform: Mapping[str, object] | None = None,
) -> Classification:
    """Tag ``nb``'s platform-dependent cells (in place) from its run ``alt``; record why.

    ``nb`` and ``alt`` are the same notebook executed natively and under the alternative
    kernels; ``figures`` and ``alt_figures`` hold the PNGs each drew.
    """
    patterns = sanitize_patterns(root)
    if len(nb.cells) != len(alt.cells):
        raise ValueError("the two runs have different cells")
    fig_native, fig_alt = figure_digests(figures), figure_digests(alt_figures)
    moved_figures = sorted(k for k in fig_native if fig_alt.get(k) != fig_native[k])
    cells: dict[str, dict[str, str]] = {}
    tagged: list[str] = []
    compared = 0
    for cell, other in zip(nb.cells, alt.cells, strict=True):
        if cell.cell_type != "code":
            continue
        tags = [t for t in cell.metadata.get("tags", []) if t != PLATFORM_TAG]
        if output_is_ignored(cell):
            _set_tags(cell, tags)
            continue
        compared += 1
        alt_text = compared_text(other, patterns)
        if compared_text(cell, patterns) != alt_text or cell_label(cell) in moved_figures:
            tags.append(PLATFORM_TAG)
            tagged.append(cell.id)
        _set_tags(cell, tags)
        cells[cell.id] = {"source": digest(cell.source), "alt_outputs": digest(alt_text)}
    nb.metadata[METADATA_KEY] = {
        "fingerprint": fingerprint,
        "alt_fingerprint": alt_fingerprint,
        "alt_kernels": dict(ALT_KERNELS),
        "platform": dict(platform or {}),
        "platform_dependent_figures": moved_figures,
        "alt_figures": {k: fig_alt[k] for k in sorted(fig_alt)},
        "cells": cells,
    }
    return Classification(tagged, moved_figures, compared)


def cell_label(cell: nbformat.NotebookNode) -> str | None:
    """The Quarto label (``#| label: fig-...``) of a cell, which is also its figure's name."""
    match = re.search(r"^#\|\s*label:\s*(\S+)", cell.source, flags=re.MULTILINE)
    return match.group(1) if match else None


def _set_tags(cell: nbformat.NotebookNode, tags: list[str]) -> None:
    if tags:
        cell.metadata["tags"] = tags
    else:
        cell.metadata.pop("tags", None)


# --------------------------------------------------------------------------- executing in place


def coalesce_streams(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Join each run of consecutive stream outputs of one name into one output, in place.

    The kernel sends printed text in chunks whose boundaries depend on timing (a loaded
    machine flushes mid-line), so the stored notebook would change from run to run with
    nothing printed differently. nbval joins them the same way before it compares.
    """
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        joined: list = []
        for out in cell.get("outputs", []):
            last = joined[-1] if joined else None
            if (
                out.get("output_type") == "stream"
                and last is not None
                and last.get("output_type") == "stream"
                and last.get("name") == out.get("name")
            ):
                last["text"] += out.get("text", "")
            else:
                joined.append(out)
        cell.outputs = joined
    return nb


def execute_in_place(path: Path, *, workers: int = 2) -> Classification:
    """Execute one notebook natively and under the alternative kernels; replace it and its
    figures, cells classified, only if both runs succeeded."""
    path = path.resolve()
    if path.suffix != ".ipynb" or not path.is_file():
        raise FileNotFoundError(f"{path}: not a notebook")
    root = project_root(path.parent)
    target = root / "figures" / path.stem
    with tempfile.TemporaryDirectory(prefix=f"mlupdates-{path.stem}-") as scratch:
        scratch = Path(scratch)
        runs = {"native": native_env(), "alt": {**native_env(), **ALT_KERNELS}}
        with pool(workers) as ex:
            futures = {
                name: ex.submit(
                    _run_to_file,
                    str(path),
                    str(scratch / name),
                    kernel_env(scratch / name, base=env),
                    str(scratch / f"{name}.ipynb"),
                )
                for name, env in runs.items()
            }
            prints = {name: ex.submit(fingerprint_in, env) for name, env in runs.items()}
            for future in futures.values():
                future.result()  # raises on a failing cell: nothing replaced
            fingerprints = {name: f.result() for name, f in prints.items()}
        nb = coalesce_streams(nbformat.read(scratch / "native.ipynb", as_version=4))
        alt = coalesce_streams(nbformat.read(scratch / "alt.ipynb", as_version=4))
        result = classify(
            nb,
            alt,
            scratch / "native" / path.stem,
            scratch / "alt" / path.stem,
            fingerprint=fingerprints["native"],
            alt_fingerprint=fingerprints["alt"],
            root=root,
            platform=platform_description(runs["native"]),
        )
        staged = path.with_name(f".{path.name}.new")
        nbformat.write(nb, staged)
        new_figures = scratch / "native" / path.stem
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
    return result


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
            result = execute_in_place(path)
        except (CellExecutionError, RuntimeError, FileNotFoundError) as exc:
            failed += 1
            print(f"FAILED {path}: committed notebook and figures left unchanged\n{exc}")
            continue
        print(
            f"executed {path} in {time.perf_counter() - start:.1f} s: "
            f"{len(result.tagged)} of {result.compared} compared cells and "
            f"{len(result.figures)} figures depend on float rounding ({PLATFORM_TAG})"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
