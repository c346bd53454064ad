"""The PPO loss (trainer/loss.py) against values and gradients computed by hand, and the update step around it
(trainer/ppo.py PPO.learn). Each test names the mistake it guards against."""

import math

import pytest
import torch
from test_trainer import small_config

from experience import prio_beta, sample_segments
from trainer import Trainer
from trainer.loss import normalize, ppo_loss
from trainer.update_clip import UpdateClippedAdam, update_rms

COEFS = dict(clip_coef=0.2, vf_clip_coef=0.1, vf_coef=0.5, ent_coef=0.01)
HALF = 1 / math.sqrt(2)  # [s, -s] normalises to [s, -s] / sqrt(2): mean 0, standard deviation (unbiased) 1


def loss_of(new_log_prob, advantages, weights=None, values=None, old_values=None, returns=None, entropy=None,
            **coefs):
    n = len(new_log_prob)
    zeros = torch.zeros(n)
    return ppo_loss(new_log_prob, zeros, advantages, torch.ones(n) if weights is None else weights,
                    zeros if values is None else values, zeros if old_values is None else old_values,
                    zeros if returns is None else returns, zeros if entropy is None else entropy,
                    **{**COEFS, **coefs})


# --- the clipped surrogate --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("ratio", [0.5, 1.1, 1.5])  # below, inside and above the clip range [0.8, 1.2]
def test_clipped_surrogate_in_all_four_regions(sign, ratio):
    """Guards against min for max in the surrogate, keeping only the clipped (or only the unclipped) term, and
    a clip range applied around 0 instead of 1. Row 0 is the step under test; row 1 (ratio 1) balances the mean."""
    new_log_prob = torch.tensor([math.log(ratio), 0.0], requires_grad=True)
    out = loss_of(new_log_prob, torch.tensor([sign, -sign]), ent_coef=0.0, vf_coef=0.0)
    adv = sign * HALF
    clipped = min(max(ratio, 0.8), 1.2)
    # PPO takes the pessimistic term, the larger of -A r and -A clip(r); row 1 adds -(-A) * 1
    assert out.pg_loss.item() == pytest.approx((max(-adv * ratio, -adv * clipped) + adv) / 2, abs=1e-6)
    out.loss.backward()
    # where the clipped term is the larger it is flat in r: no gradient; elsewhere d(-A r / 2)/dlog r = -A r / 2
    zero_gradient_region = (adv > 0 and ratio > 1.2) or (adv < 0 and ratio < 0.8)
    expected = 0.0 if zero_gradient_region else -adv * ratio / 2
    assert new_log_prob.grad[0].item() == pytest.approx(expected, abs=1e-6)
    assert (new_log_prob.grad[0].item() == 0.0) == zero_gradient_region


def test_clipfrac_and_approx_kl_by_hand():
    """Guards against a clip fraction or KL estimate computed from the wrong quantity."""
    ratios = torch.tensor([0.5, 1.0, 1.1, 1.5])
    out = loss_of(ratios.log(), torch.tensor([1.0, -1.0, 2.0, 0.0]))
    assert out.clipfrac.item() == pytest.approx(0.5)  # 0.5 and 1.5 are outside [0.8, 1.2]
    kl = sum((r - 1) - math.log(r) for r in ratios.tolist()) / 4
    assert out.approx_kl.item() == pytest.approx(kl, rel=1e-5)
    assert out.ratio.tolist() == pytest.approx(ratios.tolist())


@pytest.mark.parametrize("ratio", [0.5, 1e-4])  # past the clip (0.8): the surrogate's gradient is 0 there
def test_the_kl_penalty_pulls_back_a_step_past_the_clip(ratio):
    """Guards against a penalty with the wrong sign, on the wrong quantity, or that only the clip range sees. With a
    negative advantage and the ratio below the clip the surrogate is flat; the penalty c · ((r − 1) − log r) adds
    c · (r − 1) / n to the gradient in log r, negative: gradient descent raises log r, back towards 1."""
    new_log_prob = torch.tensor([math.log(ratio), 0.0], requires_grad=True)
    off = loss_of(new_log_prob, torch.tensor([-1.0, 1.0]), ent_coef=0.0, vf_coef=0.0)
    on = loss_of(new_log_prob, torch.tensor([-1.0, 1.0]), ent_coef=0.0, vf_coef=0.0, kl_coef=2.0)
    kl = ((ratio - 1) - math.log(ratio)) / 2
    assert on.approx_kl.item() == off.approx_kl.item() == pytest.approx(kl, rel=1e-5)
    assert on.loss.item() == pytest.approx(off.loss.item() + 2.0 * kl, rel=1e-5)
    on.loss.backward()
    assert new_log_prob.grad[0].item() == pytest.approx(2.0 * (ratio - 1) / 2, rel=1e-5)
    assert new_log_prob.grad[0].item() < 0

