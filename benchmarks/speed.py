"""Speed of the IQL scripts, measured in one process: updates/s, dataset loading, evaluation cost.

    python benchmarks/speed.py                 # CPU
    python benchmarks/speed.py --device cuda   # GPU (adds the CUDA-graph path)

1. Updates/s at the paper's shapes (batch 256, obs 17, act 6, 2x256 MLPs) of each script's own `update`,
   next to a plain-eager baseline written the way popular PyTorch IQL code is (two separate Q modules, numpy
   indices gathered per step, `.item()` per loss per step, a Python loop for the target update, an LR scheduler
   step). In each of several rounds, every variant is timed between two baseline timings of its own (baseline,
   variant, variant, baseline), so that the machine's drift cancels within the round; the median updates/s and
   the median of the rounds' ratios are reported.
2. The time to turn a 1M-step Minari dataset (HalfCheetah-v5 shapes; built once and cached under
   benchmarks/cache/) into device tensors with the script's own loader.
3. Evaluation cost: `eval_episodes` vectorised episodes with the policy versus the same vector-env steps (the
   policy's actions replayed) with no policy.
4. With `--population 1,4,8`: member-updates/s of iql_continuous.py's population update for each N, each timed
   between two N = 1 timings as above; with `--before old/iql_continuous.py` (a copy from before the member axis,
   e.g. `git show <commit>:iql_continuous.py`), N = 1 against that copy's update, side by side.

Prints a table and writes JSON (`--out`). Needs only what requirements.txt installs.
"""

import copy
import importlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SCRIPTS = [s for s in ("iql_continuous", "iql_antmaze", "iql_finetune") if (ROOT / f"{s}.py").exists()]


@dataclass
class Args:
    device: str = "cpu"
    """torch device to benchmark on (cpu, cuda)"""
    threads: Optional[int] = None
    """torch CPU threads (None: torch's default)"""
    only: Optional[str] = None
    """time only these variants (comma-separated names as in the table) next to the baseline; none: no update table"""
    rounds: int = 30
    """interleaved rounds per variant (and of the evaluation timing); medians are reported"""
    updates_per_round: int = 25
    """updates in each timing (a round times each variant twice and its baseline twice)"""
    compile: bool = False
    """also time `torch.compile` of each script's update (slow to compile on a small CPU)"""
    dataset_steps: int = 1_000_000
    """size of the dataset built for the loading benchmark (0 skips it)"""
    eval_episodes: int = 10
    """episodes in the evaluation benchmark (0 skips it)"""
    maze_episodes: int = 0
    """if > 0, time that many PointMaze U-maze episodes in a sync and an async vector env (random actions)"""
    population: str = ""
    """member counts N to time the population update at, comma-separated (e.g. 1,4,8); empty: skip"""
    before: Optional[str] = None
    """an older iql_continuous.py to time N = 1 against (with --population)"""
    out: str = "benchmarks/speed.json"
    """where the JSON results go"""


OBS, ACT, HIDDEN, BATCH, DATA = 17, 6, 256, 256, 100_000


# ----------------------------------------------------------------------------------------------
# The baseline: eager PyTorch IQL as popular ports write it (CORL-style structure and host syncs).
# ----------------------------------------------------------------------------------------------
def baseline_mlp(dims):
    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class BaselineTwinQ(nn.Module):
    def __init__(self):
        super().__init__()
        self.q1 = baseline_mlp([OBS + ACT, HIDDEN, HIDDEN, 1])
        self.q2 = baseline_mlp([OBS + ACT, HIDDEN, HIDDEN, 1])

    def both(self, s, a):
        sa = torch.cat([s, a], 1)
        return self.q1(sa).squeeze(-1), self.q2(sa).squeeze(-1)

    def forward(self, s, a):
        return torch.min(*self.both(s, a))


