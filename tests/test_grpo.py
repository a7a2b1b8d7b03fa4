import math

import pytest
import torch

import grpo
from grpo import group_advantages, grpo_loss, kl_k3, loss_normalizer


def close(a, b, tol=1e-5):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                               atol=tol, rtol=0)


# --- eq. 3: advantages ---

def test_group_advantages_hand_worked():
    r = torch.tensor([0.0, 1.0, 2.0, 5.0, 5.0, 5.0])
    # group 1: rewards 0, 1, 2 -> mean 1, unbiased std 1 -> -1, 0, 1
    # group 2: all equal -> no signal: 0, not NaN, under every scale
    close(group_advantages(r, 3), [-1, 0, 1, 0, 0, 0], tol=1e-3)
    close(group_advantages(r, 3, scale="none"), [-1, 0, 1, 0, 0, 0])
    # batch: the same centring, divided by the unbiased std of all six rewards:
    # mean 3, squared deviations 9+4+1+4+4+4 = 26, /5 = 5.2
    close(group_advantages(r, 3, scale="batch"), torch.tensor([-1, 0, 1, 0, 0, 0]) / (math.sqrt(5.2) + 1e-4))
    assert not group_advantages(torch.full((4,), 3.0), 4).isnan().any()


def test_unscored_outputs_get_zero_and_leave_the_statistics():
    # None (a reward function declined) counts as absent: the group is {1, 3} -> mean 2, std sqrt(2)
    A = group_advantages([1.0, None, 3.0, float("nan")], 4)
    close(A, [-1 / math.sqrt(2), 0, 1 / math.sqrt(2), 0], tol=1e-3)
    close(group_advantages([None, 2.0, None, None], 4), [0, 0, 0, 0])  # one scored output: no signal
    close(group_advantages([None] * 4, 2, scale="batch"), [0, 0, 0, 0])


def test_bad_scale_or_group_size_say_what_to_fix():
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(4), 2, scale="rank")
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(4), 3)


# --- eq. 2: k3 ---

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


# --- eq. 1: the loss ---

def test_grpo_loss_hand_worked():
    # Two groups of two outputs (G = 2), eps = 0.2, beta = 0.5, old log-probs 0 (so rho = e^logp).
    # Advantages are given as +-1 (eq. 3 is tested above) to keep the arithmetic short.
    #   output 1, A=+1: tokens rho = e^0.1 (inside), e^0.5 = 1.65 (A > 0, clipped to 1.2)
    #   output 2, A=-1: one token, rho = e^-0.5 = 0.61 (A < 0: min(-0.61, -0.8) = -0.8, clipped)
    #   output 3, A=-1: three tokens at rho = 1 -> -1 each
    #   output 4, A=+1: one token, rho = e^0.15 = 1.16 (inside) -> 1.16
    # KL: 0 except output 1 token 2, whose ref log-prob is 0: k3 = e^-0.5 + 0.5 - 1.
    logp = torch.tensor([[0.1, 0.5, 0.0], [-0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [0.15, 0.0, 0.0]])
    ref = logp.clone()
    ref[0, 1] = 0.0
    A = torch.tensor([1.0, -1.0, -1.0, 1.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]]).float()
    kl = math.exp(-0.5) + 0.5 - 1
    tok = [[math.exp(0.1), 1.2 - 0.5 * kl], [-0.8], [-1.0, -1.0, -1.0], [math.exp(0.15)]]  # per-token terms
    # "grpo": mean over each output's tokens, then over the 4 outputs
    J_grpo = sum(sum(t) / len(t) for t in tok) / 4
    # "token": all 7 tokens weigh the same
    J_token = sum(sum(t) for t in tok) / 7
    # "dr_grpo": sum over tokens / (4 outputs x max length 3)
    J_dr = sum(sum(t) for t in tok) / 12
    for loss_type, J in (("grpo", J_grpo), ("token", J_token), ("dr_grpo", J_dr)):
        loss, m = grpo_loss(logp, torch.zeros(4, 3), ref, A, mask, eps_low=0.2, beta=0.5, loss_type=loss_type)
        close(loss, -J)
    close(m["clip_high"], 1 / 7)  # output 1 token 2
    close(m["clip_low"], 1 / 7)   # output 2
    close(m["kl"], kl / 7)
    close(m["tokens"], 7)
    close(m["ratio"], (math.exp(0.1) + math.exp(0.5) + math.exp(-0.5) + 3 + math.exp(0.15)) / 7)


