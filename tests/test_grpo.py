import math

import torch

from grpo import group_advantages, grpo_loss, kl_k3


def test_group_advantages_hand_worked():
    # group 1: rewards 0, 1, 2 -> mean 1, unbiased std 1 -> -1, 0, 1
    # group 2: all equal -> no signal, advantage 0 (not NaN)
    A = group_advantages(torch.tensor([0.0, 1.0, 2.0, 5.0, 5.0, 5.0]), group_size=3)
    torch.testing.assert_close(A, torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]), atol=1e-3, rtol=0)


def test_kl_k3_nonnegative_and_unbiased():
    torch.manual_seed(0)
    d = torch.randn(10000) * 3
    assert (kl_k3(d, torch.randn(10000) * 3) >= 0).all()
    assert kl_k3(d, d).abs().max() == 0
    # Monte Carlo mean under samples from pi approaches KL(pi || ref) of two categoricals
    pi, ref = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.5, 0.3])
    true_kl = (pi * (pi / ref).log()).sum()
    x = torch.multinomial(pi, 200000, replacement=True, generator=torch.Generator().manual_seed(0))
    est = kl_k3(pi.log()[x], ref.log()[x]).mean()
    assert abs(est - true_kl) < 0.01


def test_grpo_loss_hand_worked():
    # two outputs of one group, advantages +1 and -1; eps = 0.2, beta = 0.5
    # output 1: two tokens, ratios e^0.1 (inside the clip range) and e^0.5 (clipped to 1.2 for A > 0)
    # output 2: one token (second is padding), ratio e^-0.5 (A < 0: min(-0.607, -0.8) = -0.8, clipped)
    logp = torch.tensor([[0.1, 0.5], [-0.5, 0.0]])
    old = torch.zeros(2, 2)
    ref = torch.tensor([[0.1, 0.0], [-0.5, 0.0]])  # KL 0 except output 1 token 2: e^-0.5 + 0.5 - 1
    A = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    kl = math.exp(-0.5) + 0.5 - 1
    J1 = (math.exp(0.1) + (1.2 - 0.5 * kl)) / 2  # mean over the 2 tokens of output 1
    J2 = -0.8                                     # its single token
    loss, m = grpo_loss(logp, old, ref, A, mask, eps=0.2, beta=0.5)
    torch.testing.assert_close(loss, torch.tensor(-(J1 + J2) / 2))
    torch.testing.assert_close(m["clip_frac"], torch.tensor(2 / 3))
    torch.testing.assert_close(m["kl"], torch.tensor(kl / 3))


def test_gradient_at_ratio_one_is_reinforce():
    # oracle: with old = theta, grad of the loss is -1/G sum_i A_i/|o_i| sum_t grad log pi
    # (+ beta * grad of the per-token KL mean)
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 7, requires_grad=True)
    tokens = torch.randint(0, 7, (4, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]).float()
    A = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2)

    def logp_of(z):
        return torch.log_softmax(z, -1).gather(-1, tokens[..., None]).squeeze(-1)

    logp = logp_of(logits)
    loss, _ = grpo_loss(logp, logp.detach(), None, A, mask)
    (g,) = torch.autograd.grad(loss, logits)
    reinforce = -((A[:, None] * logp_of(logits) * mask).sum(1) / mask.sum(1)).mean()
    (g_ref,) = torch.autograd.grad(reinforce, logits)
    torch.testing.assert_close(g, g_ref)
    assert g.abs().sum() > 0  # the loss value is ~0, its gradient is not


def test_clipping_zeroes_gradient_outside_the_trust_region():
    logp = torch.tensor([[0.5, -0.5, 0.0]], requires_grad=True)  # ratios e^.5 (> 1.2), e^-.5 (< 0.8), 1
    old = torch.zeros(1, 3)
    for A, dead in ((1.0, 0), (-1.0, 1)):  # A > 0 clips ratios above 1+eps; A < 0 clips those below 1-eps
        loss, _ = grpo_loss(logp, old, None, torch.tensor([A]), torch.ones(1, 3))
        (g,) = torch.autograd.grad(loss, logp)
        assert g[0, dead] == 0 and g[0, 2] != 0