def test_advantages_are_normalised_with_their_mean_removed_before_the_weights():
    """Guards against normalising without subtracting the mean, dividing by the wrong spread, or weighting before
    normalising."""
    advantages = torch.tensor([3.0, 5.0, 4.0, 8.0])
    norm = normalize(advantages)
    assert norm.mean().item() == pytest.approx(0, abs=1e-6) and norm.std().item() == pytest.approx(1, rel=1e-5)
    # at ratio 1 the surrogate is -mean(A_hat * w): all-positive advantages still give a zero mean
    assert loss_of(torch.zeros(4), advantages).pg_loss.item() == pytest.approx(0, abs=1e-6)
    weights = torch.tensor([1.0, 2.0, 0.5, 1.0])
    expected = -(norm * weights).mean().item()  # weights multiply the normalised advantages
    assert loss_of(torch.zeros(4), advantages, weights).pg_loss.item() == pytest.approx(expected, rel=1e-5)


def test_without_normalisation_the_surrogate_takes_the_advantages_as_computed():
    advantages, weights = torch.tensor([3.0, 5.0, 4.0, 8.0]), torch.tensor([1.0, 2.0, 0.5, 1.0])
    zeros = torch.zeros(4)
    out = ppo_loss(zeros, zeros, advantages, weights, zeros, zeros, zeros, zeros, **COEFS, norm_adv=False)
    assert out.pg_loss.item() == pytest.approx(-(advantages * weights).mean().item(), rel=1e-6)  # -5.0


def test_segment_weights_apply_to_every_step_of_their_segment():
    """Guards against the per-segment importance weights broadcasting along the wrong axis."""
    advantages = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 4.0]])
    weights = torch.tensor([2.0, 0.5])
    zeros = torch.zeros(2, 3)
    out = ppo_loss(zeros, zeros, advantages, weights, zeros, zeros, zeros, zeros, **COEFS)
    expected = -(normalize(advantages) * torch.tensor([[2.0] * 3, [0.5] * 3])).mean()
    assert out.pg_loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_step_on_advantages_that_favour_an_action_raises_its_log_prob():
    """Guards against a flipped sign of the policy loss (the step would lower the favoured action)."""
    logits = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.SGD([logits], lr=0.5)
    actions = torch.tensor([0, 1, 2, 0, 1, 2])
    advantages = torch.tensor([1.0, -0.5, -0.5, 1.0, -0.5, -0.5])  # action 0 did better
    new = torch.log_softmax(logits, 0)[actions]
    zeros = torch.zeros(6)
    ppo_loss(new, new.detach(), advantages, torch.ones(6), zeros, zeros, zeros, zeros, **COEFS).loss.backward()
    optimizer.step()
    assert torch.log_softmax(logits, 0)[0].item() > math.log(1 / 3)


