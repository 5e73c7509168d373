"""Build the local offline datasets from the environments themselves, in Minari's format, with no network.

    python benchmarks/make_datasets.py                            # into MINARI_DATASETS_PATH (~/.minari/datasets)
    python benchmarks/make_datasets.py --quick --out /tmp/quick   # a small smoke build under quick/* ids

- `local/hopper/medium-replay-v1` (D4RL's medium-replay recipe): every transition of one SAC run from scratch on
  Hopper-v5, 10,000 random steps first, up to the first evaluation (every 5,000 steps, 5 episodes of the
  deterministic policy) whose mean return reaches 1,200; at most 300,000 steps.
- `local/hopper/medium-v1` (D4RL's medium recipe): rollouts of that final policy with its stochastic actions.
- `local/pointmaze/umaze-v1`: a noisy PD controller walks PointMaze_UMaze-v3 from cell to cell, most of its moves
  heading for the bottom-left end of the U (a decoy); the sparse reward pays at the fixed goal, the top-left end. The
  evaluation env starts in the bottom-right corner, 4 cells from the goal along the U, and ends an episode at the
  goal (continuing_task=False).

Each dataset carries ref_min_score / ref_max_score (D4RL's Hopper constants; 0 / 1 for the maze), loads with
`minari.load_dataset` and gives its evaluation env with `recover_environment(eval_env=True)`. A dataset that exists is
skipped (`--force` rebuilds it). The build is seeded, but identical only on one machine: MuJoCo and torch round
differently on other CPUs, and a SAC run amplifies that. On the 2-core AMD EPYC VM (2026-12-01) SAC read 1,271.1 at
step 95,000, the three datasets hold 95,000, 200,000 and 100,200 transitions, and the build took about 28 minutes
(benchmarks/RESULTS.md gives the files' checksums).
"""

import contextlib
import io
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import tyro

with contextlib.redirect_stderr(io.StringIO()):  # hush a notice about Adroit reward versions printed on import
    import gymnasium_robotics
gym.register_envs(gymnasium_robotics)


@dataclass
class Args:
    """Build the local Hopper and PointMaze datasets (Minari format) from the environments, with no network."""

    out: Optional[str] = None
    """the Minari datasets folder to write into (default: MINARI_DATASETS_PATH, else ~/.minari/datasets)"""
    seed: int = 3
    """seed of the SAC run and its rollouts (3: with seeds 1 and 2 SAC stayed at returns of 230-370 for 60,000 steps
    and more, and its replay was mostly that one gait; benchmarks/RESULTS.md)"""
    maze_seed: int = 1
    """seed of the maze walks"""
    force: bool = False
    """if toggled, rebuild datasets that already exist"""
    only: Optional[Literal["hopper", "pointmaze"]] = None
    """build only the two Hopper datasets (one SAC run, most of the time) or only the maze (seconds)"""
    quick: bool = False
    """if toggled, a smoke build of 1,000 to 2,000 transitions each under quick/* ids, with no return threshold
    (needs --out)"""
    target_return: float = 1200.0
    """medium-replay ends at the first evaluation whose mean return reaches this"""
    max_steps: int = 300_000
    """medium-replay ends here at the latest, whether or not the target was reached"""
    medium_steps: int = 200_000
    """transitions of the medium dataset"""
    maze_episodes: int = 334
    """300-step episodes of the maze dataset"""
    decoy: float = 0.5
    """chance that the maze walk's next cell is the one toward the decoy end (else a random neighbour, which may be
    that one too)"""
    threads: Optional[int] = None
    """torch CPU threads (None: torch's default)"""


HOPPER_REF = (-20.272305, 3234.3)  # D4RL's hopper reference returns (d4rl/infos.py)
U_MAZE = [[1, 1, 1, 1, 1], [1, "g", 0, 0, 1], [1, 1, 1, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]]  # goal at (1, 1)
U_MAZE_EVAL = [[1, 1, 1, 1, 1], [1, "g", 0, 0, 1], [1, 1, 1, 0, 1], [1, 0, 0, "r", 1], [1, 1, 1, 1, 1]]
DECOY = (3, 1)  # the bottom-left end of the U


# ---- SAC (Haarnoja et al. 2018), the usual settings: 2x256 networks, Adam 3e-4, batch 256, learned temperature ----
def mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, out_dim))


