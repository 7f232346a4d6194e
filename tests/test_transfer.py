import pytest
import torch
import torch.nn.functional as F

from mlupdates.distill import distillation_loss
from mlupdates.transfer import (
    MODES,
    DigitsCNN,
    classifier_accuracy,
    digits_arrays,
    fit_classifier,
    fit_classifiers,
    load_digits_split,
    reuse,
)

from .conftest import assert_close_f32

torch.set_num_threads(1)


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_digits_arrays_equal_scikit_learns_loader():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    images, labels = digits_arrays()
    reference = sklearn_datasets.load_digits()
    assert images.shape == (1797, 8, 8)
    assert (images == reference.images).all() and (labels == reference.target).all()


def test_split_is_deterministic_relabelled_and_nested():
    full = load_digits_split((5, 6, 7), test_fraction=0.3, seed=0)
    again = load_digits_split((5, 6, 7), test_fraction=0.3, seed=0)
    small = load_digits_split((5, 6, 7), n_train_per_class=4, test_fraction=0.3, seed=0)
    assert torch.equal(full.x_train, again.x_train) and torch.equal(full.y_test, again.y_test)
    assert set(full.y_train.tolist()) == {0, 1, 2} and full.classes == (5, 6, 7)
    assert (
        full.x_train.shape[1:] == (1, 8, 8) and 0 <= full.x_train.min() <= full.x_train.max() <= 1
    )
    # fewer training images leave the test set unchanged
    assert torch.equal(small.x_test, full.x_test) and torch.equal(small.y_test, full.y_test)
    assert small.y_train.bincount().tolist() == [4, 4, 4]
    # no image is in both train and test
    train_rows = {tuple(r.flatten().tolist()) for r in full.x_train}
    assert not any(tuple(r.flatten().tolist()) in train_rows for r in full.x_test[:50])


def test_split_errors():
    with pytest.raises(ValueError, match="classes"):
        load_digits_split((3, 3))
    with pytest.raises(ValueError, match="classes"):
        load_digits_split((10,))
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits_split((0, 1), test_fraction=1.0)
    with pytest.raises(ValueError, match="n_train_per_class"):
        load_digits_split((0, 1), n_train_per_class=0)
    with pytest.raises(ValueError, match="exceeds"):
        load_digits_split((0, 1), n_train_per_class=10_000)


def test_cnn_shapes_and_errors():
    model = DigitsCNN(n_classes=5, channels=(4, 8), hidden=16)
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 5)
    with pytest.raises(ValueError, match="n_classes"):
        DigitsCNN(n_classes=1)
    with pytest.raises(ValueError, match="channels"):
        DigitsCNN(channels=(4, 0))


def test_reuse_freezes_by_mode_and_leaves_the_original_alone():
    torch.manual_seed(0)
    model = DigitsCNN(n_classes=5)  # conv 160 + 4,640; hidden 32,832; head 64*5+5
    before = [p.clone() for p in model.parameters()]
    counts = {mode: trainable(reuse(model, mode, 3)) for mode in MODES}
    head = 64 * 3 + 3
    assert counts == {
        "features": head,
        "partial": 32 * 16 * 64 + 64 + head,
        "full": 160 + 4640 + 32 * 16 * 64 + 64 + head,
    }
    new = reuse(model, "features", 3)
    assert torch.equal(new.features[0].weight, model.features[0].weight)  # weights reused
    assert new.head.out_features == 3 and model.head.out_features == 5
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="mode"):
        reuse(model, "top", 3)
    with pytest.raises(ValueError, match="n_classes"):
        reuse(model, "full", 1)


def test_fit_learns_touches_only_trainable_weights_and_is_deterministic():
    data = load_digits_split((0, 1), n_train_per_class=20)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        source = DigitsCNN(n_classes=2, channels=(4, 8), hidden=16)
        model = reuse(source, "partial", 2)
        frozen = model.features[0].weight.clone()
        result = fit_classifier(model, data.x_train, data.y_train, epochs=60, lr=3e-2)
        assert torch.equal(model.features[0].weight, frozen)
        runs.append((result.losses, classifier_accuracy(model, data.x_test, data.y_test)))
    assert runs[0] == runs[1]
    losses, acc = runs[0]
    assert losses[-1] < losses[0] and acc > 0.9  # 0 vs 1 is easy even on random features
    assert result.seconds > 0 and result.cpu_seconds > 0


def test_fit_with_a_teacher_uses_the_distillation_loss():
    data = load_digits_split((0, 1, 2), n_train_per_class=8)
    torch.manual_seed(0)
    teacher = DigitsCNN(n_classes=3, channels=(4, 8), hidden=16)
    student = DigitsCNN(n_classes=3, channels=(2, 4), hidden=8)
    start = distillation_loss(
        student(data.x_train), teacher(data.x_train), data.y_train, T=3.0, alpha=0.7
    ).item()
    result = fit_classifier(
        student,
        data.x_train,
        data.y_train,
        epochs=1,
        batch_size=1000,
        teacher=teacher,
        T=3.0,
        alpha=0.7,
        lr=1e-9,
    )
    assert result.losses[0] == pytest.approx(start, rel=1e-5)  # one full batch, no real step
    # alpha=0 with a teacher is plain cross-entropy
    ce = F.cross_entropy(student(data.x_train), data.y_train).item()
    again = fit_classifier(
        student,
        data.x_train,
        data.y_train,
        epochs=1,
        batch_size=1000,
        teacher=teacher,
        alpha=0.0,
        lr=1e-9,
    )
    assert again.losses[0] == pytest.approx(ce, rel=1e-5)