class BaselinePolicy(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = baseline_mlp([OBS, HIDDEN, HIDDEN, ACT])
        self.log_std = nn.Parameter(torch.zeros(ACT))

    def forward(self, s):
        # CORL and IQL-PyTorch build a MultivariateNormal with a diagonal scale_tril
        mean = torch.tanh(self.net(s))
        scale_tril = torch.diag(torch.exp(self.log_std.clamp(-5.0, 2.0)))
        return torch.distributions.MultivariateNormal(mean, scale_tril=scale_tril)


class Baseline:
    """One IQL step per `train()`: numpy indices, per-loss `.item()`, a Python Polyak loop, a scheduler step."""

    def __init__(self, data, device):
        self.data, self.device = data, device
        self.qf, self.vf = BaselineTwinQ().to(device), baseline_mlp([OBS, HIDDEN, HIDDEN, 1]).to(device)
        self.actor = BaselinePolicy().to(device)
        self.q_target = copy.deepcopy(self.qf).requires_grad_(False)
        self.q_opt = torch.optim.Adam(self.qf.parameters(), lr=3e-4)
        self.v_opt = torch.optim.Adam(self.vf.parameters(), lr=3e-4)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=3e-4)
        self.actor_sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_opt, 1_000_000)

    def train(self):
        idx = np.random.randint(0, len(self.data[0]), size=BATCH)
        s, a, r, s2, d = [x[idx] for x in self.data]
        log = {}
        with torch.no_grad():
            target_q = self.q_target(s, a)
            next_v = self.vf(s2).squeeze(-1)
        v = self.vf(s).squeeze(-1)
        adv = target_q - v
        v_loss = (torch.abs(0.7 - (adv < 0).float()) * adv**2).mean()
        log["value_loss"] = v_loss.item()
        self.v_opt.zero_grad()
        v_loss.backward()
        self.v_opt.step()
        targets = r + (1.0 - d) * 0.99 * next_v.detach()
        qs = self.qf.both(s, a)
        q_loss = sum(nn.functional.mse_loss(q, targets) for q in qs) / len(qs)
        log["q_loss"] = q_loss.item()
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        for tp, sp in zip(self.q_target.parameters(), self.qf.parameters()):
            tp.data.copy_((1 - 0.005) * tp.data + 0.005 * sp.data)
        exp_adv = torch.exp(3.0 * adv.detach()).clamp(max=100.0)
        bc_losses = -self.actor(s).log_prob(a)
        policy_loss = torch.mean(exp_adv * bc_losses)
        log["actor_loss"] = policy_loss.item()
        self.actor_opt.zero_grad()
        policy_loss.backward()
        self.actor_opt.step()
        self.actor_sched.step()
        return log


# ----------------------------------------------------------------------------------------------
# Each script's own update
# ----------------------------------------------------------------------------------------------
class ScriptUpdate:
    """A script's own train step (sample + update + schedule), built as its main() builds it: the offline
    scripts sample the dataset with a cosine actor LR; the fine-tuning one samples its replay buffer (the data
    plus as much room again) with constant rates."""

    def __init__(self, module, data, device, compile_mode: Optional[str] = None, members: int = 1):
        args, batch = module.Args(), module.Batch(*data)
        if not hasattr(module, "Member"):  # a copy from before the member axis (--before)
            args = module.Args(expectile=0.7, temperature=3.0)
            nets = module.make_networks(OBS, ACT, args, device, lr_decay_steps=1_000_000)
            self.train = module.make_train_step(lambda: module.sample_batch(batch, args.batch_size), nets, args)
            return
        if hasattr(module, "ReplayBuffer"):
            buffer = module.ReplayBuffer(batch, 2 * DATA, device)
            sample, decay_steps = (lambda: buffer.sample(args.batch_size)), None
        else:
            sample, decay_steps = (lambda: module.sample_batch(batch, args.batch_size, members)), 1_000_000
        population = [module.Member(str(i), 1 + i, 0.7, 3.0) for i in range(members)]  # the locomotion values
        nets = module.make_networks(OBS, ACT, args, device, decay_steps, population)
        self.train = module.make_train_step(sample, nets, args, compile_mode)


def make_data(device):
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(DATA, OBS, generator=g), torch.rand(DATA, ACT, generator=g) * 2 - 1,
            torch.randn(DATA, generator=g), torch.randn(DATA, OBS, generator=g), torch.zeros(DATA)]
    return [x.to(device) for x in data]


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def spread(ratios: list) -> list:
    """[first quartile, third quartile, min, max] of the rounds' ratios (quartiles as statistics.quantiles)."""
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return [q1, q3, min(ratios), max(ratios)]