class SquashedGaussian(nn.Module):
    """tanh of a Gaussian whose log-std is squashed into [-5, 2]."""

    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        self.net = mlp(obs_dim, 2 * act_dim)

    def forward(self, obs: torch.Tensor, deterministic: bool = False):
        mean, log_std = self.net(obs).chunk(2, -1)
        log_std = -5 + 3.5 * (torch.tanh(log_std) + 1)
        u = mean if deterministic else mean + log_std.exp() * torch.randn_like(mean)
        log_prob = (-0.5 * ((u - mean) / log_std.exp()).square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return torch.tanh(u), log_prob - (2 * (math.log(2) - u - nn.functional.softplus(-2 * u))).sum(-1)


class SAC:
    def __init__(self, obs_dim: int, act_dim: int, capacity: int):
        self.actor = SquashedGaussian(obs_dim, act_dim)
        self.q = nn.ModuleList([mlp(obs_dim + act_dim, 1) for _ in range(2)])
        self.q_target = nn.ModuleList([mlp(obs_dim + act_dim, 1) for _ in range(2)])
        self.q_target.load_state_dict(self.q.state_dict())
        self.log_alpha = torch.zeros(1, requires_grad=True)
        self.target_entropy = -act_dim
        params = (self.actor.parameters(), self.q.parameters(), [self.log_alpha])
        self.opts = [torch.optim.Adam(p, lr=3e-4) for p in params]
        self.buffer = {k: torch.zeros(capacity, d) for k, d in (("obs", obs_dim), ("act", act_dim), ("rew", 1),
                                                                ("next_obs", obs_dim), ("mask", 1))}
        self.size = 0

    def add(self, obs, action, reward, next_obs, terminated):
        for k, x in zip(self.buffer, (obs, action, reward, next_obs, 1.0 - terminated)):
            self.buffer[k][self.size] = torch.as_tensor(np.asarray(x, dtype=np.float32))
        self.size += 1

    @torch.no_grad()
    def act(self, obs, deterministic: bool = False) -> np.ndarray:
        return self.actor(torch.as_tensor(obs, dtype=torch.float32), deterministic)[0].numpy()

    def update(self, batch_size: int = 256, gamma: float = 0.99, tau: float = 0.005):
        idx = torch.randint(self.size, (batch_size,))
        obs, act, rew, next_obs, mask = (x[idx] for x in self.buffer.values())
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_act, next_logp = self.actor(next_obs)
            x = torch.cat([next_obs, next_act], -1)
            next_q = torch.min(self.q_target[0](x), self.q_target[1](x)).squeeze(-1) - alpha * next_logp
            target = rew.squeeze(-1) + gamma * mask.squeeze(-1) * next_q
        x = torch.cat([obs, act], -1)
        q_loss = sum((q(x).squeeze(-1) - target).square().mean() for q in self.q)
        self.step(1, q_loss)
        new_act, logp = self.actor(obs)
        x = torch.cat([obs, new_act], -1)
        actor_loss = (alpha * logp - torch.min(self.q[0](x), self.q[1](x)).squeeze(-1)).mean()
        self.step(0, actor_loss)
        self.step(2, -(self.log_alpha * (logp.detach() + self.target_entropy)).mean())
        with torch.no_grad():
            for p_target, p in zip(self.q_target.parameters(), self.q.parameters()):
                p_target.lerp_(p, tau)

    def step(self, i: int, loss: torch.Tensor):
        self.opts[i].zero_grad()
        loss.backward()
        self.opts[i].step()


# ---- Episodes -> Minari ----------------------------------------------------------------------------------------------
class Episodes:
    """Transitions gathered into Minari episode buffers; the episode in progress is cut (as truncated) at the end."""

    def __init__(self, first_obs):
        self.done, self.current = [], self.fresh(first_obs)

    @staticmethod
    def fresh(obs):
        return {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}

    def add(self, action, reward, next_obs, terminated: bool, truncated: bool, reset_obs=None):
        for k, x in (("observations", next_obs), ("actions", action), ("rewards", reward),
                     ("terminations", terminated), ("truncations", truncated)):
            self.current[k].append(x)
        if terminated or truncated:
            self.done.append(self.current)
            self.current = self.fresh(reset_obs)

    def buffers(self) -> list:
        from minari.data_collector import EpisodeBuffer

        episodes = self.done + ([self.current] if self.current["actions"] else [])
        if episodes[-1]["truncations"] and not (episodes[-1]["terminations"][-1] or episodes[-1]["truncations"][-1]):
            episodes[-1]["truncations"][-1] = True  # cut here: the next observation is real, so it bootstraps
        def stack(xs):  # Minari keeps an episode's dict observations as a dict of arrays
            return {k: np.stack([x[k] for x in xs]) for k in xs[0]} if isinstance(xs[0], dict) else np.stack(xs)

        return [EpisodeBuffer(observations=stack(e["observations"]), actions=np.stack(e["actions"]).astype(np.float32),
                              rewards=np.asarray(e["rewards"]), terminations=np.asarray(e["terminations"]),
                              truncations=np.asarray(e["truncations"])) for e in episodes]


def write(dataset_id: str, episodes: Episodes, env, eval_env, algorithm: str, description: str, ref: tuple):
    import minari

    buffers = episodes.buffers()
    shutil.rmtree(Path(os.environ["MINARI_DATASETS_PATH"]) / dataset_id, ignore_errors=True)  # --force: only now
    minari.create_dataset_from_buffers(dataset_id, buffers, env=env, eval_env=eval_env, algorithm_name=algorithm,
                                       author="benchmarks/make_datasets.py", author_email="-",
                                       code_permalink="benchmarks/make_datasets.py", description=description,
                                       ref_min_score=ref[0], ref_max_score=ref[1])
    print(f"  wrote {dataset_id}: {sum(len(b.rewards) for b in buffers):,} transitions, {len(buffers)} episodes")


# ---- The three datasets ----------------------------------------------------------------------------------------------
def evaluate(agent: SAC, seed: int, episodes: int = 5) -> float:
    env, total = gym.make("Hopper-v5"), 0.0
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs, deterministic=True))
            total, done = total + reward, terminated or truncated
    env.close()
    return total / episodes


