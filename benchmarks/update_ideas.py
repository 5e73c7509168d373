"""Ideas for a faster CPU update, each timed against iql_continuous.py's own update, side by side.

    python benchmarks/update_ideas.py --threads 2
    python benchmarks/update_ideas.py --threads 2 --only one-backward,bare-adam --rounds 20

Each idea is iql_continuous.py's update with one thing changed (written out below), built from the
script's own networks, losses and sampler at the paper's shapes (batch 256, obs 17, act 6, 2x256): the shipped step
is the baseline of benchmarks/speed.py's rounds (baseline, idea, idea, baseline), and the median of the rounds'
ratios is reported. The ideas:
  - written-out: the shipped update as written out here, no change (a control: how far the written-out copy alone
    is from the script's own step);
  - three-adams: the update before the actor and the critics shared one backward and one Adam (commit 20bd83a):
    an Adam and a backward each for the value, the actor and the critics (the shipped update keeps the value step
    first, because both other steps read the new V);
  - bare-adam: each optimizer step calls the fused Adam kernel (`torch._fused_adam_`) on tensor lists gathered
    once, without `Optimizer.step()`'s per-call Python;
  - foreach-adam: `foreach=True` instead of `fused=True`;
  - compile: the script's own --compile step (losses compiled, optimizer steps eager);
  - compile-all: the written-out update compiled with the optimizer steps traced as well;
  - compile-max-autotune: the script's own --compile step, compiled with mode="max-autotune-no-cudagraphs"
    (Inductor's own CPU GEMM templates, benchmarked against the aten matmuls while compiling).
"""

import functools
import statistics
import sys
import time
import unittest.mock
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import iql_continuous as iql  # noqa: E402
import speed  # noqa: E402

IDEAS = ("written-out", "three-adams", "bare-adam", "foreach-adam", "compile", "compile-all", "compile-max-autotune")


@dataclass
class Args:
    threads: Optional[int] = 2
    """torch CPU threads (None: torch's default)"""
    only: Optional[str] = None
    """comma-separated ideas to time (None: all of IDEAS)"""
    rounds: int = 12
    """rounds (each: baseline, idea, idea, baseline)"""
    updates_per_round: int = 50
    """updates in each timing"""


class BareAdam(torch.optim.Adam):
    """torch's fused Adam, its step reduced to the kernel call on lists gathered at the first step (which runs the
    full step, creating the state)."""

    @torch.no_grad()
    def step(self):
        if not self.state:
            super().step()
            self.lists = []
            for group in self.param_groups:
                states = [self.state[p] for p in group["params"]]
                self.lists.append((group, group["params"], [s["exp_avg"] for s in states],
                                   [s["exp_avg_sq"] for s in states], [s["step"] for s in states]))
            return
        for group, params, exp_avgs, exp_avg_sqs, steps in self.lists:
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(params, [p.grad for p in params], exp_avgs, exp_avg_sqs, [], steps,
                               lr=float(group["lr"]), beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8,
                               amsgrad=False, maximize=False)


