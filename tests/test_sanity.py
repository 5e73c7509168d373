"""Algorithm sanity on a one-step (bandit) dataset: IQL picks the good logged action, BC averages. The update is the
same copy in every script (test_copies.py), so it runs once, in iql_continuous.py; learning runs on real data are
in benchmarks/."""

import torch

import iql_continuous as iql


def bandit_data(n=512, obs_dim=3):
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(n, obs_dim, generator=g)
    good = torch.arange(n) % 2 == 0
    actions = torch.where(good, 0.5, -0.5).unsqueeze(-1)  # half the logged actions good, half bad
    rewards = good.float()
    return iql.Batch(obs, actions, rewards, torch.zeros(n, obs_dim), torch.zeros(n))  # every step terminal


def train(temperature, steps=150, hidden=32):
    torch.manual_seed(0)
    args = iql.Args(hidden_dim=hidden, tau=0.05, learning_rate=1e-3)  # a fast target: a short test
    nets = iql.make_networks(3, 1, args, "cpu", None, [iql.Member("", 0, 0.7, temperature)])
    data = bandit_data()
    for _ in range(steps):
        metrics = iql.update(iql.sample_batch(data, 256, 1), nets, args)
    return nets.actor.act(data.observations).mean().item(), nets.value(data.observations[None]).mean().item(), metrics


def test_iql_picks_good_action_bc_stays_between():
    iql_mean, v, metrics = train(temperature=3.0)
    bc_mean, _, _ = train(temperature=0.0)
    # Q(good) = 1, Q(bad) = 0, so the 0.7-expectile V is 0.7 and the weights are e^0.9 vs e^-2.1:
    # the weighted mean action is about (2.46 * 0.5 - 0.12 * 0.5) / 2.58 = 0.45.
    assert 0.55 < v < 0.8, v
    assert iql_mean > 0.35, iql_mean
    assert abs(bc_mean) < 0.1, bc_mean
    assert all(torch.isfinite(x) for x in metrics.values())