def hopper_sac(args: Args, random_steps: int, eval_every: int, max_steps: int, target: Optional[float]):
    """One SAC run; returns (every transition as Episodes, the agent, the last evaluation, steps, target reached)."""
    env = gym.make("Hopper-v5")
    env.action_space.seed(args.seed)
    obs, _ = env.reset(seed=args.seed)
    agent = SAC(env.observation_space.shape[0], env.action_space.shape[0], max_steps)
    episodes, score, t0 = Episodes(obs), float("nan"), time.time()
    for step in range(1, max_steps + 1):
        action = env.action_space.sample() if step <= random_steps else agent.act(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        agent.add(obs, action, reward, next_obs, terminated)
        reset_obs = env.reset()[0] if terminated or truncated else None
        episodes.add(action, reward, next_obs, terminated, truncated, reset_obs)
        obs = next_obs if reset_obs is None else reset_obs
        if step > random_steps:
            agent.update()
        if step % eval_every == 0 or step == max_steps:  # (evaluation draws nothing from the training generators)
            score = evaluate(agent, seed=args.seed + step)
            print(f"  SAC step {step:,}: evaluation return {score:.1f} ({time.time() - t0:.0f}s)", flush=True)
            if target is not None and score >= target:
                return episodes, agent, score, step, True
    return episodes, agent, score, max_steps, False


def hopper_rollouts(agent: SAC, steps: int, seed: int) -> Episodes:
    env = gym.make("Hopper-v5")
    obs, _ = env.reset(seed=seed)
    torch.manual_seed(seed)
    episodes = Episodes(obs)
    for _ in range(steps):
        action = agent.act(obs)
        obs, reward, terminated, truncated, _ = env.step(action)
        reset_obs = env.reset()[0] if terminated or truncated else None
        episodes.add(action, reward, obs, terminated, truncated, reset_obs)
        obs = obs if reset_obs is None else reset_obs
    return episodes


def maze_walks(args: Args, num_episodes: int, horizon: int):
    """A noisy PD controller (gains 10 / -1, action noise std 0.5) that walks from cell to cell: each next cell is,
    with probability `decoy`, the neighbour on the shortest path to the decoy end, else a random neighbour."""
    env = gym.make("PointMaze_UMaze-v3", maze_map=U_MAZE, continuing_task=True, reset_target=False,
                   reward_type="sparse", max_episode_steps=horizon)
    maze, rng = env.unwrapped.maze, np.random.default_rng(args.maze_seed)
    free = {(r, c) for r, row in enumerate(U_MAZE) for c, x in enumerate(row) if x != 1}
    neighbours = {cell: [n for n in ((cell[0] + dr, cell[1] + dc) for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)))
                         if n in free] for cell in free}
    distance, frontier = {DECOY: 0}, [DECOY]  # breadth-first distances to the decoy
    while frontier:
        reached = []
        for cell in frontier:
            for n in neighbours[cell]:
                if n not in distance:
                    distance[n] = distance[cell] + 1
                    reached.append(n)
        frontier = reached
    obs, _ = env.reset(seed=args.maze_seed)
    episodes, target = Episodes(obs), None
    for _ in range(num_episodes * horizon):
        xy, velocity = obs["observation"][:2], obs["observation"][2:]
        cell = tuple(int(i) for i in maze.cell_xy_to_rowcol(xy))
        if target is None or np.linalg.norm(maze.cell_rowcol_to_xy(np.array(target)) - xy) < 0.3:
            options = neighbours[cell if target is None else target]
            toward = min(options, key=distance.get)
            target = toward if rng.random() < args.decoy else options[rng.integers(len(options))]
        action = 10 * (maze.cell_rowcol_to_xy(np.array(target)) - xy) - velocity + rng.normal(0, 0.5, 2)
        action = np.clip(action, -1, 1).astype(np.float32)
        obs, reward, terminated, truncated, _ = env.step(action)
        reset_obs = env.reset()[0] if terminated or truncated else None
        if reset_obs is not None:
            target = None
        episodes.add(action, reward, obs, terminated, truncated, reset_obs)
        obs = obs if reset_obs is None else reset_obs
    eval_env = gym.make("PointMaze_UMaze-v3", maze_map=U_MAZE_EVAL, continuing_task=False, reset_target=False,
                        reward_type="sparse", max_episode_steps=horizon)
    return episodes, env, eval_env.spec


