"""The fast paths compute the same update as the plain eager one."""

import pytest
import torch
from conftest import sampler


DECAY_STEPS = 100


def networks_and_batch(iql, seed=0):
    """One member's networks (the locomotion values) and a flat batch of 32 transitions."""
    args = iql.Args(hidden_dim=64, expectile=[0.7], temperature=[3.0])
    nets = iql.make_networks(5, 2, args, "cpu", DECAY_STEPS, [iql.Member("", seed, 0.7, 3.0)])
    g = torch.Generator().manual_seed(seed)
    batch = iql.Batch(torch.randn(32, 5, generator=g), torch.rand(32, 2, generator=g) * 2 - 1,
                      torch.randn(32, generator=g), torch.randn(32, 5, generator=g),
                      (torch.rand(32, generator=g) > 0.2).float())
    return args, nets, batch


def run(update_fn, nets, batch, args, steps=2):
    for _ in range(steps):  # two steps, so that Adam's state and the schedule are exercised as well
        metrics = update_fn(iql_batch(batch), nets, args)
        nets.actor_schedule.step()
    return metrics


def iql_batch(batch):
    """The batch as the one member's: a leading member axis of 1."""
    return type(batch)(*(x[None] for x in batch))


def all_tensors(nets):
    actor, critic, target_critic, value, optimizers = nets[:5]
    tensors = {}
    for name, module in (("actor", actor), ("critic", critic), ("target_critic", target_critic), ("value", value)):
        tensors.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    for i, opt in enumerate(optimizers):
        for j, state in enumerate(opt.state.values()):
            tensors.update({f"opt{i}.{j}.{k}": v for k, v in state.items()})
    return tensors


