"""The recipes rebuild chapter 2's models deterministically and cache them safely."""

import pytest
import torch

from mlupdates import recipes, runtime
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


def test_changed_recipe_seed_or_platform_changes_the_cache_key(monkeypatch):
    key = recipes._recipe_key("base")
    assert recipes._recipe_key("assistant") != key
    assert recipes._recipe_key("base", seed=1) != key
    assert recipes._recipe_key("base", fingerprint="0123456789ab") != key
    assert recipes._recipe_key("base", fingerprint=runtime.platform_fingerprint()) == key
    monkeypatch.setattr(recipes, "BASE_TRAINING", TINY)
    assert recipes._recipe_key("base") != key


def test_the_chapter_seed_reaches_the_world_and_the_weights(tiny_recipe, monkeypatch):
    assert recipes.world_kwargs(0)["seed"] == 0  # seed 0: the world chapter 2 was written with
    other = recipes.corpus(seed=2)
    assert other.world.seed == 2 * runtime.SEED_STRIDE
    assert [p.name for p in other.world.people] != [p.name for p in recipes.corpus(0).world.people]
    monkeypatch.setenv("MLUPDATES_SEED", "2")
    runtime.setup(notebook="00-test")
    try:
        assert recipes.corpus() is other  # the default follows the chapter's seed
        assert not _same(recipes.base_model(), recipes.base_model(seed=0))
        assert len(list(tiny_recipe.glob("base-*.pt"))) == 2  # one file per seed
    finally:
        monkeypatch.delenv("MLUPDATES_SEED")
        runtime.setup(notebook="00-test")


def test_base_run_keeps_history_and_probe_samples_through_the_cache(tiny_recipe):
    first = recipes.base_run()
    assert sorted(first.samples) == [3] and first.samples[3].startswith(recipes.probe_text())
    assert first.history.column("step") == [3] and len(first.history.step_losses) == 3
    recipes._base.cache_clear()
    loaded = recipes.base_run()
    assert loaded.samples == first.samples
    assert loaded.history.records == first.history.records
    assert loaded.history.step_losses == first.history.step_losses
    assert _same(loaded.model, first.model)


def test_train_width_is_the_base_recipe_at_another_width_and_length(tiny_recipe):
    cfg = recipes.base_config(recipes.corpus().tokenizer.vocab_size)
    base, base_history = recipes.train_base(cfg)  # 3 steps, evaluated at step 3 (TINY)
    same, same_history = recipes.train_width(cfg.d_model, TINY.steps, TINY.eval_every)
    assert _same(base, same) and same_history.step_losses == base_history.step_losses
    narrow, history = recipes.train_width(16, 4, 2)
    assert narrow.config.d_model == 16 and narrow.config.n_layer == cfg.n_layer
    assert history.column("step") == [2, 4] and history.step_losses != base_history.step_losses
    with pytest.raises(ValueError, match="multiple of 4"):
        recipes.train_width(18, 4, 2)
