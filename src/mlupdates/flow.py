"""A traced pipeline of named steps (a DAG), the shape of prompt flow in Azure AI Studio.

Prompt flow, which Microsoft shipped in Azure Machine Learning and Azure AI Studio in 2023
and open-sourced, describes an LLM application as a directed acyclic graph: *inputs*, then
*nodes* (a retrieval, a prompt template, a model call, a Python check), each reading the
flow's inputs or other nodes' outputs, written down in a ``flow.dag.yaml`` file. Because the
graph is explicit, every run can be traced node by node (inputs, output, duration, error)
and the same flow can be run over a labelled data set and scored, which is how such tools
evaluate an application before and after a change.

:class:`Flow` is that idea in a page of Python. Steps name their inputs; the order of
execution is a topological order of the graph, computed by the standard library's
:class:`graphlib.TopologicalSorter` (which also detects cycles); :meth:`Flow.run` records a
:class:`Span` per step; :func:`evaluate` runs a flow over labelled rows and averages
metric functions over the runs.
"""

from __future__ import annotations

import graphlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Step:
    """A node: ``fn`` is called with keyword arguments named ``inputs``, each the name of a
    flow input or of an earlier step (whose output is passed)."""

    name: str
    fn: Callable[..., Any]
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class Span:
    """The trace of one step in one run: when it started (seconds after the run began),
    how long it took, a short view of its inputs and output, and its error if it failed."""

    step: str
    start: float
    seconds: float
    inputs: dict[str, str]
    output: str
    error: str | None = None


@dataclass
class FlowRun:
    """Inputs, every step's output, the trace, and whether all steps succeeded."""

    inputs: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)
    spans: list[Span] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.spans)


def short(value: Any, width: int = 60) -> str:
    """A one-line preview of a value for a trace."""
    text = " ".join(repr(value).split())
    return text if len(text) <= width else text[: width - 3] + "..."


class Flow:
    """A DAG of :class:`Step` objects over named ``inputs``.

    The constructor checks the graph: step names are unique and differ from the inputs,
    every step input exists, and there is no cycle. ``ValueError`` names the problem.
    """

    def __init__(self, inputs: Sequence[str], steps: Sequence[Step]) -> None:
        self.inputs = tuple(inputs)
        if len(set(self.inputs)) != len(self.inputs):
            raise ValueError(f"inputs={self.inputs} must be distinct names")
        self.steps = {}
        for step in steps:
            if step.name in self.steps or step.name in self.inputs:
                raise ValueError(
                    f"step name {step.name!r} is used twice (steps and inputs must differ)"
                )
            self.steps[step.name] = step
        if not self.steps:
            raise ValueError("a flow needs at least one step")
        known = set(self.inputs) | set(self.steps)
        for step in self.steps.values():
            unknown = [i for i in step.inputs if i not in known]
            if unknown:
                raise ValueError(
                    f"step {step.name!r} reads {unknown}, which is neither an input nor a step"
                )
        graph = {s.name: {i for i in s.inputs if i in self.steps} for s in self.steps.values()}
        try:
            self.order = tuple(graphlib.TopologicalSorter(graph).static_order())
        except graphlib.CycleError as error:
            raise ValueError(f"the steps form a cycle: {' -> '.join(error.args[1])}") from None

    def edges(self) -> list[tuple[str, str]]:
        """``(source, step)`` for every input a step reads (sources may be flow inputs)."""
        return [(i, s.name) for s in self.steps.values() for i in s.inputs]

    def to_yaml(self) -> str:
        """The flow in the style of prompt flow's ``flow.dag.yaml`` (for reading, not parsing)."""
        lines = ["inputs:"] + [f"  {name}: {{type: string}}" for name in self.inputs]
        lines.append("nodes:")
        for name in self.order:
            step = self.steps[name]
            lines += [f"- name: {name}", f"  source: {step.fn.__name__}", "  inputs:"]
            for i in step.inputs:
                ref = f"${{inputs.{i}}}" if i in self.inputs else f"${{{i}.output}}"
                lines.append(f"    {i}: {ref}")
        return "\n".join(lines)

    def run(self, **inputs: Any) -> FlowRun:
        """Run every step once, in topological order, recording a span per step.

        A step that raises ends the run: its span records the error, later steps do not
        run, and :attr:`FlowRun.error` says which step failed. Nothing is re-raised, so a
        batch of runs survives a bad row.
        """
        missing = [i for i in self.inputs if i not in inputs]
        extra = [i for i in inputs if i not in self.inputs]
        if missing or extra:
            raise ValueError(
                f"run() needs inputs {list(self.inputs)}; missing {missing}, unknown {extra}"
            )
        run = FlowRun(dict(inputs))
        values: dict[str, Any] = dict(inputs)
        t0 = time.perf_counter()
        for name in self.order:
            step = self.steps[name]
            kwargs = {i: values[i] for i in step.inputs}
            start = time.perf_counter()
            error: str | None = None
            try:
                output = step.fn(**kwargs)
            except Exception as exc:  # a failed step ends this run, not the batch
                error = f"{type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - start
            view = {k: short(v) for k, v in kwargs.items()}
            if error is not None:
                run.spans.append(Span(name, start - t0, seconds, view, "", error))
                run.error = f"step {name!r} failed: {error}"
                return run
            values[name] = run.outputs[name] = output
            run.spans.append(Span(name, start - t0, seconds, view, short(output)))
        return run


def evaluate(
    flow: Flow,
    rows: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Callable[[FlowRun, Mapping[str, Any]], float]],
    inputs: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
) -> tuple[dict[str, float], list[FlowRun]]:
    """Run ``flow`` on every row and average each metric over the runs.

    ``inputs(row)`` gives the flow's inputs for a row (default: the row's entries named
    like the flow's inputs); ``metrics[name](run, row)`` scores one run against its
    labelled row, e.g. 1.0 if the cited source is the labelled one. A failed run scores 0
    on every metric, and ``"failed"`` reports the share of failed runs.
    """
    if not rows:
        raise ValueError("rows is empty: nothing to evaluate")
    if not metrics:
        raise ValueError("metrics is empty: name at least one metric")
    make_inputs = inputs or (lambda row: {k: row[k] for k in flow.inputs})
    runs = [flow.run(**make_inputs(row)) for row in rows]
    scores = {
        name: sum(fn(run, row) if run.ok else 0.0 for run, row in zip(runs, rows, strict=True))
        / len(rows)
        for name, fn in metrics.items()
    }
    scores["failed"] = sum(not run.ok for run in runs) / len(runs)
    return scores, runs
