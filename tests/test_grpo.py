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


# --- exact advantages: equal groups, dtypes ---

@pytest.mark.parametrize("value", [2.1, 0.3, 1 / 3, -7.9])
@pytest.mark.parametrize("eps", [1e-4, 1e-8, 0.0, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_group_of_equal_non_dyadic_rewards_gets_exactly_zero(value, eps, dtype):
    # 16 rewards of 2.1 in float32: their mean is off by ~2e-7, and (r - mean) / (std + eps) at eps
    # 1e-4 would be ~2.4e-3, all of one sign. No signal must mean exactly 0, under every scale
    r = torch.full((16,), value, dtype=dtype)
    mixed = torch.cat([r, torch.tensor([0.0, 1.0] * 8, dtype=dtype)])  # and beside a group with signal
    for scale in grpo.SCALES:
        A = group_advantages(mixed, 16, scale, eps)
        assert A.dtype == dtype
        assert torch.equal(A[:16], torch.zeros(16, dtype=dtype)), (scale, A[:16])
        assert (A[16:] != 0).all()
    # unscored outputs in an otherwise equal group: still no signal
    part = [value, None, value, float("nan")] * 4
    assert torch.equal(group_advantages(part, 16, eps=eps), torch.zeros(16))


def test_the_rounding_the_exact_advantages_remove_is_real():
    # the naive eq. 3 in float32 on 16 rewards of 2.1 (what group_advantages computed before)
    r = torch.full((16,), 2.1)
    naive = (r - r.sum() / 16) / (r.std() + 1e-4)
    assert naive.abs().min() > 1e-3 and (naive.sign() == naive.sign()[0]).all()


def test_float64_rewards_stay_float64_and_others_give_float32():
    r64 = torch.tensor([0.1, 0.7, 0.3, 0.3, 2.1, 2.1, 2.1, 2.1], dtype=torch.float64)
    A = group_advantages(r64, 4)
    assert A.dtype == torch.float64
    g = r64[:4]
    expected = (g - g.mean()) / (g.std() + 1e-4)  # eq. 3 in float64, by hand
    torch.testing.assert_close(A[:4], expected, rtol=0, atol=1e-15)
    assert torch.equal(A[4:], torch.zeros(4, dtype=torch.float64))
    assert group_advantages(torch.tensor([0, 1, 2, 2]), 2).dtype == torch.float32
    assert group_advantages([0.0, 1.0, None, 2.0], 2).dtype == torch.float32
    assert grpo.constant_groups(torch.tensor([[1.0, 1.0], [1.0, 2.0], [3.0, math.nan]])).tolist() == [True, False, True]


# --- GSPO: the sequence-level ratio ---

def gspo_reference(logp, old, A, mask, eps_low, eps_high):
    """GSPO's J written from its paper with Python loops: s_i = (prod_t rho_t)^(1/|o_i|) over o_i's
    tokens, min(s_i A_i, clip(s_i) A_i), averaged over the outputs."""
    terms = []
    for i in range(logp.size(0)):
        idx = mask[i].nonzero().flatten()
        s = torch.prod(torch.exp(logp[i, idx] - old[i, idx])) ** (1 / max(len(idx), 1))
        terms.append(torch.min(s * A[i], s.clamp(1 - eps_low, 1 + eps_high) * A[i]))
    return -sum(terms) / len(terms)


def test_gspo_against_its_definition_values_and_gradients():
    torch.manual_seed(3)
    B, T = 6, 7
    old = -torch.rand(B, T) * 2
    logp = (old + torch.randn(B, T) * 0.05).requires_grad_()
    A = torch.randn(B)
    mask = (torch.arange(T)[None] < torch.tensor([7, 1, 4, 6, 2, 5])[:, None]).float()
    mask[0, 2:4] = 0  # a tool's output in the middle of row 0: context, not sampled
    for eps_low, eps_high in ((3e-4, 4e-4), (0.02, 0.03), (10.0, 10.0)):
        loss, m = grpo_loss(logp, old, None, A, mask, eps_low, eps_high, ratio_level="sequence")
        expected = gspo_reference(logp, old, A, mask, eps_low, eps_high)
        close(loss, expected, tol=1e-6)
        g, = torch.autograd.grad(loss, logp)
        g_ref, = torch.autograd.grad(expected, logp)
        torch.testing.assert_close(g, g_ref, atol=1e-7, rtol=1e-5)
        assert (g[mask == 0] == 0).all()  # padding and tool output: no gradient
    # at the paper's tiny range some outputs are clipped: all their tokens lose the gradient
    loss, m = grpo_loss(logp, old, None, A, mask, 3e-4, 4e-4, ratio_level="sequence")
    g, = torch.autograd.grad(loss, logp)
    s = grpo.sequence_ratio(logp.detach(), old, mask)
    clipped = ((s > 1 + 4e-4) & (A > 0)) | ((s < 1 - 3e-4) & (A < 0))
    assert clipped.any() and (~clipped).any()
    assert (g[clipped] == 0).all() and (g[~clipped].abs().sum(1) > 0).all()
    close(m["clip_low"] + m["clip_high"], (mask.sum(1) * clipped).sum() / mask.sum())
    close(m["ratio"], (mask.sum(1) * s).sum() / mask.sum())


def test_gspo_token_form_and_the_tokens_it_ignores():
    # GSPO-token: s_i,t = sg(s_i) pi(o_t) / sg(pi(o_t)), clipped per token; with
    # A_i,t = A_i it has GSPO's value and gradient, under any aggregation
    torch.manual_seed(4)
    B, T = 4, 5
    old = -torch.rand(B, T)
    logp = (old + torch.randn(B, T) * 0.02).requires_grad_()
    A, mask = torch.randn(B), (torch.rand(B, T) > 0.3).float()
    mask[:, 0] = 1
    s = grpo.sequence_ratio(logp, old, mask).detach()[:, None]
    for loss_type in ("grpo", "token"):
        s_t = s * torch.exp(logp - logp.detach())
        per_token = torch.min(s_t * A[:, None], s_t.clamp(1 - 0.01, 1 + 0.01) * A[:, None])
        token_form = -(per_token * grpo.token_weights(mask, loss_type)).sum()
        loss, _ = grpo_loss(logp, old, None, A, mask, 0.01, 0.01, loss_type=loss_type, ratio_level="sequence")
        close(loss, token_form, tol=1e-6)
        torch.testing.assert_close(torch.autograd.grad(loss, logp)[0], torch.autograd.grad(token_form, logp)[0])
    # log-probs where the mask is 0 (padding, a tool's output) change nothing
    noisy = logp.detach() + (1 - mask) * torch.randn(B, T)
    a = grpo_loss(logp.detach(), old, None, A, mask, ratio_level="sequence")[0]
    b = grpo_loss(noisy, old, None, A, mask, ratio_level="sequence")[0]
    assert a == b


def test_gspo_importance_weights_are_per_output_as_its_ratio():
    # --tis with GSPO: min(exp(mean over the sampled tokens of log(pi_old / pi_sampler)), C), one
    # weight per output on each of its tokens; an exact sampler gives 1 and the unweighted update
    torch.manual_seed(5)
    B, T = 4, 6
    old = -torch.rand(B, T) * 2
    mask = (torch.rand(B, T) > 0.3).float()
    mask[:, 0] = 1
    sampler = old + torch.randn(B, T) * 0.3 + (1 - mask) * 50  # wild where the mask is 0: ignored
    w = grpo.tis_weights(old, sampler, 2.0, mask)
    n = mask.sum(1)
    expected = torch.exp(((old - sampler) * mask).sum(1) / n).clamp(max=2.0)
    torch.testing.assert_close(w, expected[:, None].expand(B, T))
    exact = grpo.tis_weights(old, old.clone(), 2.0, mask)
    assert torch.equal(exact, torch.ones(B, T))
    A = torch.randn(B)
    logp = old.clone().requires_grad_()
    loss, _ = grpo_loss(logp, old, None, A, mask, 0.1, ratio_level="sequence", is_weights=w)
    plain, _ = grpo_loss(logp, old, None, A, mask, 0.1, ratio_level="sequence")
    g, g0 = (torch.autograd.grad(x, logp)[0] for x in (loss, plain))
    torch.testing.assert_close(g, g0 * w)


# --- CISPO ---

def test_cispo_against_a_plain_reference_values_and_gradients():
    # MiniMax-M1: -(1 / sum_i |o_i|) sum_i sum_t sg(min(rho, 1 + eps_high)) A_i log pi (no lower
    # bound), written here with Python loops over the tokens
    torch.manual_seed(6)
    B, T = 5, 6
    old = -torch.rand(B, T) * 2
    logp = (old + torch.randn(B, T) * 0.6).requires_grad_()  # ratios from ~0.4 to ~3.2
    A = torch.tensor([0.7, -0.3, 1.3, 1.7, -0.2])
    mask = (torch.arange(T)[None] < torch.tensor([6, 1, 3, 5, 2])[:, None]).float()
    for eps_high in (4.0, 0.28):
        total, n = 0.0, int(mask.sum())
        for i in range(B):
            for t in range(T):
                if mask[i, t]:
                    w = min(math.exp(logp[i, t].item() - old[i, t].item()), 1 + eps_high)
                    total = total + w * A[i].item() * logp[i, t]
        expected = -total / n
        loss, m = grpo_loss(logp, old, None, A, mask, math.inf, eps_high, loss_type="token",
                            policy_loss="cispo")
        close(loss, expected, tol=1e-6)
        g, = torch.autograd.grad(loss, logp)
        g_ref, = torch.autograd.grad(expected, logp)
        torch.testing.assert_close(g, g_ref)
        # every sampled token keeps a gradient, its weight capped: -min(rho, 1 + eps) A / n
        ratio = torch.exp(logp.detach() - old)
        torch.testing.assert_close(g, -(ratio.clamp(max=1 + eps_high) * A[:, None]) * mask / n)
        assert (g[mask.bool()] != 0).all()
    # where eq. 1's clip removes the gradient, CISPO keeps it
    loss, _ = grpo_loss(logp, old, None, A, mask, 0.2, 0.2, loss_type="token")
    g_clip, = torch.autograd.grad(loss, logp)
    assert (g_clip[mask.bool()] == 0).any()
    assert m["clip_low"] == 0 and m["clip_high"] > 0  # no lower bound; capped weights, A > 0


def test_cispo_at_ratio_one_is_reinforce_and_kl_still_acts():
    torch.manual_seed(7)
    logp = (-torch.rand(3, 4)).requires_grad_()
    ref = -torch.rand(3, 4)
    A, mask = torch.tensor([1.0, -0.5, 2.0]), torch.ones(3, 4)
    loss, _ = grpo_loss(logp, logp.detach(), ref, A, mask, math.inf, 4.0, beta=0.2, loss_type="token",
                        policy_loss="cispo")
    clip_loss, _ = grpo_loss(logp, logp.detach(), ref, A, mask, 0.2, beta=0.2, loss_type="token")
    torch.testing.assert_close(torch.autograd.grad(loss, logp)[0], torch.autograd.grad(clip_loss, logp)[0])


def test_objectives_that_do_not_exist_say_what_to_fix():
    args = (torch.zeros(1, 2), torch.zeros(1, 2), None, torch.zeros(1), torch.ones(1, 2))
    for kw, words in ((dict(policy_loss="cispo", ratio_level="sequence"), "CISPO has no clipped surrogate"),
                      (dict(policy_loss="cispo", dual_clip=3.0), "CISPO has no clipped surrogate"),
                      (dict(dual_clip=1.0), "dual_clip must be > 1"),
                      (dict(ratio_level="group"), "ratio_level must be one of"),
                      (dict(policy_loss="ppo"), "policy_loss must be one of")):
        with pytest.raises(ValueError, match=words):
            grpo_loss(*args, **kw)


# --- dual-clip ---

def test_dual_clip_against_its_definition():
    # ratios e^1.6 = 4.95 (beyond c = 3), e^.7 = 2.01 (clipped, under c), 1, e^-.5 = 0.61
    logp = torch.tensor([[1.6, 0.7, 0.0, -0.5]] * 2, requires_grad=True)
    old, A, mask = torch.zeros(2, 4), torch.tensor([-1.0, 1.0]), torch.ones(2, 4)
    rho = torch.exp(logp.detach())
    for c in (3.0, 1.5):
        loss, _ = grpo_loss(logp, old, None, A, mask, 0.2, dual_clip=c)
        per_token = torch.zeros(2, 4)
        for i in range(2):
            for t in range(4):
                a, r = A[i].item(), rho[i, t].item()
                v = min(r * a, min(max(r, 0.8), 1.2) * a)
                per_token[i, t] = max(v, c * a) if a < 0 else v
        close(loss, -per_token.mean(1).mean())
        g, = torch.autograd.grad(loss, logp)
        plain, = torch.autograd.grad(grpo_loss(logp, old, None, A, mask, 0.2)[0], logp)
        bounded = (A[:, None] < 0) & (rho * A[:, None] < c * A[:, None])  # rho A below c A
        assert bounded.any() and (g[bounded] == 0).all() and (plain[bounded] != 0).all()
        torch.testing.assert_close(g[~bounded], plain[~bounded])  # everything else as eq. 1