def time_updates(variants: dict, args: Args) -> tuple[dict, dict]:
    """In each round, every variant is timed between two baseline timings of its own (baseline, variant, variant,
    baseline), so that the machine's drift, which is large on a small shared VM, cancels in the ratio. Returns
    ({name: [updates/s per round]}, {name: [variant / its baseline per round]}); a round's rate is that of its two
    timings together."""

    def seconds(v) -> float:
        sync(args.device)
        t = time.perf_counter()
        for _ in range(args.updates_per_round):
            v.train()
        sync(args.device)
        return time.perf_counter() - t

    for v in variants.values():  # warm-up (and compilation / graph capture)
        for _ in range(20):
            v.train()
        sync(args.device)
    baseline, others = variants["baseline"], {n: v for n, v in variants.items() if n != "baseline"}
    rates, ratios = {name: [] for name in variants}, {name: [] for name in variants}
    for r in range(args.rounds):
        for name, v in others.items():
            base = seconds(baseline)
            mine = seconds(v) + seconds(v)
            base += seconds(baseline)
            rates["baseline"].append(2 * args.updates_per_round / base)
            rates[name].append(2 * args.updates_per_round / mine)
            ratios[name].append(base / mine)
        ratios["baseline"].append(1.0)
        print(f"  round {r + 1}/{args.rounds}: baseline {statistics.median(rates['baseline'][-len(others):]):.0f}/s, "
              + ", ".join(f"{n} {rates[n][-1]:.0f}/s ({ratios[n][-1]:.2f}x)" for n in others), flush=True)
    return rates, ratios


def time_population(args: Args, data, device) -> dict:
    """Member-updates/s of iql_continuous.py's population update: each N timed between two N = 1 timings (ratio =
    member-updates/s over N = 1's), and N = 1 between two timings of the --before copy."""
    module = importlib.import_module("iql_continuous")
    counts = [int(n) for n in args.population.split(",")]
    results = {}
    if args.before:
        spec = importlib.util.spec_from_file_location("iql_before", args.before)
        before = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(before)
        print(f"population: N = 1 against {args.before}")
        rates, ratios = time_updates({"baseline": ScriptUpdate(before, data, device),
                                      "N=1": ScriptUpdate(module, data, device)}, args)
        results["N=1 vs --before"] = {"member_updates_per_s": statistics.median(rates["N=1"]),
                                      "ratio": statistics.median(ratios["N=1"]), "spread": spread(ratios["N=1"])}
    others = {f"N={n}": ScriptUpdate(module, data, device, members=n) for n in counts if n > 1}
    if others:
        print(f"population: N = {', '.join(map(str, counts))} against N = 1")
        variants = {"baseline": ScriptUpdate(module, data, device), **others}
        rates, ratios = time_updates(variants, args)
        for name in others:
            n = int(name[2:])
            results[f"{name} vs N=1"] = {"member_updates_per_s": n * statistics.median(rates[name]),
                                         "ratio": n * statistics.median(ratios[name]),
                                         "spread": [n * x for x in spread(ratios[name])]}
    return results


