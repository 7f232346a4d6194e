import pytest
import torch
import torch.nn.functional as F

from mlupdates.distill import distillation_loss, soft_targets

torch.set_num_threads(1)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def labels_for(n: int, classes: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


def test_alpha_zero_is_cross_entropy():
    s, t, y = randn(8, 10), randn(8, 10, seed=1), labels_for(8, 10)
    assert torch.allclose(distillation_loss(s, t, y, T=3.0, alpha=0.0), F.cross_entropy(s, y))


def test_identical_logits_give_zero_soft_term():
    s, y = randn(8, 10), labels_for(8, 10)
    assert distillation_loss(s, s.clone(), y, T=4.0, alpha=1.0).abs() < 1e-6
    mixed = distillation_loss(s, s.clone(), y, T=4.0, alpha=0.3)
    assert torch.allclose(mixed, 0.7 * F.cross_entropy(s, y), atol=1e-6)


def test_parity_with_kl_div_log_target():
    s, t, y = randn(16, 7), randn(16, 7, seed=1), labels_for(16, 7)
    T, alpha = 2.5, 0.6
    kl = F.kl_div(
        F.log_softmax(s / T, dim=-1),
        F.log_softmax(t / T, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    expected = alpha * T**2 * kl + (1 - alpha) * F.cross_entropy(s, y)
    assert torch.allclose(distillation_loss(s, t, y, T, alpha), expected, atol=1e-6)


def test_t_squared_keeps_gradient_scale_across_temperatures():
    # zero-mean logits of moderate size: at high T the soft gradients shrink like 1/T^2
    s0 = randn(64, 10) * 0.5
    t = randn(64, 10, seed=1) * 0.5
    norms = {}
    for T in (2.0, 5.0, 20.0):
        s = s0.clone().requires_grad_(True)
        distillation_loss(s, t, None, T=T, alpha=1.0).backward()
        norms[T] = s.grad.norm().item()
        raw = s0.clone().requires_grad_(True)  # the same term without the T^2 factor
        (distillation_loss(raw, t, None, T=T, alpha=1.0) / T**2).backward()
        assert raw.grad.norm().item() == pytest.approx(norms[T] / T**2, rel=1e-5)
    assert 0.8 < norms[20.0] / norms[2.0] < 1.25  # comparable across a 10x range of T
    # analytic gradient of T^2 KL w.r.t. s: T (softmax(s/T) - softmax(t/T)) / N
    T = 5.0
    s = s0.clone().requires_grad_(True)
    distillation_loss(s, t, None, T=T, alpha=1.0).backward()
    analytic = T * (soft_targets(s0, T) - soft_targets(t, T)) / 64
    assert torch.allclose(s.grad, analytic, atol=1e-7)


def test_teacher_gets_no_gradient_and_ignore_index_masks_positions():
    s = randn(2, 5, 11).requires_grad_(True)
    t = randn(2, 5, 11, seed=1).requires_grad_(True)
    y = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(0))
    y[:, -2:] = -100  # e.g. prompt or padding tokens
    loss = distillation_loss(s, t, y, T=2.0, alpha=0.5)
    loss.backward()
    assert t.grad is None
    assert torch.count_nonzero(s.grad[:, -2:]) == 0 and torch.count_nonzero(s.grad[:, :3]) > 0
    kept = distillation_loss(s[:, :3], t[:, :3], y[:, :3], T=2.0, alpha=0.5)
    assert torch.allclose(loss, kept)


def test_soft_targets_flatten_with_temperature():
    logits = torch.tensor([[4.0, 1.0, 0.0]])
    p1, p5 = soft_targets(logits, 1.0), soft_targets(logits, 5.0)
    assert torch.allclose(p1.sum(), torch.tensor(1.0)) and torch.allclose(
        p5.sum(), torch.tensor(1.0)
    )
    assert p5[0, 2] > p1[0, 2] and p5[0, 0] < p1[0, 0]


def test_distillation_errors():
    s, y = randn(4, 3), labels_for(4, 3)
    with pytest.raises(ValueError, match="temperature T=0 must be positive"):
        distillation_loss(s, s, y, T=0)
    with pytest.raises(ValueError, match=r"alpha=1.5 must be in \[0, 1\]"):
        distillation_loss(s, s, y, alpha=1.5)
    with pytest.raises(ValueError, match="must have the same shape"):
        distillation_loss(s, randn(4, 5), y)
    with pytest.raises(ValueError, match=r"labels \(3,\) must match"):
        distillation_loss(s, s, y[:3])
    with pytest.raises(ValueError, match="labels=None needs alpha=1"):
        distillation_loss(s, s, None, alpha=0.5)
    with pytest.raises(ValueError, match="every label is ignore_index=-100"):
        distillation_loss(s, s, torch.full((4,), -100))
    with pytest.raises(ValueError, match="temperature T=-1"):
        soft_targets(s, -1)


class ParrotTeacher(torch.nn.Module):
    """A stand-in teacher that replies with the same token ids to every prompt."""

    def __init__(self, reply: list[int]) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.reply = torch.tensor(reply)

    def generate(self, idx, max_new_tokens, **decoding):
        assert decoding["temperature"] == 0.0  # greedy: the teacher's most likely reply
        extra = self.reply[:max_new_tokens].expand(idx.size(0), -1)
        return torch.cat([idx, extra], dim=1)


def test_sequence_distillation_data_takes_the_teachers_answers():
    from mlupdates.distill import sequence_distillation_data
    from mlupdates.tokenizer import BPETokenizer
    from mlupdates.world import make_world

    world = make_world(seed=3, n_people=6)
    tok = BPETokenizer.train(world.corpus(3000), 300)
    questions = world.qa("train")[:4]
    teacher = ParrotTeacher(tok.encode(" Norholm<|end|>"))
    data = sequence_distillation_data(teacher, tok, questions)
    assert [d.answer for d in data] == ["Norholm"] * 4  # right or wrong, the teacher's answer
    assert [d.question for d in data] == [q.question for q in questions]
    assert [(d.person, d.attribute) for d in data] == [(q.person, q.attribute) for q in questions]
    with pytest.raises(ValueError, match="empty"):
        sequence_distillation_data(teacher, tok, [])
    with pytest.raises(ValueError, match="max_new_tokens"):
        sequence_distillation_data(teacher, tok, questions, max_new_tokens=0)
