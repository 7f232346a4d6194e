"""Code generation scored by running the code: a generated corpus of small Python functions,
a sandboxed test runner, and pass@k.

Code can be checked by executing it, which is why code models are scored by *functional
correctness* rather than by text overlap: Chen et al. (2021, arXiv:2107.03374), who
introduced Codex and the HumanEval benchmark, sample ``n`` completions per problem, run
each against the problem's unit tests and report pass@k, the probability that at least one
of ``k`` samples passes. This module supplies the three pieces a tiny version of that
experiment needs:

* :func:`make_problems` writes a corpus of small functions, each a signature, a one-line
  docstring that states the task in words ("Return x plus seven."), a one-line body and
  unit tests whose expected values come from running the reference body. The task is
  compositional: nine operations times eight numbers written as words, so a model trained
  on some (operation, number) pairs can be tested on pairs it never saw.
* :func:`run_tests` executes untrusted completions in a separate Python process with a
  time limit per program and resource limits on the process, and reports pass, fail,
  error, time-out or crash for each one. It guards against accidents (an endless loop, a
  huge allocation, a call to ``os._exit``), not against an attacker: Chen et al. ran
  their samples inside gVisor containers, and any service that runs model-written code
  for others needs that kind of isolation.
* :func:`pass_at_k` is the unbiased estimator of Chen et al.: with ``n`` samples of which
  ``c`` pass, ``1 - C(n - c, k) / C(n, k)``, computed as a stable product.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mlupdates.evaluate import generate_continuations
from mlupdates.runtime import resolve_seed
from mlupdates.tokenizer import BPETokenizer

#: Numbers 2-9 as the docstrings write them.
NUMBER_WORDS = {
    2: "two",
    3: "three",
    4: "four",
    5: "five",
    6: "six",
    7: "seven",
    8: "eight",
    9: "nine",
}

#: Argument names by kind of input; every family is written with each of them.
ARGUMENT_NAMES = {
    "int": ("x", "n", "value", "a"),
    "list": ("xs", "items", "values", "nums"),
    "str": ("s", "text", "word", "name"),
}

#: Inputs the unit tests call each function with, by kind. They are chosen so that the tests
#: tell every number 2-9 from its neighbours (72 is a multiple of 8 but not of 9, 56 of 8
#: but not of 7...); weak tests would let wrong completions pass and inflate pass@k.
TEST_INPUTS = {
    "int": (0, 7, 23, -5, 100, 72, 35, 45, 56, 63),
    "list": ([1, 5, 9, 3], [3, 8, 2, 9, 5, 6, 4, 7, 10, 1], [], [7, 7, 1]),
    "str": ("hello", "ab", "abcdefghijkl", "x"),
}


@dataclass(frozen=True)
class Family:
    """One operation: a function name, input kind, two docstring wordings and a body."""

    name: str
    kind: str  # "int", "list" or "str"
    docstrings: tuple[str, str]  # with {arg} and {word}
    body: str  # with {arg} and {n}


FAMILIES = (
    Family(
        "increase",
        "int",
        ("Return {arg} plus {word}.", "Add {word} to {arg} and return the result."),
        "return {arg} + {n}",
    ),
    Family(
        "decrease",
        "int",
        ("Return {arg} minus {word}.", "Subtract {word} from {arg} and return the result."),
        "return {arg} - {n}",
    ),
    Family(
        "scale",
        "int",
        ("Return {arg} times {word}.", "Multiply {arg} by {word} and return the result."),
        "return {arg} * {n}",
    ),
    Family(
        "remainder",
        "int",
        ("Return the remainder of {arg} divided by {word}.", "Return {arg} modulo {word}."),
        "return {arg} % {n}",
    ),
    Family(
        "is_multiple",
        "int",
        (
            "Return True if {arg} is a multiple of {word}.",
            "Check whether {arg} is divisible by {word}.",
        ),
        "return {arg} % {n} == 0",
    ),
    Family(
        "count_above",
        "list",
        (
            "Count the items of {arg} greater than {word}.",
            "Return how many values in {arg} exceed {word}.",
        ),
        "return sum(1 for v in {arg} if v > {n})",
    ),
    Family(
        "keep_below",
        "list",
        (
            "Return the items of {arg} smaller than {word}.",
            "Keep only the values in {arg} below {word}.",
        ),
        "return [v for v in {arg} if v < {n}]",
    ),
    Family(
        "prefix",
        "str",
        (
            "Return the first {word} characters of {arg}.",
            "Return {arg} cut to its first {word} characters.",
        ),
        "return {arg}[:{n}]",
    ),
    Family(
        "repeat",
        "str",
        ("Return {arg} repeated {word} times.", "Concatenate {word} copies of {arg}."),
        "return {arg} * {n}",
    ),
)


@dataclass(frozen=True)
class Problem:
    """A function to complete: ``prompt`` (signature and docstring) + ``solution`` (body).

    The prompt stops right after the closing quotes of the docstring, without the newline:
    a byte-level BPE merges the newline with the indentation that follows it, so a prompt
    ending in a bare newline would end on a token the model never saw in that place (the
    "prompt boundary" problem). ``tests`` is Python source of ``assert`` statements that
    call the function by name.
    """

    family: str
    number: int
    arg: str
    wording: int
    prompt: str
    solution: str
    tests: str

    @property
    def text(self) -> str:
        """The whole reference function, as it appears in the training corpus."""
        return self.prompt + self.solution


def _problem(family: Family, number: int, arg: str, wording: int) -> Problem:
    doc = family.docstrings[wording].format(arg=arg, word=NUMBER_WORDS[number])
    prompt = f'def {family.name}({arg}):\n    """{doc}"""'
    solution = "\n    " + family.body.format(arg=arg, n=number) + "\n"
    namespace: dict = {}
    exec(prompt + solution, namespace)  # trusted: the reference body written above
    fn = namespace[family.name]
    tests = "".join(
        f"assert {family.name}({value!r}) == {fn(value)!r}\n" for value in TEST_INPUTS[family.kind]
    )
    return Problem(family.name, number, arg, wording, prompt, solution, tests)


def make_problems(
    heldout_per_family: int = 2, seed: int | None = None
) -> tuple[list[Problem], list[Problem]]:
    """All (family, number, argument name, wording) problems, split into train and test.

    For every family, ``heldout_per_family`` of the eight numbers are drawn at random and
    every problem with one of them goes to the test split; the training corpus therefore
    never shows, say, "plus seven", although it shows "seven" in other families and "plus"
    with other numbers. 9 families x 8 numbers x 4 names x 2 wordings = 576 problems.
    ``seed`` draws the held-out numbers (default: stream 0 of the running chapter's seed).
    """
    if not 1 <= heldout_per_family < len(NUMBER_WORDS):
        raise ValueError(
            f"heldout_per_family={heldout_per_family} must be in [1, {len(NUMBER_WORDS) - 1}]"
        )
    rng = random.Random(resolve_seed(seed, 0))
    train, test = [], []
    for family in FAMILIES:
        heldout = set(rng.sample(sorted(NUMBER_WORDS), heldout_per_family))
        for number in NUMBER_WORDS:
            for arg in ARGUMENT_NAMES[family.kind]:
                for wording in (0, 1):
                    problem = _problem(family, number, arg, wording)
                    (test if number in heldout else train).append(problem)
    return train, test


def completion_body(text: str) -> str:
    """The function body in a model's continuation of a prompt: from the newline that ends
    the docstring up to the first blank line or new top-level statement (the usual stop
    sequences for code models). Returned with its leading newline, ready to append."""
    lines = []
    for line in text.removeprefix("\n").split("\n"):
        if line.strip() == "" and lines:
            break
        if line and not line.startswith((" ", "\t")):
            break
        lines.append(line)
    return "\n" + "\n".join(lines).rstrip() + "\n"


@torch.no_grad()
def sample_completions(
    model: torch.nn.Module,
    tok: BPETokenizer,
    prompts: Sequence[str],
    n: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 16,
    generator: torch.Generator | None = None,
) -> list[list[str]]:
    """``n`` completions (function bodies, see :func:`completion_body`) per prompt.

    The book's GPT has no padding mask, so prompts are grouped by token length and each
    group is generated as one batch, every prompt repeated ``n`` times. Generation stops
    at ``<|endoftext|>``, which separates functions in the training stream.
    ``temperature=0`` is greedy decoding; otherwise ``generator`` makes samples repeatable.
    """
    if n < 1:
        raise ValueError(f"n={n} must be at least 1 sample per prompt")
    eot = tok.special_tokens["<|endoftext|>"]
    continuations = generate_continuations(
        model,
        tok,
        prompts,
        num_samples=n,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        generator=generator,
    )
    return [
        [completion_body(tok.decode(row[: row.index(eot)] if eot in row else row)) for row in rows]
        for rows in continuations
    ]


# --- execution -------------------------------------------------------------------------

_HARNESS = r"""
import json, resource, signal, sys

# Limits first, before any untrusted code: address space, CPU seconds, no file writes.
memory, cpu = int(sys.argv[1]), int(sys.argv[2])
for limit, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, 0)):
    try:
        resource.setrlimit(limit, (value, value))
    except (ValueError, OSError):
        pass  # some systems refuse a limit; the time limit per program still holds

