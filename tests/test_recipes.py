"""The recipes rebuild chapter 2's models deterministically and cache them safely."""

import pytest
import torch

from mlupdates import recipes
from mlupdates.train import TrainConfig

TINY = TrainConfig(steps=3, batch_size=4, lr=1e-3, min_lr=1e-4, warmup_steps=1, eval_every=3)


@pytest.fixture
def tiny_recipe(monkeypatch, tmp_path):
    """The real recipe with 3 training steps each and a private cache directory."""
    monkeypatch.setattr(recipes, "BASE_TRAINING", TINY)
    monkeypatch.setattr(recipes, "SFT_TRAINING", TINY)
    monkeypatch.setattr(recipes, "cache_dir", lambda: tmp_path)
    monkeypatch.delenv("MLUPDATES_NO_CACHE", raising=False)
    recipes._base.cache_clear()
    recipes._assistant.cache_clear()
    yield tmp_path
    recipes._base.cache_clear()
    recipes._assistant.cache_clear()


def _same(a, b) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_corpus_is_chapter_2s():
    data = recipes.corpus()
    assert data.tokenizer.vocab_size == recipes.VOCAB
    assert len(data.world.seen) == 40 and len(data.world.heldout) == 10
    assert data.train_tokens.ndim == 1 and int((data.train_tokens == data.eot).sum()) == len(
        data.train_docs
    )


def test_disk_cache_returns_the_weights_a_rebuild_gives(tiny_recipe, monkeypatch):
    first = recipes.base_model()
    files = list(tiny_recipe.glob("base-*.pt"))
    assert len(files) == 1
    recipes._base.cache_clear()
    from_disk = recipes.base_model()
    monkeypatch.setenv("MLUPDATES_NO_CACHE", "1")
    recipes._base.cache_clear()
    rebuilt = recipes.base_model()
    assert _same(first, from_disk) and _same(first, rebuilt)
    assistant = recipes.assistant_model()
    assert not _same(assistant, rebuilt)  # fine-tuning changed the weights


def test_models_are_fresh_copies(tiny_recipe):
    a = recipes.base_model()
    with torch.no_grad():
        next(a.parameters()).add_(1.0)
    assert not _same(a, recipes.base_model())


def test_changed_recipe_changes_the_cache_key(monkeypatch):
    key = recipes._recipe_key("base")
    assert recipes._recipe_key("assistant") != key
    monkeypatch.setattr(recipes, "BASE_TRAINING", TINY)
    assert recipes._recipe_key("base") != key
