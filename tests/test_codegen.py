"""Tests of mlupdates.codegen: the generated problems, the sandboxed runner, pass@k."""

from __future__ import annotations

import itertools
import math

import pytest

from mlupdates import codegen as C


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_the_binomial_definition(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            exact = 1 - math.comb(n - c, k) / math.comb(n, k)
            assert C.pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_is_the_chance_a_random_subset_holds_a_pass():
    samples = [True, False, False, True, False, False]  # n = 6, c = 2
    for k in range(1, 7):
        subsets = list(itertools.combinations(samples, k))
        share = sum(any(s) for s in subsets) / len(subsets)
        assert C.pass_at_k(6, 2, k) == pytest.approx(share)


def test_pass_at_k_is_not_the_naive_estimate():
    # with n = 10 samples and c = 3 correct, the plug-in 1 - (1 - c/n)^k underestimates
    assert C.pass_at_k(10, 3, 5) > 1 - (1 - 0.3) ** 5
    assert C.pass_at_k(10, 0, 10) == 0.0 and C.pass_at_k(10, 1, 10) == 1.0
    assert C.mean_pass_at_k([0, 10], 10, 1) == 0.5


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((0, 0, 1), ValueError, "n=0"),
        ((5, 6, 1), ValueError, "c=6"),
        ((5, 2, 6), ValueError, "k=6"),
        ((5, 2, 0), ValueError, "k=0"),
        ((5.0, 2, 1), TypeError, "n=5.0"),
    ],
)
def test_pass_at_k_refuses_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        C.pass_at_k(*args)
    with pytest.raises(ValueError, match="empty"):
        C.mean_pass_at_k([], 5, 1)


def test_problem_split_holds_out_whole_operation_number_pairs():
    train, test = C.make_problems(heldout_per_family=2, seed=0)
    assert len(train) + len(test) == 9 * 8 * 4 * 2 and len(test) == 9 * 2 * 4 * 2
    seen = {(p.family, p.number) for p in train}
    assert not seen & {(p.family, p.number) for p in test}
    assert {p.family for p in test} == {f.name for f in C.FAMILIES}
    # every held-out number word still appears in the training corpus, in other families
    corpus = "".join(p.text for p in train)
    assert all(C.NUMBER_WORDS[p.number] in corpus for p in test)
    assert C.make_problems(seed=0) == (train, test) and C.make_problems(seed=1) != (train, test)
    with pytest.raises(ValueError, match="heldout_per_family"):
        C.make_problems(heldout_per_family=8)


def test_reference_solutions_pass_and_wrong_ones_fail():
    train, test = C.make_problems()
    problems = train + test
    assert C.run_tests([p.text for p in problems], [p.tests for p in problems]) == ["passed"] * len(
        problems
    )
    # an off-by-one number is the closest wrong answer: the tests must catch every one
    wrong = [p.prompt + p.solution.replace(str(p.number), str(p.number + 1)) for p in problems]
    assert set(C.run_tests(wrong, [p.tests for p in problems])) == {"failed"}


def test_runner_reports_each_way_a_program_can_go_wrong():
    ok = "def f(x):\n    return x + 1\n"
    test = "assert f(1) == 2\n"
    programs = [
        ok,
        "def f(x):\n    return x\n",
        "def f(x)\n    return x\n",
        "def f(x):\n    return y\n",
        "def f(x):\n    while True:\n        pass\n",
        "import os\nos._exit(3)\n",
        ok,
        "with open('leak.txt', 'w') as f:\n    f.write('x' * 10)\n" + ok,
        "big = bytearray(2 ** 34)\n" + ok,
    ]
    statuses = C.run_tests(programs, [test] * len(programs), timeout=0.5)
    assert statuses == [
        "passed",
        "failed",
        "error: SyntaxError",
        "error: NameError",
        "timed out",
        "crashed",
        "passed",  # the child was restarted after the crash
        "error: OSError",  # no file may be written
        "error: MemoryError",
    ]


def test_runner_refuses_bad_arguments():
    with pytest.raises(ValueError, match="2 programs but 1"):
        C.run_tests(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="timeout"):
        C.run_tests(["a"], ["b"], timeout=0)
    with pytest.raises(ValueError, match="memory_mb"):
        C.run_tests(["a"], ["b"], memory_mb=8)


def test_completion_body_stops_at_the_end_of_the_function():
    text = "\n    return x + 1\n\ndef other():\n    pass"
    assert C.completion_body(text) == "\n    return x + 1\n"
    assert C.completion_body("\n    y = x\n    return y\nprint(1)") == "\n    y = x\n    return y\n"


def test_sample_completions_returns_n_bodies_per_prompt_repeatably():
    import torch

    from mlupdates.gpt import GPT, GPTConfig
    from mlupdates.tokenizer import BPETokenizer

    train, test = C.make_problems()
    tok = BPETokenizer.train([p.text for p in train[:50]], 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, context=64))
    prompts = [p.prompt for p in test[:3]] + [test[0].prompt]
    a = C.sample_completions(
        model, tok, prompts, n=4, temperature=1.0, generator=torch.Generator().manual_seed(1)
    )
    b = C.sample_completions(
        model, tok, prompts, n=4, temperature=1.0, generator=torch.Generator().manual_seed(1)
    )
    assert a == b and [len(x) for x in a] == [4, 4, 4, 4]
    assert all(c.startswith("\n") for x in a for c in x)
    greedy = C.sample_completions(model, tok, prompts, n=3)
    assert all(len(set(x)) == 1 for x in greedy) and greedy[0] == greedy[3]
    with pytest.raises(ValueError, match="n=0"):
        C.sample_completions(model, tok, prompts, n=0)


def test_the_held_out_split_follows_the_chapter_seed(monkeypatch):
    from mlupdates import runtime

    monkeypatch.setattr(runtime, "_current", None)

    def heldout(env_seed, **kwargs):
        monkeypatch.setenv("MLUPDATES_SEED", str(env_seed))
        return sorted({(p.family, p.number) for p in C.make_problems(**kwargs)[1]})

    assert heldout(0) == heldout(3, seed=0)  # seed 0 keeps the old split; explicit is literal
    assert heldout(3) == heldout(0, seed=runtime.derive_seed(3, 0))
    assert heldout(3) != heldout(0)
