"""Algorithm sanity on a one-step (bandit) dataset: IQL picks the good logged action, BC averages."""

import torch
from conftest import sampler


def bandit_data(iql, n=512, obs_dim=3):
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(n, obs_dim, generator=g)
    good = torch.arange(n) % 2 == 0
    actions = torch.where(good, 0.5, -0.5).unsqueeze(-1)  # half the logged actions good, half bad
    rewards = good.float()
    return iql.Batch(obs, actions, rewards, torch.zeros(n, obs_dim), torch.zeros(n))  # every step terminal


def train(iql, temperature, steps=300):
    torch.manual_seed(0)
    args = iql.Args(temperature=temperature, expectile=0.7, hidden_dim=64, tau=0.05)  # fast target for a short test
    data = bandit_data(iql)
    actor, critic, target_critic, value = iql.Actor(3, 1, 64), iql.TwinQ(3, 1, 64), iql.TwinQ(3, 1, 64), iql.Value(3, 64)
    target_critic.load_state_dict(critic.state_dict())
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (actor, critic, value)]
    sample = sampler(iql, data, 256)
    for _ in range(steps):
        metrics = iql.update(sample(), actor, critic, target_critic, value, *opts, args)
    return actor.act(data.observations).mean().item(), value(data.observations).mean().item(), metrics


def test_iql_picks_good_action_bc_stays_between(iql):
    iql_mean, v, metrics = train(iql, temperature=3.0)
    bc_mean, _, _ = train(iql, temperature=0.0)
    # Q(good) = 1, Q(bad) = 0, so the 0.7-expectile V is 0.7 and the weights are e^0.9 vs e^-2.1:
    # the weighted mean action is about (2.46 * 0.5 - 0.12 * 0.5) / 2.58 = 0.45.
    assert 0.55 < v < 0.8, v
    assert iql_mean > 0.35, iql_mean
    assert abs(bc_mean) < 0.1, bc_mean
    assert all(torch.isfinite(x) for x in metrics.values())
