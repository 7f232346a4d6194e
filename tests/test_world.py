from collections import Counter

import pytest

from mlupdates.world import ATTRIBUTES, TEMPLATES, Fact, World, make_world


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(seed=0, n_people=100, heldout_fraction=0.2)


def test_world_is_a_pure_function_of_seed_and_sizes(world):
    again = make_world(seed=0, n_people=100, heldout_fraction=0.2)
    assert again == world
    assert again.corpus(5000) == world.corpus(5000)
    assert again.qa("test") == world.qa("test")
    other = make_world(seed=1, n_people=100, heldout_fraction=0.2)
    assert {p.name for p in other.people}.isdisjoint({p.name for p in world.people})
    assert other.corpus(5000) != world.corpus(5000)


def test_people_are_unique_split_and_valued(world):
    names = [p.name for p in world.people]
    assert len(set(names)) == 100
    assert not any(a != b and b.startswith(a) for a in names for b in names)  # no name in another
    assert (len(world.seen), len(world.heldout)) == (80, 20)
    for p in world.people:
        for fact in p.facts():
            assert fact.value in world.values(fact.attribute)
    # attributes vary: a world where everyone shares a value would teach nothing
    assert all(len({getattr(p, a) for p in world.people}) > 3 for a in ATTRIBUTES)


def test_corpus_holds_every_seen_fact_and_no_heldout_name(world):
    docs = world.corpus(60_000)
    text = "\n".join(docs)
    for p in world.heldout:
        assert p.name not in text
    for p in world.seen:
        for fact in p.facts():
            assert any(fact.sentence(k) in text for k in range(len(TEMPLATES[fact.attribute])))
    seen_names = [p.name for p in world.seen]
    about = [[n for n in seen_names if n in d] for d in docs]
    assert all(len(names) == 1 for names in about)  # one biography per document
    mentions = Counter(names[0] for names in about)
    assert len(mentions) == len(seen_names)
    assert max(mentions.values()) - min(mentions.values()) <= 1  # people equally often
    valid = world.corpus(20_000, part="valid")
    assert valid != docs[: len(valid)]
    assert "\n".join(valid).count(world.seen[0].name) >= 1


def test_corpus_size_and_nesting(world):
    docs = world.corpus(10_000)
    assert len(docs) == len(set(docs))  # paraphrase and order vary between biographies
    total = sum(len(d) + 1 for d in docs)
    assert total >= 10_000 > total - len(docs[-1]) - 1  # stops at the first document past it
    assert world.corpus(30_000)[: len(docs)] == docs  # a small corpus is a prefix of a big one


def test_qa_splits_partition_people_and_answers_are_right(world):
    splits = {s: world.qa(s) for s in ("train", "test", "heldout")}
    people = {s: {q.person for q in qa} for s, qa in splits.items()}
    assert people["train"].isdisjoint(people["test"])
    assert people["train"] | people["test"] == {p.name for p in world.seen}
    assert people["heldout"] == {p.name for p in world.heldout}
    for s, qa in splits.items():
        assert len(qa) == len(people[s]) * len(ATTRIBUTES)
        for q in qa:
            assert q.split == s and q.person in q.question and q.question.endswith("?")
            assert q.answer == str(getattr(world.person(q.person), q.attribute))


def test_fact_sentences_paraphrase_with_articles():
    sentences = {Fact("Ka Lin", "job", "engineer").sentence(k) for k in range(4)}
    assert len(sentences) == 4
    assert "Ka Lin works as an engineer." in sentences
    assert Fact("Ka Lin", "pet", "cat").sentence(1) == "Ka Lin keeps a cat as a pet."
    assert all("engineer" in s and "Ka Lin" in s for s in sentences)


def test_errors_name_the_argument_and_range(world):
    with pytest.raises(ValueError, match=r"n_people=2 must be in \[3, 10000\]"):
        make_world(n_people=2)
    with pytest.raises(ValueError, match="heldout_fraction=0 must leave at least 1 held-out"):
        make_world(heldout_fraction=0)
    with pytest.raises(ValueError, match=r"heldout_fraction=0\.99 must leave"):
        make_world(n_people=10, heldout_fraction=0.99)
    with pytest.raises(ValueError, match="seed=-1 must be non-negative"):
        make_world(seed=-1)
    with pytest.raises(ValueError, match="n_chars=0 must be at least 1"):
        world.corpus(0)
    with pytest.raises(ValueError, match="part='test' must be 'train' or 'valid'"):
        world.corpus(100, part="test")
    with pytest.raises(ValueError, match="split='dev' must be one of"):
        world.qa("dev")
    with pytest.raises(ValueError, match="attribute='age' must be one of"):
        world.values("age")
    with pytest.raises(ValueError, match=r"template=4 must be in \[0, 3\]"):
        Fact("A B", "city", "X").sentence(4)
    with pytest.raises(KeyError, match="no person named 'Nobody'"):
        world.person("Nobody")


def test_after_moves_changes_only_the_city_of_the_chosen_share():
    world = make_world(seed=0, n_people=50, heldout_fraction=0.2)
    later = world.after_moves(0.5, seed=1)
    moved = [p for p, q in zip(world.people, later.people, strict=True) if p.city != q.city]
    assert len(moved) == 20 and all(p.seen for p in moved)
    for p, q in zip(world.people, later.people, strict=True):
        assert (p.name, p.job, p.born, p.colour, p.pet) == (q.name, q.job, q.born, q.colour, q.pet)
        assert q.city in world.cities
    assert world.after_moves(0.5, seed=1) == later
    with pytest.raises(ValueError, match="share"):
        world.after_moves(0.0)


def test_default_seed_is_the_chapters(monkeypatch):
    from mlupdates import runtime
    from mlupdates.runtime import derive_seed

    monkeypatch.setattr(runtime, "_current", None)  # no setup() of another test leaks in
    monkeypatch.delenv("MLUPDATES_SEED", raising=False)
    assert make_world(n_people=20) == make_world(seed=0, n_people=20)  # seed 0: as before
    monkeypatch.setenv("MLUPDATES_SEED", "3")
    world = make_world(n_people=20)
    assert world == make_world(seed=derive_seed(3, 0), n_people=20)
    assert world != make_world(seed=0, n_people=20)
    assert world.after_moves(0.5) == world.after_moves(0.5, seed=derive_seed(3, 0))
    assert world.after_moves(0.5) != world.after_moves(0.5, seed=0)