class Idea:
    """iql_continuous.py's update (steps 1-4 as in its update()), with the idea's change."""

    def __init__(self, name: str, data):
        self.args, self.one_backward = iql.Args(), name != "three-adams"
        nets = iql.make_networks(speed.OBS, speed.ACT, self.args, "cpu", 1_000_000, [iql.Member("", 1, 0.7, 3.0)])
        adam = BareAdam if "bare-adam" in name else torch.optim.Adam
        foreach = name == "foreach-adam"
        kw = {"foreach": True} if foreach else {"fused": True}
        lr = lambda: 3e-4 if foreach else torch.tensor(3e-4)  # noqa: E731  (a tensor per group, as the script's)
        if self.one_backward:
            groups = [{"params": nets.actor.parameters(), "lr": lr()}, {"params": nets.critic.parameters(), "lr": lr()}]
            self.opts = (adam(groups, **kw), adam(nets.value.parameters(), lr=lr(), **kw))
            decay = [lambda t: iql.cosine_decay(t, 1_000_000), lambda t: 1.0]
        else:
            self.opts = tuple(adam(m.parameters(), lr=lr(), **kw) for m in (nets.actor, nets.critic, nets.value))
            decay = lambda t: iql.cosine_decay(t, 1_000_000)  # noqa: E731
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.opts[0], decay)
        self.nets, self.batch = nets, iql.Batch(*data)
        self.opt_step = self.plain_step if name == "compile-all" else torch.compiler.disable(self.plain_step)
        self.fn = torch.compile(self.update) if name.startswith("compile") else self.update

    @staticmethod
    def plain_step(optimizer, loss):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def update(self):
        nets, args = self.nets, self.args
        obs, actions, rewards, next_obs, masks = iql.sample_batch(self.batch, args.batch_size, 1)
        with torch.no_grad():
            target_q = nets.target_critic(obs, actions).min(-2).values
        value_loss = iql.expectile_loss(target_q - nets.value(obs), nets.expectile)
        self.opt_step(self.opts[-1], value_loss.sum())
        with torch.no_grad():
            v, next_v = nets.value(torch.cat([obs, next_obs], -2)).chunk(2, -1)
        advantage = target_q - v
        log_prob = nets.actor.log_prob(obs, actions)
        actor_loss, weights = iql.awr_loss(log_prob, advantage, nets.temperature, args.max_weight)
        if not self.one_backward:
            self.opt_step(self.opts[0], actor_loss.sum())
        critic_loss = iql.q_loss(nets.critic(obs, actions), iql.td_target(rewards, masks, next_v, args.gamma))
        if self.one_backward:
            self.opt_step(self.opts[0], actor_loss.sum() + critic_loss.sum())
        else:
            self.opt_step(self.opts[1], critic_loss.sum())
        with torch.no_grad():
            torch._foreach_lerp_(list(nets.target_critic.parameters()), list(nets.critic.parameters()), args.tau)
        return {"losses/value_loss": value_loss.detach(), "losses/actor_loss": actor_loss.detach(),  # as update()
                "losses/q_loss": critic_loss.detach(), "charts/advantage_mean": advantage.mean(-1),
                "charts/weight_mean": weights.mean(-1)}

    def train(self):
        self.fn()
        self.schedule.step()


def main(args: Args):
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.only.split(",") if args.only else list(IDEAS)
    unknown = sorted(set(names) - set(IDEAS))
    if unknown:
        sys.exit(f"error: unknown idea(s) {', '.join(unknown)}; choose from {', '.join(IDEAS)}")
    data = speed.make_data("cpu")
    variants = {"baseline": speed.ScriptUpdate(iql, data, "cpu")}
    for name in names:
        if name == "compile":
            variants[name] = speed.ScriptUpdate(iql, data, "cpu", "compile")
        elif name == "compile-max-autotune":
            with unittest.mock.patch.object(torch, "compile", functools.partial(torch.compile,
                                                                                mode="max-autotune-no-cudagraphs")):
                variants[name] = speed.ScriptUpdate(iql, data, "cpu", "compile")
        else:
            variants[name] = Idea(name, data)
    t = time.time()
    rates, ratios = speed.time_updates(variants, speed.Args(rounds=args.rounds,
                                                            updates_per_round=args.updates_per_round))
    print(f"\n{speed.cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.rounds} rounds "
          f"of {args.updates_per_round} updates ({time.time() - t:.0f}s)\n\n| idea | updates/s | ratio to the shipped "
          "update (median, quartiles) |\n|---|---|---|")
    for name in variants:
        q1, q3, _, _ = speed.spread(ratios[name])
        print(f"| {name if name != 'baseline' else 'shipped update'} | {statistics.median(rates[name]):.0f} | "
              f"{statistics.median(ratios[name]):.3f} ({q1:.3f}-{q3:.3f}) |")


if __name__ == "__main__":
    main(tyro.cli(Args))