def main(args: Args):
    if args.quick and args.out is None:
        sys.exit("error: --quick writes only into the folder given with --out")
    for name in ("max_steps", "medium_steps", "maze_episodes"):
        if getattr(args, name) <= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    root = Path(args.out or os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets").resolve()
    os.environ["MINARI_DATASETS_PATH"] = str(root)  # where minari writes
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ns = "quick" if args.quick else "local"
    ids = {k: f"{ns}/{k}-v1" for k in ("hopper/medium-replay", "hopper/medium", "pointmaze/umaze")}
    ids = {k: i for k, i in ids.items() if args.only in (None, k.split("/")[0])}
    todo = {k: i for k, i in ids.items() if args.force or not (root / i / "data").is_dir()}
    for k, i in ids.items():
        print(f"{i}: {'building' if k in todo else 'exists, skipped (--force rebuilds it)'} in {root}")
    start = time.time()

    if "hopper/medium-replay" in todo or "hopper/medium" in todo:
        t = time.time()
        if "hopper/medium-replay" not in todo:
            print("  note: the medium dataset needs the SAC run again; its final policy is that of the existing "
                  "medium-replay dataset only on the machine that built it")
        if args.quick:
            episodes, agent, score, steps, reached = hopper_sac(args, 500, 500, 1000, None)
        else:
            episodes, agent, score, steps, reached = hopper_sac(args, 10_000, 5000, args.max_steps, args.target_return)
            if not reached:
                print(f"  note: SAC never reached {args.target_return:g} in {steps:,} steps (last evaluation "
                      f"{score:.1f}); the datasets hold what it reached")
        env = gym.make("Hopper-v5")
        recipe = (f"SAC from scratch ({'quick build' if args.quick else '10,000 random steps first'}), every "
                  f"transition up to step {steps:,}, where the deterministic evaluation read {score:.1f}")
        if "hopper/medium-replay" in todo:
            write(ids["hopper/medium-replay"], episodes, env, env.spec, "SAC replay (D4RL medium-replay recipe)",
                  f"Hopper-v5: {recipe}.", HOPPER_REF)
        if "hopper/medium" in todo:
            rollouts = hopper_rollouts(agent, 2000 if args.quick else args.medium_steps, args.seed + 1)
            write(ids["hopper/medium"], rollouts, env, env.spec, "SAC policy rollouts (D4RL medium recipe)",
                  f"Hopper-v5: rollouts with stochastic actions of the final policy of {recipe}.", HOPPER_REF)
        print(f"  hopper datasets: {time.time() - t:.0f}s", flush=True)
    if "pointmaze/umaze" in todo:
        t = time.time()
        episodes, env, eval_spec = maze_walks(args, 5 if args.quick else args.maze_episodes, 300)
        write(ids["pointmaze/umaze"], episodes, env, eval_spec,
              f"noisy PD controller walking cells, each next one toward the decoy cell {DECOY} with probability "
              f"{args.decoy:g}",
              "PointMaze U-maze, 300-step continuing episodes from random cells; sparse reward at the fixed goal "
              "(1, 1). Evaluation: start (3, 3), the episode ends at the goal.", (0.0, 1.0))
        print(f"  maze dataset: {time.time() - t:.0f}s", flush=True)
    print(f"done in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main(tyro.cli(Args))