def test_update_matches_a_plain_reference(iql):
    """One step against the algorithm written out with separate modules and torch.distributions."""
    args, nets, batch = networks_and_batch(iql, seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # a target that differs from the critic, so that the test tells which one each step reads
        for p in nets.target_critic.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    # The reference: plain networks of one member (no member axis), loaded with member 0's weights.
    actor, critic, target_critic, value = iql.Actor(5, 2, 64), iql.TwinQ(5, 2, 64), iql.TwinQ(5, 2, 64), \
        iql.Value(5, 64)
    for name, net in zip(("actor", "critic", "target_critic", "value"), (actor, critic, target_critic, value)):
        net.load_state_dict(iql.member_state(getattr(nets, name), 0))
    obs, actions, rewards, next_obs, masks = batch
    lr, expectile, temperature = args.learning_rate, args.expectile[0], args.temperature[0]

    def adam_step(module, loss):  # a fresh Adam's first step: p -= lr * g / (|g| + eps)
        grads = torch.autograd.grad(loss, list(module.parameters()), allow_unused=True)
        with torch.no_grad():
            for p, g in zip(module.parameters(), grads):
                if g is not None:
                    p -= lr * g / (g.abs() + 1e-8)

    q_targ = torch.minimum(*target_critic(obs, actions)).detach()
    u = q_targ - value(obs)
    adam_step(value, (torch.where(u < 0, 1 - expectile, expectile) * u**2).mean())
    v, v_next = value(obs).detach(), value(next_obs).detach()
    mean, log_std = actor(obs)
    dist = torch.distributions.Normal(mean, log_std.exp())
    w = torch.exp(temperature * (q_targ - v)).clamp(max=args.max_weight)
    adam_step(actor, -(w * dist.log_prob(actions).sum(-1)).mean())
    y = rewards + args.gamma * masks * v_next
    q1, q2 = critic(obs, actions)
    adam_step(critic, ((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean())
    with torch.no_grad():
        for pt, p in zip(target_critic.parameters(), critic.parameters()):
            pt.copy_(0.995 * pt + 0.005 * p)

    run(iql.update, nets, batch, args, steps=1)
    for name, ref in zip(("actor", "critic", "target_critic", "value"), (actor, critic, target_critic, value)):
        for (k, a), b in zip(iql.member_state(getattr(nets, name), 0).items(), ref.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}.{k}: {m}")


def test_cudagraphs_needs_cuda(iql):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(iql.UserError, match="--cudagraphs needs a CUDA device"):
        iql.check_args(iql.Args(cudagraphs=True))


@pytest.mark.parametrize("script", ["iql_continuous", "iql_finetune"])
def test_compiled_train_step_matches_eager(script):
    """The shipped --compile path (make_train_step: sampling and update compiled together) against eager, two steps.
    The update and make_train_step are copies of one code (test_copies.py), so they are compiled once for each
    sampler: sample_batch (the offline scripts) and the replay buffer (iql_finetune.py)."""
    import importlib

    import torch._inductor.config as inductor_config

    iql = importlib.import_module(script)
    data = iql.Batch(*networks_and_batch(iql)[2])
    before = {k: v.clone() for k, v in all_tensors(networks_and_batch(iql)[1]).items()}
    steps = {}
    for mode in (None, "compile"):
        args, nets, _ = networks_and_batch(iql)
        step = iql.make_train_step(sampler(iql, data, args.batch_size), nets, args, mode)
        torch.manual_seed(5)
        with inductor_config.patch(fallback_random=True):  # the compiled randint draws what eager draws
            for _ in range(2):
                metrics = step()
        steps[mode] = (all_tensors(nets), metrics, nets.optimizers[0].param_groups[0]["lr"].item())
    (plain, m_plain, lr_plain), (fast, m_fast, lr_fast) = steps[None], steps["compile"]
    assert plain.keys() == fast.keys() and len(plain) > 20
    for k in before:  # the update changed every trained parameter
        assert not torch.equal(before[k], plain[k]), k
    for k in plain:
        torch.testing.assert_close(fast[k], plain[k], rtol=1e-5, atol=1e-6, msg=k)
    for k in m_plain:
        torch.testing.assert_close(m_fast[k], m_plain[k], rtol=1e-5, atol=1e-6)
    assert lr_fast == lr_plain == pytest.approx(args.learning_rate * iql.cosine_decay(2, DECAY_STEPS))


def test_speed_benchmark_pairs_each_variant_with_its_own_baseline(tmp_path):
    """benchmarks/speed.py at its real shapes, two short rounds: every script's update runs, each ratio divides by
    the baseline timed around it, and the JSON holds what the table printed."""
    import json
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import speed

    out = tmp_path / "speed.json"
    speed.main(speed.Args(rounds=2, updates_per_round=2, dataset_steps=0, eval_episodes=0, out=str(out)))
    result = json.loads(out.read_text())["updates_per_s"]
    assert set(result) == {"baseline", "iql_continuous", "iql_antmaze", "iql_finetune"}
    assert len(result["baseline"]["rounds"]) == 2 * 3  # one pair of baseline timings around each variant, each round
    base = result["baseline"]["rounds"]  # in timing order: round 1's three pairs, then round 2's
    for i, name in enumerate(("iql_continuous", "iql_antmaze", "iql_finetune")):
        r = result[name]
        assert r["ratios"] == pytest.approx([r["rounds"][k] / base[3 * k + i] for k in range(2)])
        assert r["ratio"] == pytest.approx(sum(r["ratios"]) / 2)  # the median of two


def test_speed_benchmark_times_evaluation_against_the_same_env_steps():
    """The evaluation timing replays the policy's own actions with no policy (same seeds, same number of steps:
    a HalfCheetah episode is 1,000 steps), and its ratio is the median of the rounds' ratios."""
    import statistics
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import speed

    e = speed.time_evaluation(speed.Args(rounds=3, eval_episodes=2))
    assert e["vector_steps"] == 1000 and len(e["policy_rounds"]) == len(e["bare_env_rounds"]) == 3
    ratios = [p / b for p, b in zip(e["policy_rounds"], e["bare_env_rounds"])]
    assert e["ratio"] == pytest.approx(statistics.median(ratios))
    assert e["policy_seconds"] == pytest.approx(statistics.median(e["policy_rounds"]))


def test_speed_benchmark_times_a_population_against_one_member():
    """--population 1,2: the two-member update timed between one-member timings; its rate counts member-updates."""
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import speed

    args = speed.Args(rounds=2, updates_per_round=2, population="1,2")
    result = speed.time_population(args, speed.make_data("cpu"), "cpu")
    assert list(result) == ["N=2 vs N=1"]
    r = result["N=2 vs N=1"]
    assert r["member_updates_per_s"] > 0 and r["spread"][0] <= r["ratio"] <= r["spread"][1]
