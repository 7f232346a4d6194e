"""Tests of mlupdates.flow: DAG checks, traced runs, failures, batch evaluation."""

from __future__ import annotations

import pytest

from mlupdates.flow import Flow, Step, evaluate, short


def add(a, b):
    return a + b


def double(total):
    return 2 * total


def shout(text, double):
    return f"{text.upper()} {double}"


def make_flow():
    # deliberately listed out of order: the flow sorts them
    return Flow(
        ["a", "b", "text"],
        [
            Step("shout", shout, ("text", "double")),
            Step("double", double, ("total",)),
            Step("total", add, ("a", "b")),
        ],
    )


def test_steps_run_after_what_they_read():
    flow = make_flow()
    position = {name: i for i, name in enumerate(flow.order)}
    for source, step in flow.edges():
        if source in flow.steps:
            assert position[source] < position[step]
    assert flow.order == ("total", "double", "shout")


def test_run_records_outputs_and_a_span_per_step():
    run = make_flow().run(a=2, b=3, text="hi")
    assert run.ok and run.outputs == {"total": 5, "double": 10, "shout": "HI 10"}
    assert [s.step for s in run.spans] == ["total", "double", "shout"]
    assert run.spans[2].inputs == {"text": "'hi'", "double": "10"}
    assert all(s.seconds >= 0 and s.error is None for s in run.spans)
    starts = [s.start for s in run.spans]
    assert starts == sorted(starts) and run.seconds == pytest.approx(
        sum(s.seconds for s in run.spans)
    )


def test_a_failing_step_ends_the_run_without_raising():
    run = make_flow().run(a=2, b="x", text="hi")
    assert not run.ok and "step 'total' failed: TypeError" in run.error
    assert [s.step for s in run.spans] == ["total"] and run.spans[0].error.startswith("TypeError")
    assert "double" not in run.outputs


@pytest.mark.parametrize(
    ("inputs", "steps", "message"),
    [
        (["a"], [Step("x", double, ("y",)), Step("y", double, ("x",))], "cycle"),
        (["a"], [Step("x", double, ("nowhere",))], "neither an input nor a step"),
        (["a"], [Step("a", double, ("a",))], "used twice"),
        (["a"], [Step("x", double, ("a",)), Step("x", double, ("a",))], "used twice"),
        (["a", "a"], [Step("x", double, ("a",))], "distinct"),
        (["a"], [], "at least one step"),
    ],
)
def test_bad_graphs_are_refused(inputs, steps, message):
    with pytest.raises(ValueError, match=message):
        Flow(inputs, steps)


def test_run_checks_its_inputs():
    with pytest.raises(ValueError, match=r"missing \['text'\], unknown \['c'\]"):
        make_flow().run(a=1, b=2, c=3)


def test_evaluate_averages_metrics_and_counts_failures():
    rows = [
        {"a": 1, "b": 1, "text": "x", "want": 4},
        {"a": 1, "b": 2, "text": "y", "want": 0},
        {"a": "bad", "b": 2, "text": "z", "want": 0},
    ]
    scores, runs = evaluate(
        make_flow(), rows, {"right": lambda run, row: float(run.outputs["double"] == row["want"])}
    )
    assert scores == {"right": pytest.approx(1 / 3), "failed": pytest.approx(1 / 3)}
    assert [r.ok for r in runs] == [True, True, False]
    with pytest.raises(ValueError, match="rows is empty"):
        evaluate(make_flow(), [], {"m": lambda run, row: 1.0})
    with pytest.raises(ValueError, match="metrics is empty"):
        evaluate(make_flow(), rows, {})


def test_yaml_view_and_previews():
    text = make_flow().to_yaml()
    assert "- name: total\n  source: add\n  inputs:\n    a: ${inputs.a}" in text
    assert "double: ${double.output}" in text
    assert short("x" * 100, width=10) == "'xxxxxx..." and short([1, 2]) == "[1, 2]"
