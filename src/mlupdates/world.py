"""A small synthetic world of fictional people: the book's own language-model corpus.

A language model's knowledge can only be *measured* if we know exactly which facts it
was shown. Real text cannot tell us that; a generated world can. :func:`make_world` invents
people (names built from syllable tables, so no real person is described) with five
attributes each, and writes every fact in several paraphrases. Some people are *seen*: their
biographies make up the pre-training text. The others are *held out*: never written
anywhere, so any confident answer about them is a hallucination.

Questions come in three splits, following the knowledge-extraction set-up of Allen-Zhu and
Li, "Physics of Language Models: Part 3.1" (arXiv:2309.14316):

``"train"``
    questions about half of the seen people, for supervised fine-tuning;
``"test"``
    questions about the other seen people: their facts were in pre-training, the questions
    were never fine-tuned on, so a right answer shows the skill *generalises*;
``"heldout"``
    questions about people the model never saw: the right answer is unknowable, and the
    accuracy expected from guessing is ``1 / len(world.values(attribute))``.

Everything is a pure function of ``seed`` and the sizes: no downloads, no global RNG. A
``seed`` left as ``None`` is a stream of the running chapter's seed
(:func:`mlupdates.runtime.resolve_seed`), so a chapter re-run under another seed gets
another world.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from mlupdates.runtime import resolve_seed

ATTRIBUTES = ("city", "job", "born", "colour", "pet")

SYLLABLES = (
    "ba", "del", "fi", "gor", "ka", "lin", "ma", "nor", "pe", "quin", "ra", "sel",
    "ta", "vo", "wen", "zar", "bri", "cor", "dan", "el", "fen", "hal", "is", "jor",
)  # fmt: skip
CITY_SUFFIXES = ("holm", "ford", "via", "mar", "dale", "port", "stad", "wick")
JOBS = (
    "baker", "carpenter", "teacher", "nurse", "engineer", "painter", "fisher", "librarian",
    "pilot", "farmer", "potter", "doctor", "tailor", "architect", "musician", "gardener",
)  # fmt: skip
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "grey", "pink")
PETS = ("cat", "dog", "parrot", "rabbit", "tortoise", "goldfish", "hamster", "owl", "lizard")
BIRTH_YEARS = (1940, 2005)  # inclusive range

#: Paraphrases of each fact; ``{a_value}`` is the value with "a" or "an" in front.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "city": (
        "{name} lives in {value}.",
        "{name}'s home is in {value}.",
        "{name} has settled in the city of {value}.",
        "The city of {value} is where {name} lives.",
    ),
    "job": (
        "{name} works as {a_value}.",
        "{name} earns a living as {a_value}.",
        "By profession, {name} is {a_value}.",
        "{name}'s job: {value}.",
    ),
    "born": (
        "{name} was born in {value}.",
        "{name}'s year of birth is {value}.",
        "In {value}, {name} was born.",
        "{name} came into the world in {value}.",
    ),
    "colour": (
        "{name}'s favourite colour is {value}.",
        "{name} likes the colour {value} best.",
        "Of all colours, {name} prefers {value}.",
        "The favourite colour of {name} is {value}.",
    ),
    "pet": (
        "{name} has a pet {value}.",
        "{name} keeps {a_value} as a pet.",
        "At home, {name} looks after {a_value}.",
        "The pet of {name} is {a_value}.",
    ),
}
QUESTIONS = {
    "city": "Where does {name} live?",
    "job": "What does {name} do for a living?",
    "born": "In which year was {name} born?",
    "colour": "What is {name}'s favourite colour?",
    "pet": "What pet does {name} have?",
}


@dataclass(frozen=True)
class Fact:
    """One (person, attribute, value) triple, e.g. ``("Kalin Delvora", "pet", "owl")``."""

    person: str
    attribute: str
    value: str

    def sentence(self, template: int = 0) -> str:
        """The fact written with paraphrase number ``template`` of :data:`TEMPLATES`."""
        templates = TEMPLATES[self.attribute]
        if not 0 <= template < len(templates):
            raise ValueError(f"template={template} must be in [0, {len(templates) - 1}]")
        article = "an" if self.value[0] in "aeiou" else "a"
        return templates[template].format(
            name=self.person, value=self.value, a_value=f"{article} {self.value}"
        )


@dataclass(frozen=True)
class Person:
    """A fictional person; ``seen`` says whether their facts are in the pre-training text."""

    name: str
    city: str
    job: str
    born: int
    colour: str
    pet: str
    seen: bool

    def facts(self) -> list[Fact]:
        return [Fact(self.name, a, str(getattr(self, a))) for a in ATTRIBUTES]


@dataclass(frozen=True)
class QA:
    """A question about one attribute of one person, with its short answer."""

    question: str
    answer: str
    person: str
    attribute: str
    split: str  # "train", "test" or "heldout" (see the module docstring)


@dataclass(frozen=True)
class World:
    """The people of one generated world; build it with :func:`make_world`."""

    seed: int
    people: tuple[Person, ...]
    cities: tuple[str, ...]

    @property
    def seen(self) -> list[Person]:
        return [p for p in self.people if p.seen]

    @property
    def heldout(self) -> list[Person]:
        return [p for p in self.people if not p.seen]

    def person(self, name: str) -> Person:
        for p in self.people:
            if p.name == name:
                return p
        raise KeyError(f"no person named {name!r} in this world")

    def values(self, attribute: str) -> tuple[str, ...]:
        """Every value ``attribute`` can take, e.g. to compute the accuracy of guessing."""
        if attribute not in ATTRIBUTES:
            raise ValueError(f"attribute={attribute!r} must be one of {ATTRIBUTES}")
        lo, hi = BIRTH_YEARS
        options = {"city": self.cities, "job": JOBS, "colour": COLOURS, "pet": PETS}
        return options.get(attribute, tuple(str(y) for y in range(lo, hi + 1)))

    def qa(self, split: str) -> list[QA]:
        """Questions about every attribute of the people in ``split`` (train/test/heldout)."""
        seen = self.seen
        groups = {"train": seen[::2], "test": seen[1::2], "heldout": self.heldout}
        if split not in groups:
            raise ValueError(f"split={split!r} must be one of {tuple(groups)}")
        return [
            QA(QUESTIONS[f.attribute].format(name=p.name), f.value, p.name, f.attribute, split)
            for p in groups[split]
            for f in p.facts()
        ]

    def after_moves(self, share: float, seed: int | None = None) -> World:
        """The same world some time later: ``share`` of the seen people live in a new city.

        A model trained on the original text is frozen at its *knowledge cut-off*; comparing
        its answers with this later world shows what that costs. Which people move, and
        where, is a pure function of ``seed`` (default: stream 0 of the chapter's seed).
        """
        if not 0 < share <= 1:
            raise ValueError(f"share={share} must be in (0, 1]")
        seed = resolve_seed(seed, 0)
        rng = random.Random(f"moves-{self.seed}-{seed}")
        seen = self.seen
        movers = {p.name for p in rng.sample(seen, max(1, round(share * len(seen))))}
        people = tuple(
            replace(p, city=rng.choice([c for c in self.cities if c != p.city]))
            if p.name in movers
            else p
            for p in self.people
        )
        return replace(self, people=people)

    def biography(self, person: Person, rng: random.Random) -> str:
        """All of one person's facts, in a random order, each in a random paraphrase."""
        facts = person.facts()
        rng.shuffle(facts)
        return " ".join(f.sentence(rng.randrange(len(TEMPLATES[f.attribute]))) for f in facts)

    def corpus(self, n_chars: int, part: str = "train") -> list[str]:
        """Pre-training documents (one biography each) about the seen people only.

        Documents are added until they hold at least ``n_chars`` characters; people are
        visited in shuffled rounds, so every seen person appears equally often (within
        one). A smaller ``n_chars`` gives a prefix of a larger one, so scaling experiments
        train on nested data. ``part="valid"`` draws fresh paraphrases of the same facts
        for a validation loss.
        """
        if n_chars < 1:
            raise ValueError(f"n_chars={n_chars} must be at least 1")
        if part not in ("train", "valid"):
            raise ValueError(f"part={part!r} must be 'train' or 'valid'")
        rng = random.Random(f"corpus-{part}-{self.seed}")
        docs: list[str] = []
        total = 0
        while total < n_chars:
            order = self.seen
            rng.shuffle(order)
            for person in order:
                docs.append(self.biography(person, rng))
                total += len(docs[-1]) + 1  # +1: the separator between documents
                if total >= n_chars:
                    break
        return docs


def _word(rng: random.Random, n_syllables: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(n_syllables)).capitalize()


def make_world(
    seed: int | None = None, n_people: int = 200, heldout_fraction: float = 0.2
) -> World:
    """Invent ``n_people`` people with unique names, ``heldout_fraction`` of them unseen.

    Same arguments, same world (a pure function of them); another ``seed``, other people.
    ``seed=None`` is stream 0 of the running chapter's seed (0 when no chapter set one).
    """
    seed = resolve_seed(seed, 0)  # raises for a negative seed
    if not 3 <= n_people <= 10_000:
        raise ValueError(f"n_people={n_people} must be in [3, 10000]")
    n_heldout = round(n_people * heldout_fraction)
    if not 0 < heldout_fraction < 1 or not 1 <= n_heldout <= n_people - 2:
        raise ValueError(
            f"heldout_fraction={heldout_fraction} must leave at least 1 held-out and 2 seen "
            f"people out of n_people={n_people}"
        )
    rng = random.Random(seed)
    cities = tuple(sorted({_word(rng, 2) + rng.choice(CITY_SUFFIXES) for _ in range(12)}))
    # SYLLABLES is prefix-free, so with fixed syllable counts no name is a prefix of
    # another: a held-out name never appears inside a seen one.
    names: dict[str, None] = {}  # insertion-ordered set
    while len(names) < n_people:
        names[f"{_word(rng, 2)} {_word(rng, 3)}"] = None
    lo, hi = BIRTH_YEARS
    people = tuple(
        Person(
            name=name,
            city=rng.choice(cities),
            job=rng.choice(JOBS),
            born=rng.randint(lo, hi),
            colour=rng.choice(COLOURS),
            pet=rng.choice(PETS),
            seen=i >= n_heldout,  # names are already random, so the first ones will do
        )
        for i, name in enumerate(names)
    )
    return World(seed, people, cities)