def test_gradient_at_ratio_one_is_reinforce_plus_kl():
    # Oracle, written from the equations rather than from grpo.py: at rho = 1 the gradient of the
    # loss with respect to logp[i, t] is
    #   -1/G * 1/|o_i| * (A_i - beta * d k3/d logp),   d k3 / d logp = 1 - exp(ref - logp)
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 7, requires_grad=True)
    tokens = torch.randint(0, 7, (4, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]).float()
    A = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2)
    ref_logp = torch.log_softmax(torch.randn(4, 5, 7), -1).gather(-1, tokens[..., None]).squeeze(-1)
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    for beta in (0.0, 0.3):
        loss, _ = grpo_loss(logp, logp.detach(), ref_logp, A, mask, beta=beta)
        (g,) = torch.autograd.grad(loss, logp, retain_graph=True)
        dk3 = 1 - torch.exp(ref_logp - logp.detach())
        expected = -(A[:, None] - beta * dk3) * mask / mask.sum(1, keepdim=True) / 4
        close(g, expected, tol=1e-6)
        (g_logits,) = torch.autograd.grad(loss, logits, retain_graph=True)
        assert g_logits.abs().sum() > 0  # the loss value is ~0, its gradient is not
    # and with beta = 0 it is REINFORCE with group-normalised advantages, through the softmax too
    loss, _ = grpo_loss(logp, logp.detach(), None, A, mask)
    reinforce = -((A[:, None] * logp * mask).sum(1) / mask.sum(1)).mean()
    close(torch.autograd.grad(loss, logits, retain_graph=True)[0], torch.autograd.grad(reinforce, logits)[0], tol=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "token", "dr_grpo"])
def test_micro_batches_give_the_loss_and_gradient_of_the_whole_batch(loss_type):
    torch.manual_seed(1)
    B, T = 6, 9
    logp = (torch.randn(B, T) * 0.1 - 1).requires_grad_()
    old, ref = logp.detach() + torch.randn(B, T) * 0.1, logp.detach() + torch.randn(B, T) * 0.1
    A = torch.randn(B)
    mask = (torch.arange(T)[None] < torch.tensor([9, 1, 4, 7, 2, 5])[:, None]).float()  # ragged lengths
    kw = dict(eps_low=0.2, eps_high=0.28, beta=0.1, loss_type=loss_type)
    whole, _ = grpo_loss(logp, old, ref, A, mask, **kw)
    (g_whole,) = torch.autograd.grad(whole, logp)
    norm = loss_normalizer(loss_type, mask, max_len=T)  # of the whole batch, given to every micro-batch
    total, g_acc = 0.0, torch.zeros(B, T)
    for rows in (slice(0, 1), slice(1, 4), slice(4, 6)):
        part, _ = grpo_loss(logp[rows], old[rows], ref[rows], A[rows], mask[rows], normalizer=norm, **kw)
        g_acc += torch.autograd.grad(part, logp)[0]
        total += part.item()
    close(total, whole)
    close(g_acc, g_whole, tol=1e-7)


