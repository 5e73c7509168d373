"""The IQL losses and transforms against hand-computed numbers."""

import math

import pytest
import torch



def test_expectile_loss_hand_values(iql):
    # diff = q - v: positive residuals weigh `expectile`, negative ones `1 - expectile`.
    diff = torch.tensor([2.0, -1.0, 0.5, -3.0])
    # 0.8*4 + 0.2*1 + 0.8*0.25 + 0.2*9 = 3.2 + 0.2 + 0.2 + 1.8 = 5.4, mean 1.35
    assert iql.expectile_loss(diff, 0.8).item() == pytest.approx(1.35)
    assert iql.expectile_loss(torch.tensor([2.0]), 0.9).item() == pytest.approx(0.9 * 4)
    assert iql.expectile_loss(torch.tensor([-2.0]), 0.9).item() == pytest.approx(0.1 * 4)


def test_expectile_half_is_half_mse(iql):
    diff = torch.randn(100)
    assert iql.expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * diff.square().mean().item())


def test_expectile_regression_finds_expectile(iql):
    # Minimising the loss over a constant v gives the tau-expectile of the targets, above the mean for tau > 0.5.
    q = torch.tensor([0.0, 0.0, 0.0, 10.0])
    v = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([v], lr=0.5)
    for _ in range(500):
        opt.zero_grad()
        iql.expectile_loss(q - v, 0.9).backward()
        opt.step()
    # The 0.9-expectile solves 0.9 * (10 - v) = 0.1 * 3 * v  ->  v = 9 / 1.2 = 7.5
    assert v.item() == pytest.approx(7.5, abs=1e-3)


def test_awr_weights_clipped_and_without_gradient(iql):
    log_prob = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    advantage = torch.tensor([0.0, 1.0, 10.0], requires_grad=True)
    loss, weights = iql.awr_loss(log_prob, advantage, temperature=3.0, max_weight=100.0)
    expected_w = torch.tensor([1.0, math.exp(3.0), 100.0])  # exp(30) is clipped to 100
    torch.testing.assert_close(weights, expected_w)
    expected_loss = -(1.0 * -1.0 + math.exp(3.0) * -2.0 + 100.0 * -0.5) / 3
    assert loss.item() == pytest.approx(expected_loss, rel=1e-6)
    loss.backward()
    assert advantage.grad is None  # the weights are constants for the actor
    torch.testing.assert_close(log_prob.grad, -expected_w / 3)


def test_temperature_zero_is_behaviour_cloning(iql):
    log_prob = torch.tensor([-1.0, -3.0])
    loss, weights = iql.awr_loss(log_prob, torch.tensor([5.0, -5.0]), temperature=0.0, max_weight=100.0)
    assert torch.equal(weights, torch.ones(2))
    assert loss.item() == pytest.approx(2.0)  # -mean(log_prob)


def test_td_target_masks_terminals_only(iql):
    rewards = torch.tensor([1.0, 1.0, 1.0])
    next_v = torch.tensor([10.0, 10.0, 10.0])
    masks = torch.tensor([1.0, 0.0, 1.0])  # middle: terminal; last: truncated, still bootstraps
    torch.testing.assert_close(iql.td_target(rewards, masks, next_v, 0.99), torch.tensor([10.9, 1.0, 10.9]))


def test_q_loss_sums_twin_mses(iql):
    q = torch.tensor([[1.0, 2.0], [0.0, 4.0]])  # (2 critics, batch 2)
    target = torch.tensor([1.0, 1.0])
    # critic 1: (0 + 1) / 2 = 0.5; critic 2: (1 + 9) / 2 = 5.0
    assert iql.q_loss(q, target).item() == pytest.approx(5.5)


def test_gaussian_log_prob_matches_torch_distributions(iql):
    mean, log_std, a = torch.randn(5, 3), torch.randn(3), torch.randn(5, 3)
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(a).sum(-1)
    torch.testing.assert_close(iql.gaussian_log_prob(a, mean, log_std), ref)


def test_cosine_decay_ends_at_zero_and_stays(iql):
    assert iql.cosine_decay(0, 100) == 1.0
    assert iql.cosine_decay(50, 100) == pytest.approx(0.5)
    assert iql.cosine_decay(100, 100) == pytest.approx(0.0)
    assert iql.cosine_decay(150, 100) == pytest.approx(0.0)  # torch's CosineAnnealingLR would rise again


def test_actor_log_std_clamped_and_mean_tanh(iql):
    actor = iql.Actor(4, 2, 32)
    with torch.no_grad():
        actor.log_std.copy_(torch.tensor([-20.0, 5.0]))
        actor.net[-1].bias.fill_(100.0)
    mean, log_std = actor(torch.zeros(1, 4))
    torch.testing.assert_close(log_std, torch.tensor([-5.0, 2.0]))
    assert (mean <= 1).all() and (mean > 0.99).all()


def test_actor_mean_is_tanh_of_the_network_output(iql):
    """At moderate outputs, where tanh and a clamp to [-1, 1] differ (IK `policy.py` puts tanh on the mean)."""
    actor = iql.Actor(4, 3, 32)
    with torch.no_grad():
        actor.net[-1].weight.zero_()
        actor.net[-1].bias.copy_(torch.tensor([0.5, -0.8, 2.0]))
    mean, _ = actor(torch.randn(2, 4))
    # tanh(0.5) = 0.462117, tanh(-0.8) = -0.664037, tanh(2) = 0.964028; a clamp would give 0.5, -0.8, 1.0
    torch.testing.assert_close(mean, torch.tensor([[0.462117, -0.664037, 0.964028]] * 2), rtol=0, atol=1e-6)
    torch.testing.assert_close(actor.act(torch.randn(1, 4)), mean[:1])  # evaluation acts with the same mean


def test_twin_q_matches_two_separate_mlps(iql):
    critic = iql.TwinQ(5, 2, 16)
    obs, act = torch.randn(7, 5), torch.randn(7, 2)
    x = torch.cat([obs, act], -1)
    for k in range(2):
        h = x
        for i, (w, b) in enumerate(zip(critic.weights, critic.biases)):
            h = torch.nn.functional.linear(h, w[k].T, b[k, 0])
            h = torch.relu(h) if i < 2 else h
        torch.testing.assert_close(critic(obs, act)[k], h.squeeze(-1))
    # orthogonal init with gain sqrt(2): W^T W = 2 I on the first layer's smaller side (input 7 < 16)
    w0 = critic.weights[0][0]
    torch.testing.assert_close(w0 @ w0.T, 2 * torch.eye(7), atol=1e-5, rtol=0)
    assert torch.count_nonzero(critic.biases[0]) == 0


def test_output_layers_orthogonal_gain_sqrt2(iql):
    value, actor = iql.Value(5, 16), iql.Actor(5, 3, 16)
    w = value.net[-1].weight  # (16, 1), stored (in, out): one orthogonal column of norm sqrt(2)
    assert w.square().sum().item() == pytest.approx(2.0, rel=1e-5)
    w = actor.net[-1].weight  # (16, 3): orthonormal columns scaled by sqrt(2)
    torch.testing.assert_close(w.T @ w, 2 * torch.eye(3), atol=1e-5, rtol=0)
    assert torch.count_nonzero(actor.net[-1].bias) == 0 and torch.equal(actor.log_std, torch.zeros(3))