def _alarm(signum, frame):
    raise TimeoutError("time limit")

signal.signal(signal.SIGALRM, _alarm)
for line in sys.stdin:
    job = json.loads(line)
    namespace = {"__name__": "candidate"}
    status = "passed"
    try:
        signal.setitimer(signal.ITIMER_REAL, job["timeout"])
        exec(compile(job["program"], "<candidate>", "exec"), namespace)
        exec(compile(job["tests"], "<tests>", "exec"), namespace)
    except AssertionError:
        status = "failed"
    except TimeoutError:
        status = "timed out"
    except BaseException as error:
        status = "error: " + type(error).__name__
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    sys.stdout.write(json.dumps(status) + "\n")
    sys.stdout.flush()
"""


def run_tests(
    programs: Sequence[str],
    tests: Sequence[str],
    timeout: float = 1.0,
    memory_mb: int = 512,
) -> list[str]:
    """Execute ``programs[i]`` followed by ``tests[i]`` in a child Python process.

    Returns one status per program: ``"passed"``, ``"failed"`` (an assertion failed),
    ``"timed out"`` (over ``timeout`` seconds), ``"error: <Exception>"`` or ``"crashed"``
    (the child died, e.g. the program called ``os._exit``; the child is restarted for the
    programs after it). All programs share one child, started in isolated mode (``-I``:
    no user site-packages, no environment variables, no current directory on the path)
    in an empty temporary directory, with an address-space limit of ``memory_mb`` MiB and
    no permission to write files. Each program gets a fresh namespace.
    """
    if len(programs) != len(tests):
        raise ValueError(f"{len(programs)} programs but {len(tests)} test blocks; pass one each")
    if not timeout > 0:
        raise ValueError(f"timeout={timeout} must be positive (seconds per program)")
    if memory_mb < 64:
        raise ValueError(f"memory_mb={memory_mb} must be at least 64")
    jobs = [
        json.dumps({"program": p, "tests": t, "timeout": timeout})
        for p, t in zip(programs, tests, strict=True)
    ]
    statuses: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mlupdates-run-") as workdir:
        while len(statuses) < len(jobs):
            pending = jobs[len(statuses) :]
            budget = timeout * len(pending) + 10.0
            try:
                # The child sets its own limits (see _HARNESS): no preexec_fn, so the
                # parent is never forked with its threads (LanceDB's, PyTorch's) running.
                limits = [str(memory_mb * 2**20), str(math.ceil(budget) + 1)]
                done = subprocess.run(
                    [sys.executable, "-I", "-S", "-c", _HARNESS, *limits],
                    input="\n".join(pending) + "\n",
                    capture_output=True,
                    text=True,
                    cwd=workdir,
                    env={},
                    timeout=budget,
                )
                out = done.stdout
            except subprocess.TimeoutExpired as expired:
                raw = expired.stdout or b""
                out = raw.decode() if isinstance(raw, bytes) else raw
            results = [json.loads(line) for line in out.splitlines() if line.strip()]
            statuses += results
            if len(statuses) < len(jobs):
                statuses.append("crashed")  # the child died on the program after the last result
    return statuses


# --- pass@k -----------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from ``n`` samples of which ``c`` passed.

    Chen et al. (2021, arXiv:2107.03374), eq. 1: the probability that a random subset of
    ``k`` of the ``n`` samples holds at least one correct one, ``1 - C(n-c, k) / C(n, k)``.
    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``, which never forms the huge
    binomial coefficients. Estimating pass@k as ``1 - (1 - c/n)^k`` instead would be
    biased low.
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name}={value!r} must be an int")
    if n < 1:
        raise ValueError(f"n={n} must be at least 1 sample")
    if not 0 <= c <= n:
        raise ValueError(f"c={c} correct samples must be in [0, n={n}]")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, n={n}]")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def mean_pass_at_k(correct_counts: Sequence[int], n: int, k: int) -> float:
    """pass@k averaged over problems, each with ``n`` samples and ``correct_counts[i]`` passes."""
    if not correct_counts:
        raise ValueError("correct_counts is empty: need at least one problem")
    return sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts)