# ----------------------------------------------------------------------------------------------
# Dataset loading and evaluation
# ----------------------------------------------------------------------------------------------
def build_cached_dataset(steps: int) -> str:
    """A HalfCheetah-v5-shaped Minari dataset of `steps` transitions (1000-step episodes), built once."""
    import minari
    from minari.data_collector import EpisodeBuffer

    os.environ["MINARI_DATASETS_PATH"] = str(ROOT / "benchmarks" / "cache")
    dataset_id = f"bench/halfcheetah/random-{steps}-v0"
    if (ROOT / "benchmarks" / "cache" / dataset_id / "data").is_dir():
        return dataset_id
    import gymnasium as gym

    print(f"building {dataset_id} (once) ...", flush=True)
    env = gym.make("HalfCheetah-v5")
    rng = np.random.default_rng(0)
    buffers = []
    for _ in range(steps // 1000):
        buffers.append(EpisodeBuffer(
            observations=rng.standard_normal((1001, OBS)), actions=rng.uniform(-1, 1, (1000, ACT)).astype(np.float32),
            rewards=rng.standard_normal(1000), terminations=np.zeros(1000, bool),
            truncations=np.eye(1000, dtype=bool)[-1]))
    minari.create_dataset_from_buffers(dataset_id, buffers, env=env, algorithm_name="random", author="benchmark",
                                       author_email="-", code_permalink="benchmarks/speed.py",
                                       description="random arrays with HalfCheetah-v5 shapes, for load timing")
    return dataset_id


def time_dataset(args: Args) -> dict:
    m = importlib.import_module(SCRIPTS[0])
    dataset_id = build_cached_dataset(args.dataset_steps)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        data, _, _ = m.load_data(m.Args(env_id=dataset_id), torch.device(args.device))
        sync(args.device)
        times.append(time.perf_counter() - t)
    return {"transitions": len(data.rewards), "seconds": min(times), "all_seconds": times}


class RecordingActor:
    """Acts like the actor and keeps every batch of actions it returns."""

    def __init__(self, actor):
        self.actor, self.actions = actor, []

    def eval(self):
        self.actor.eval()

    def train(self):
        self.actor.train()

    def act(self, obs):
        action = self.actor.act(obs)
        self.actions.append(action.cpu().numpy())
        return action


def time_evaluation(args: Args) -> dict:
    """The script's vectorised evaluation, and the same env steps (same seeds, the policy's actions replayed) with
    no policy: the difference is the cost of acting. In `rounds` rounds, alternating which of the two goes first;
    the ratio is the median of the rounds' ratios."""
    import gymnasium as gym

    m = importlib.import_module(SCRIPTS[0])
    spec = gym.make("HalfCheetah-v5").spec
    envs = m.make_eval_envs(spec, args.eval_episodes)
    recorder = RecordingActor(m.Actor(OBS, ACT, HIDDEN).to(args.device))
    seeds = list(range(args.eval_episodes))
    m.evaluate(recorder, envs, seeds, args.device)  # warm-up; records the actions (the same in every round)
    actor, actions = recorder.actor, recorder.actions

    def with_policy() -> float:
        t = time.perf_counter()
        m.evaluate(actor, envs, seeds, args.device)
        return time.perf_counter() - t

    def bare() -> float:
        envs.reset(seed=seeds)
        t = time.perf_counter()
        for action in actions:
            envs.step(action)
        return time.perf_counter() - t

    t_policy, t_bare = [], []
    for r in range(args.rounds):
        if r % 2 == 0:
            t_policy.append(with_policy())
            t_bare.append(bare())
        else:
            t_bare.append(bare())
            t_policy.append(with_policy())
    envs.close()
    return {"episodes": args.eval_episodes, "vector_steps": len(actions), "policy_seconds": statistics.median(t_policy),
            "bare_env_seconds": statistics.median(t_bare), "policy_rounds": t_policy, "bare_env_rounds": t_bare,
            "ratio": statistics.median(p / b for p, b in zip(t_policy, t_bare))}


def time_maze_vector_envs(args: Args) -> dict:
    """Sync versus async vector env for maze evaluation: building the envs, then one full episode each."""
    import gymnasium as gym
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    results = {"episodes": args.maze_episodes}
    for mode in ("sync", "async"):
        t = time.perf_counter()
        envs = gym.make_vec("PointMaze_UMaze-v3", num_envs=args.maze_episodes, vectorization_mode=mode,
                            continuing_task=False, max_episode_steps=300)
        t_make = time.perf_counter() - t
        envs.action_space.seed(0)
        envs.reset(seed=list(range(args.maze_episodes)))
        done = np.zeros(args.maze_episodes, dtype=bool)
        t = time.perf_counter()
        while not done.all():
            _, _, terminated, truncated, _ = envs.step(envs.action_space.sample())
            done |= terminated | truncated
        results[mode] = {"make_seconds": t_make, "episode_seconds": time.perf_counter() - t}
        envs.close()
    return results


def cpu_model() -> str:
    """The CPU's model name and its widest vector extension, from /proc/cpuinfo where there is one."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    vector = next((v for v in ("avx512f", "avx2", "avx") if v in flags), "no AVX")
    return f"{name} ({vector})"


def main(args: Args):
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    device = args.device
    results = {"date": time.strftime("%Y-%m-%d"), "device": device, "torch": torch.__version__,
               "threads": torch.get_num_threads(), "cpu": cpu_model(), "cpu_count": os.cpu_count()}
    if torch.device(device).type == "cuda":
        results["gpu"] = torch.cuda.get_device_name()

    print(f"updates/s, batch {BATCH}, obs {OBS}, act {ACT}, {HIDDEN}x{HIDDEN} MLPs, device {device}, "
          f"{torch.get_num_threads()} threads")
    data = make_data(device)
    variants = {"baseline": Baseline(data, device)}
    for name in SCRIPTS:
        module = importlib.import_module(name)
        variants[name] = ScriptUpdate(module, data, device)
        if args.compile:
            variants[f"{name} --compile"] = ScriptUpdate(module, data, device, "compile")
        if torch.device(device).type == "cuda":
            variants[f"{name} --cudagraphs"] = ScriptUpdate(module, data, device, "cudagraphs")
            if args.compile:
                variants[f"{name} --compile --cudagraphs"] = ScriptUpdate(module, data, device, "compile+cudagraphs")
    if args.only:
        variants = {n: v for n, v in variants.items() if n == "baseline" or n in args.only.split(",")}
    if len(variants) > 1:  # --only none: no update table
        rates, ratios = time_updates(variants, args)
        # The ratio is the median over rounds of (variant / the baseline timed around it): drift in the machine's
        # speed cancels. The baseline's rounds are all its pairs of timings (one pair around each variant).
        results["updates_per_s"] = {n: {"median": statistics.median(r), "rounds": r, "ratios": ratios[n],
                                        "ratio": statistics.median(ratios[n]), "spread": spread(ratios[n])}
                                    for n, r in rates.items()}

    if args.population:
        results["population"] = time_population(args, data, device)
    if args.dataset_steps:
        results["dataset"] = time_dataset(args)
    if args.eval_episodes:
        results["evaluation"] = time_evaluation(args)
    if args.maze_episodes:
        results["maze_vector_envs"] = time_maze_vector_envs(args)

    if "updates_per_s" in results:
        print(f"\n| variant | updates/s (median of {args.rounds} rounds) | x baseline (median of the {args.rounds} "
              "rounds' ratios to the baseline timed around it) | rounds' ratios: quartiles, min-max |")
        print("|---|---|---|---|")
        for n, r in results["updates_per_s"].items():
            q1, q3, low, high = r["spread"]
            print(f"| {n} | {r['median']:.0f} | {r['ratio']:.2f} | "
                  + ("" if n == "baseline" else f"{q1:.2f}-{q3:.2f}, {low:.2f}-{high:.2f}") + " |")
    if "population" in results:
        print("\n| population | member-updates/s (median) | x the reference timed around it (median) | quartiles |")
        print("|---|---|---|---|")
        for n, r in results["population"].items():
            q1, q3 = r["spread"][:2]
            print(f"| {n} | {r['member_updates_per_s']:.0f} | {r['ratio']:.2f} | {q1:.2f}-{q3:.2f} |")
    if "dataset" in results:
        d = results["dataset"]
        print(f"\ndataset: {d['transitions']:,} transitions to {device} tensors in {d['seconds']:.2f} s (best of 3)")
    if "evaluation" in results:
        e = results["evaluation"]
        print(f"evaluation: {e['episodes']} episodes x {e['vector_steps']} steps: {e['policy_seconds']:.2f} s with the "
              f"policy, {e['bare_env_seconds']:.2f} s bare env stepping ({e['ratio']:.2f}x)")
    if "maze_vector_envs" in results:
        r = results["maze_vector_envs"]
        print(f"maze vector env, {r['episodes']} PointMaze episodes: " + ", ".join(
            f"{m} {r[m]['episode_seconds']:.1f} s (+ {r[m]['make_seconds']:.1f} s to build)"
            for m in ("sync", "async")))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