def test_length_bias_of_grpo_against_dr_grpo():
    # Two wrong outputs (A = -1) of one group, 2 and 10 tokens long, at rho = 1. Per token of the
    # gradient, eq. 1's mean over each output's tokens pushes the long one down 5x less: a long wrong
    # answer is penalised less than a short one, so length grows for no reason. Dr. GRPO's constant
    # divisor (and DAPO's token mean) weigh every token alike.
    mask = torch.zeros(2, 10)
    mask[0, :2], mask[1, :] = 1, 1
    A = torch.tensor([-1.0, -1.0])
    per_token = {}
    for loss_type in ("grpo", "dr_grpo", "token"):
        logp = torch.zeros(2, 10, requires_grad=True)
        loss, _ = grpo_loss(logp, logp.detach(), None, A, mask, loss_type=loss_type)
        (g,) = torch.autograd.grad(loss, logp)
        per_token[loss_type] = (g[0, 0].item(), g[1, 0].item())  # short, long
    short, long = per_token["grpo"]
    assert short == pytest.approx(1 / 2 / 2) and long == pytest.approx(1 / 2 / 10)  # 1/G * 1/|o_i|
    assert short / long == pytest.approx(5)
    for loss_type in ("dr_grpo", "token"):
        short, long = per_token[loss_type]
        assert short == pytest.approx(long) and short > 0


def test_clipping_zeroes_gradient_outside_the_trust_region():
    # ratios e^.5 = 1.65, e^-.5 = 0.61, 1, e^.22 = 1.246
    logp = torch.tensor([[0.5, -0.5, 0.0, 0.22]], requires_grad=True)
    old = torch.zeros(1, 4)

    def grad(A, **kw):
        loss, m = grpo_loss(logp, old, None, torch.tensor([A]), torch.ones(1, 4), **kw)
        return torch.autograd.grad(loss, logp)[0][0], m

    # A > 0: ratios above 1+eps_high lose their gradient; those below 1-eps_low keep it
    g, m = grad(1.0)
    assert g[0] == 0 and g[3] == 0 and g[1] != 0 and g[2] != 0
    assert m["clip_high"] == pytest.approx(2 / 4) and m["clip_low"] == 0
    # clip-higher (DAPO): eps_high = 0.28 lets the 1.246 token grow, still stops the 1.65 one
    g, m = grad(1.0, eps_high=0.28)
    assert g[0] == 0 and g[3] != 0 and m["clip_high"] == pytest.approx(1 / 4)
    # A < 0: ratios below 1-eps_low lose their gradient; those above keep it
    g, m = grad(-1.0)
    assert g[1] == 0 and g[0] != 0 and g[2] != 0 and g[3] != 0
    assert m["clip_low"] == pytest.approx(1 / 4) and m["clip_high"] == 0


def test_bad_loss_type_says_what_to_fix():
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(torch.zeros(1, 2), torch.zeros(1, 2), None, torch.zeros(1), torch.ones(1, 2), loss_type="seq")


def test_tis_weights_give_the_on_policy_gradient_when_the_sampler_is_exact_and_bound_it_when_not():
    # truncated importance sampling (grpo.tis_weights): a sampler whose log-probs are pi_theta_old's
    # gives weights 1 and the on-policy gradient exactly; one that is off scales each token's
    # gradient by its weight, never by more than the cap
    torch.manual_seed(0)
    B, T, cap = 4, 6, 2.0
    old = -torch.rand(B, T) * 3
    mask = (torch.rand(B, T) > 0.2).float()
    A = torch.randn(B)

    def grad(is_weights):
        logp = old.clone().requires_grad_(True)
        loss, _ = grpo.grpo_loss(logp, old, None, A, mask, is_weights=is_weights)
        loss.backward()
        return logp.grad

    plain = grad(None)
    exact = grpo.tis_weights(old, old.clone(), cap)
    assert torch.equal(exact, torch.ones(B, T))
    torch.testing.assert_close(grad(exact), plain, rtol=0, atol=0)
    off = old - 4 * torch.rand(B, T) + 1  # the sampler found some tokens far less likely, some more
    w = grpo.tis_weights(old, off, cap)
    assert w.max() == cap and w.min() < 1  # some weights hit the cap, some are below 1
    g = grad(w)
    torch.testing.assert_close(g, plain * w)  # each token's gradient, scaled by its weight
    assert (g.abs() <= cap * plain.abs() + 1e-12).all()
    untruncated = grad(grpo.tis_weights(old, off, float("inf")))  # plain importance sampling is not bounded
    assert (untruncated.abs() > cap * plain.abs() + 1e-6).any()