# --- the value loss -------------------------------------------------------------------------------------------
def test_value_loss_gradient_reaches_the_critic_and_scales_with_its_weight():
    """Guards against a value loss detached from the critic, a dropped or doubled value weight, and a value term
    that is not zero at weight 0."""
    grads = {}
    for vf_coef in (0.0, 0.5, 1.0):
        values = torch.tensor([0.05, -0.02], requires_grad=True)  # inside the value clip range around 0
        out = loss_of(torch.zeros(2), torch.tensor([1.0, -1.0]), values=values, returns=torch.tensor([1.0, 0.5]),
                      vf_coef=vf_coef, ent_coef=0.0)
        out.loss.backward()
        grads[vf_coef] = values.grad.clone()
        # 0.5 * mean (V - R)^2: d/dV = (V - R) / 2 per row, times the weight
        assert out.v_loss.item() == pytest.approx(0.5 * ((0.05 - 1) ** 2 + (-0.02 - 0.5) ** 2) / 2, rel=1e-5)
    assert torch.equal(grads[0.0], torch.zeros(2))
    assert grads[1.0].tolist() == pytest.approx([(0.05 - 1) / 2, (-0.02 - 0.5) / 2], rel=1e-5)
    assert grads[0.5].tolist() == pytest.approx((grads[1.0] / 2).tolist(), rel=1e-6)


def test_clipped_value_loss_by_hand():
    """Guards against min for max in the value loss, a clip around 0 instead of the old value, and a missing 1/2.
    V_old = 0, V = 0.5, R = 1, clip 0.1: unclipped (0.5 - 1)^2 = 0.25, clipped (0.1 - 1)^2 = 0.81; the larger
    one is taken, and its gradient is 0 (the clipped value does not move with V)."""
    values = torch.tensor([0.5, 0.0], requires_grad=True)
    out = loss_of(torch.zeros(2), torch.tensor([1.0, -1.0]), values=values, old_values=torch.tensor([0.0, 0.0]),
                  returns=torch.tensor([1.0, 0.0]), vf_coef=1.0, ent_coef=0.0)
    assert out.v_loss.item() == pytest.approx(0.5 * (0.81 + 0.0) / 2, rel=1e-6)
    out.loss.backward()
    assert values.grad[0].item() == 0.0
    # old value 0.45 puts V inside the clip range: then the unclipped error trains it
    values = torch.tensor([0.5, 0.0], requires_grad=True)
    out = loss_of(torch.zeros(2), torch.tensor([1.0, -1.0]), values=values, old_values=torch.tensor([0.45, 0.0]),
                  returns=torch.tensor([1.0, 0.0]), vf_coef=1.0, ent_coef=0.0)
    out.loss.backward()
    assert values.grad[0].item() == pytest.approx((0.5 - 1) / 2, rel=1e-6)


# --- the entropy bonus ----------------------------------------------------------------------------------------
def test_the_entropy_term_alone_raises_entropy():
    """Guards against a flipped entropy sign (the bonus would sharpen the policy instead)."""
    logits = torch.tensor([2.0, 0.0, -1.0], requires_grad=True)
    optimizer = torch.optim.SGD([logits], lr=0.5)

    def entropy():
        p = torch.softmax(logits, 0)
        return -(p * p.log()).sum()

    before = entropy().item()
    zeros = torch.zeros(4)
    out = ppo_loss(zeros, zeros, zeros, torch.ones(4), zeros, zeros, zeros, entropy().expand(4),
                   clip_coef=0.2, vf_clip_coef=0.1, vf_coef=0.0, ent_coef=1.0)
    assert out.loss.item() == pytest.approx(-before, rel=1e-6)
    out.loss.backward()
    optimizer.step()
    assert entropy().item() > before