def test_fit_and_accuracy_errors():
    x, y = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    model = DigitsCNN(n_classes=2)
    with pytest.raises(ValueError, match="rows"):
        fit_classifier(model, x, y[:3])
    with pytest.raises(ValueError, match="epochs"):
        fit_classifier(model, x, y, epochs=0)
    with pytest.raises(ValueError, match="lr"):
        fit_classifier(model, x, y, lr=0.0)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        fit_classifier(model, x, y)
    with pytest.raises(ValueError, match="rows"):
        classifier_accuracy(model, x[:0], y[:0])


def test_split_and_batch_order_follow_the_chapter_seed(monkeypatch):
    from mlupdates import runtime

    monkeypatch.setattr(runtime, "_current", None)
    monkeypatch.setenv("MLUPDATES_SEED", "0")
    default0 = load_digits_split((0, 1))
    assert torch.equal(default0.y_test, load_digits_split((0, 1), seed=0).y_test)
    assert torch.equal(default0.x_train, load_digits_split((0, 1), seed=0).x_train)
    monkeypatch.setenv("MLUPDATES_SEED", "1")
    default1 = load_digits_split((0, 1))
    explicit = load_digits_split((0, 1), seed=runtime.derive_seed(1, 0))
    assert torch.equal(default1.x_train, explicit.x_train)
    assert not torch.equal(default1.x_train, default0.x_train)  # another seed, another split


def test_split_to_moves_every_tensor_and_keeps_the_classes():
    split = load_digits_split((2, 3), n_train_per_class=3, seed=0)
    moved = split.to("cpu")
    assert moved.classes == (2, 3) and torch.equal(moved.x_test, split.x_test)
    assert moved.to(torch.device("cpu")).y_train.device.type == "cpu"


def test_reuse_puts_the_new_head_on_the_models_device():
    model = DigitsCNN(n_classes=5).to("meta")  # a device other than the CPU, on any machine
    new = reuse(model, "full", 3)
    assert new.head.weight.device.type == "meta" and new.head.out_features == 3


def test_fit_classifiers_trains_each_model_as_fit_classifier_would():
    data = load_digits_split((0, 1, 2), n_train_per_class=12)
    torch.manual_seed(0)
    teacher = DigitsCNN(n_classes=3, channels=(4, 8), hidden=16)
    settings = [(1, None), (2, None), (1, 2.0), (3, 4.0)]  # (batch-order seed, temperature)
    training = dict(epochs=4, batch_size=10, lr=1e-2)

    def student(k: int) -> DigitsCNN:
        torch.manual_seed(100 + k)
        return DigitsCNN(n_classes=3, channels=(2, 4), hidden=8)

    alone = []
    for k, (seed, T) in enumerate(settings):
        model = student(k)
        result = fit_classifier(
            model,
            data.x_train,
            data.y_train,
            seed=seed,
            teacher=None if T is None else teacher,
            T=T or 1.0,
            alpha=0.7,
            **training,
        )
        alone.append((model, result))
    together = [student(k) for k in range(len(settings))]
    results = fit_classifiers(
        together,
        data.x_train,
        data.y_train,
        seeds=[s for s, _ in settings],
        teacher=teacher,
        temperatures=[T for _, T in settings],
        alpha=0.7,
        **training,
    )
    for (model, result), joint, joint_result in zip(alone, together, results, strict=True):
        assert joint_result.losses == pytest.approx(result.losses, rel=1e-4)
        for p, q in zip(model.parameters(), joint.parameters(), strict=True):
            assert_close_f32(q, p, ulps=1024)
        assert not joint.training
    # the settings really differ: a model trained by another setting ends elsewhere
    gap = (together[0].head.weight - together[2].head.weight).abs().max().item()
    assert gap > 1e-3


def test_fit_classifiers_errors():
    x, y = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    a, b = DigitsCNN(n_classes=2), DigitsCNN(n_classes=3)
    with pytest.raises(ValueError, match="same parameter"):
        fit_classifiers([a, b], x, y, seeds=[0, 1])
    with pytest.raises(ValueError, match="2 seeds for 1"):
        fit_classifiers([a], x, y, seeds=[0, 1])
    with pytest.raises(ValueError, match="needs a teacher"):
        fit_classifiers([a], x, y, seeds=[0], temperatures=[2.0])
    with pytest.raises(ValueError, match="empty"):
        fit_classifiers([], x, y, seeds=[])
    frozen = reuse(a, "features", 2)
    with pytest.raises(ValueError, match="trainable"):
        fit_classifiers([frozen], x, y, seeds=[0])