# --- the update around the loss (Trainer.learn) ---------------------------------------------------------------
def test_gradients_are_clipped_to_max_grad_norm_at_the_optimizer_step():
    """Guards against removing (or misplacing, after the step) the gradient-norm clip."""
    trainer = Trainer(small_config(max_grad_norm=1e-3))
    norms = []
    step = trainer.optimizer.step

    def step_and_measure(*args, **kwargs):
        grads = [p.grad for p in trainer.policy.parameters() if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        return step(*args, **kwargs)

    trainer.optimizer.step = step_and_measure
    trainer.rollout()
    metrics = trainer.learn()
    assert norms and max(norms) == pytest.approx(1e-3, rel=1e-3)
    assert metrics["grad_norm"] > 1e-2  # the logged norm is the one before clipping


def test_learn_trains_the_critic_only_through_the_weighted_value_loss():
    """Guards, at the trainer, against a value loss without gradient or a dropped value weight: the critic's
    output layer moves with vf_coef > 0 and stays put with vf_coef 0 (nothing else reaches it)."""
    moved = {}
    for vf_coef in (0.0, 0.44):
        trainer = Trainer(small_config(vf_coef=vf_coef))
        before = trainer.policy.critic[-1].weight.detach().clone()
        trainer.rollout()
        trainer.learn()
        moved[vf_coef] = not torch.equal(before, trainer.policy.critic[-1].weight)
    assert moved == {0.0: False, 0.44: True}


def test_prioritized_sampling_weights_reach_the_update(monkeypatch):
    """Guards against importance weights that are computed but never used: with prio_alpha > 0 the update differs
    from the same one with every weight forced to 1."""
    import trainer.ppo as ppo_module

    results = []
    for force_ones in (False, True):
        seen = []

        def sample(*args, _force=force_ones, **kwargs):
            index, weights = sample_segments(*args, **kwargs)
            seen.append(weights)
            return index, torch.ones_like(weights) if _force else weights

        monkeypatch.setattr(ppo_module, "sample_segments", sample)
        run = Trainer(small_config(prio_alpha=0.6, prio_beta0=0.4, update_epochs=2))
        run.rollout()
        assert all(math.isfinite(v) for v in run.learn().values())
        assert any((w - 1).abs().max() > 1e-3 for w in seen)  # at alpha 0.6 the weights are not all 1
        results.append(torch.cat([p.detach().flatten() for p in run.policy.parameters()]))
    assert not torch.equal(results[0], results[1])


def test_prio_beta_anneals_from_beta0_towards_1_at_the_rate_alpha():
    """Guards against swapped arguments or a mis-scaled anneal: beta = beta0 + (1 - beta0) alpha update / updates."""
    for beta0, alpha, update, updates, beta in ((0.4, 0.6, 5, 10, 0.58), (0.6, 0.5, 10, 10, 0.8),
                                                (0.2, 1.0, 3, 4, 0.8), (0.6, 0.0, 7, 10, 0.6)):
        assert prio_beta(beta0, alpha, update, updates) == pytest.approx(beta)


def test_the_trainers_importance_weights_are_the_formula_at_its_update():
    """Guards against prio_beta's arguments swapped at the trainer or beta not annealed by the update: each
    minibatch's weights are (N P_s)^-beta, P_s = (sum_t |A_s,t|)^alpha over its sum across the N segments, with beta
    at this update, and not divided by the largest weight (as Schaul et al.'s PER does)."""
    run = Trainer(small_config(prio_alpha=0.6, prio_beta0=0.4, device="cpu"))
    run.rollout()
    run.update = 2  # of 4: beta = 0.4 + 0.6 * 0.6 * 2 / 4 = 0.58
    ratio = torch.ones_like(run.buffer.data["values"])
    priority = [s ** 0.6 for s in run.advantages(ratio).abs().sum(1).tolist()]
    minibatches = list(run.minibatches(ratio))  # ratio untouched: every minibatch is drawn by these advantages
    assert minibatches
    for index, weights, _ in minibatches:
        expected = [(len(priority) * priority[i] / sum(priority)) ** -0.58 for i in index.tolist()]
        assert weights.tolist() == pytest.approx(expected, rel=1e-5)


def test_anneal_lr_decays_the_learning_rate_linearly_to_0_over_the_updates(tmp_path):
    """Guards against an anneal that never decays (update // updates for update / updates) or never reaches the
    optimizer: after k of the 4 updates every parameter group's learning rate is learning_rate (1 - k / 4)."""
    run = Trainer(small_config(anneal_lr=True, learning_rate=1e-3, device="cpu", log_dir=str(tmp_path)))
    assert run.num_updates == 4
    history = run.train(updates=2, quiet=True)
    assert [h["learning_rate"] for h in history] == pytest.approx([1e-3, 0.75e-3])
    for k in (1, 2, 3):
        run.update = k
        assert run.set_learning_rate(run.advantage_std()) == pytest.approx(1e-3 * (1 - k / 4))
        assert all(group["lr"] == pytest.approx(1e-3 * (1 - k / 4)) for group in run.optimizer.param_groups)


def test_lr_follows_advantages_scales_the_rate_by_the_spread_over_its_largest_so_far(tmp_path):
    """Guards against a factor turned upside down, a peak that never rises (or never stays) and a spread that is not
    the advantages': the rate is learning_rate times this update's spread over the largest so far, times the anneal."""
    run = Trainer(small_config(lr_follows_advantages=True, anneal_lr=True, learning_rate=1e-3, device="cpu",
                               log_dir=str(tmp_path)))
    history = run.train(updates=3, quiet=True)
    spreads = [h["advantage_std"] for h in history]
    assert len(set(spreads)) == 3  # else the test below could not tell the spread from its peak
    expected = [1e-3 * (1 - k / 4) * spreads[k] / max(spreads[:k + 1]) for k in range(3)]
    assert [h["learning_rate"] for h in history] == pytest.approx(expected, rel=1e-5)
    assert spreads[-1] == pytest.approx(run.advantages(torch.ones_like(run.vtrace_ratio)).std().item(), rel=1e-5)
    run.update = 0  # the anneal's factor 1: the spread's factor alone
    for spread, factor in [(1e9, 1.0), (0.5e9, 0.5), (2e9, 1.0), (1e9, 0.5)]:
        assert run.set_learning_rate(torch.tensor(spread)) == pytest.approx(1e-3 * factor)
        assert all(group["lr"] == pytest.approx(1e-3 * factor) for group in run.optimizer.param_groups)


def test_learn_raises_entropy_when_the_bonus_dominates():
    """Guards, at the trainer, against passing the entropy weight with the wrong sign: with a large bonus and a
    peaked policy, one update makes the policy less certain on the rollout it trained on."""
    run = Trainer(small_config(ent_coef=5.0, vf_coef=0.0))
    with torch.no_grad():
        run.policy.actor[-1].embeddings.weight.mul_(30)  # peaked logits: entropy well below its maximum

    def entropy():
        run.policy.reset_memory()
        with torch.no_grad():
            td = run.policy(run.buffer.data.select("env_obs", "actions", "dones", "truncateds").clone())
        return td["entropy"].mean().item()

    run.rollout()
    before = entropy()
    run.learn()
    assert entropy() > before + 0.01


def test_learn_moves_the_policy_less_with_a_kl_penalty():
    """Guards, at the trainer, against a KL weight that never reaches the loss (or reaches it with the wrong sign):
    from the same seed and rollout, one update with a heavy penalty ends nearer the acting policy than one without."""
    def moved(kl_coef):
        run = Trainer(small_config(kl_coef=kl_coef, learning_rate=1e-2))
        run.rollout()
        run.learn()
        data = run.buffer.data
        run.policy.reset_memory()  # small_config resets memory: each segment starts from zero state
        with torch.no_grad():
            new = run.policy(data.select("env_obs", "actions", "dones", "truncateds").clone())
        log_ratio = new["act_log_prob"] - data["act_log_prob"]
        return (log_ratio.exp() - 1 - log_ratio).mean().item()

    free, held = moved(0.0), moved(50.0)
    assert held < 0.8 * free, (free, held)  # unwired: equal, to the last bit; the wrong sign: further


# --- Adam's update clip (trainer/update_clip.py) -----------------------------------------------------------------
def adam_pair(lr=1e-2, eps=1e-12, max_rms=1.0):
    """Two copies of one parameter and an optimizer each: torch's Adam and the clipped one (float64: a step is
    compared with parameters that have moved far more than it)."""
    plain, clipped = (torch.nn.Parameter(torch.linspace(-1, 1, 6, dtype=torch.float64)) for _ in range(2))
    return (plain, torch.optim.Adam([plain], lr=lr, eps=eps, fused=True),
            clipped, UpdateClippedAdam([clipped], max_rms=max_rms, lr=lr, eps=eps, fused=True))


def step_both(pair, grad):
    for p, opt in ((pair[0], pair[1]), (pair[2], pair[3])):
        p.grad = grad.clone()
        opt.step()


def test_update_clip_leaves_steady_gradients_to_adam():
    """Guards against a clip that changes ordinary steps: a gradient as large as its history (here the same one each
    step, where g^2 / v is exactly 1) takes Adam's own step, to float rounding."""
    pair = adam_pair()
    grad = torch.tensor([0.3, -2.0, 1e-4, 0.0, 5.0, -0.01], dtype=torch.float64)
    for _ in range(20):
        step_both(pair, grad)
    torch.testing.assert_close(pair[2].detach(), pair[0].detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("max_rms", [1.0, 4.0, 100.0])
def test_update_clip_divides_a_spikes_step_by_the_rms_of_g2_over_v(max_rms):
    """Guards against the clip's formula (the bias correction, the mean over the tensor, the square root, the
    threshold) and its direction: after 3,000 quiet steps, a gradient 1000x larger moves Adam by about 3 learning
    rates per coordinate; the clipped step is Adam's divided by max(1, RMS / max_rms), the RMS of g^2 / v computed
    here by hand from Adam's own recursion (about 28: max_rms 100 lets the spike through)."""
    lr, beta2 = 1e-2, 0.999
    pair = adam_pair(lr=lr, max_rms=max_rms)
    quiet = torch.full((6,), 1e-3, dtype=torch.float64)
    spike = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    for _ in range(3000):
        step_both(pair, quiet)
    before_plain, before_clipped = pair[0].detach().clone(), pair[2].detach().clone()
    step_both(pair, spike)
    adam_step, clipped_step = pair[0].detach() - before_plain, pair[2].detach() - before_clipped
    v = torch.zeros(6, dtype=torch.float64)
    for g in [quiet] * 3000 + [spike]:
        v = beta2 * v + (1 - beta2) * g * g
    rms = (spike ** 2 / (v / (1 - beta2 ** 3001))).mean().sqrt()
    assert adam_step[:5].abs().min() > 2 * lr  # the spike Adam takes
    assert 20 < rms < 100
    expected = adam_step / (rms / max_rms).clamp_min(1)
    torch.testing.assert_close(clipped_step, expected, rtol=1e-5, atol=0)  # float32 step count's bias correction


def test_update_clip_steps_each_group_at_its_rate_and_leaves_params_without_gradients():
    """Guards against a clip that pairs a parameter with another's start or rate: two groups at different rates and a
    parameter without a gradient; each stepped tensor moves by its own Adam step over its own RMS, the third not."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, dtype=torch.float64)) for _ in range(3)]
    plain = [p.detach().clone().requires_grad_() for p in params]
    groups = lambda ps: [{"params": [ps[0]], "lr": 1e-2}, {"params": [ps[1], ps[2]], "lr": 3e-2}]  # noqa: E731
    clipped_opt = UpdateClippedAdam(groups(params), max_rms=1.0, eps=1e-12)
    plain_opt = torch.optim.Adam(groups(plain), eps=1e-12)
    quiet, spike = torch.full((4,), 1e-3, dtype=torch.float64), torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    for grad in [quiet] * 1000 + [spike]:
        starts, starts_plain = [p.detach().clone() for p in params], [p.detach().clone() for p in plain]
        for ps in (params, plain):
            ps[0].grad, ps[1].grad = grad.clone(), -grad.clone()
        clipped_opt.step()
        plain_opt.step()
    for i in (0, 1):
        state = clipped_opt.state[params[i]]
        rms = update_rms(params[i].grad, state["exp_avg_sq"], state["step"], 0.999, 1e-12)
        assert rms > 10
        torch.testing.assert_close(params[i].detach() - starts[i], (plain[i].detach() - starts_plain[i]) / rms,
                                   rtol=1e-5, atol=0)
    assert torch.equal(params[2].detach(), starts[2]) and params[2] not in clipped_opt.state


def test_update_clip_reaches_the_trainer():
    """Guards against an option that never reaches the optimizer: the trainer's Adam clips at the option's RMS (0:
    Adam's own step), and takes finite steps with it."""
    assert Trainer(small_config()).optimizer.max_rms == 0
    run = Trainer(small_config(adam_update_clip=2.0))
    assert run.optimizer.max_rms == 2.0
    before = [p.detach().clone() for p in run.policy.parameters()]
    run.rollout()
    run.learn()
    assert all(p.isfinite().all() for p in run.policy.parameters())
    assert any(not torch.equal(p, b) for p, b in zip(run.policy.parameters(), before))
