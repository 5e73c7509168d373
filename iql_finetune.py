"""Implicit Q-Learning (IQL) with online fine-tuning: offline pre-training on a Minari dataset, then training
on a replay buffer that keeps the dataset and grows with the agent's own experience.

Kostrikov, Nair & Levine, "Offline Reinforcement Learning with Implicit Q-Learning", ICLR 2022
(arXiv 2110.06169), section 5.3. The protocol is the authors' fine-tuning set-up (github.com/ikostrikov/
implicit_q_learning `train_finetune.py`, "IK" below): 1M offline updates, then 1M online steps of one environment
step and one update each, constant learning rates; expectile and temperature per domain (DOMAIN_DEFAULTS; AntMaze:
0.9 and 10). A reward difference from IK: online locomotion rewards get the dataset's reward scale; IK stores them
unscaled next to the scaled dataset rewards (mazes: r - 1 on both, as in IK).

    python iql_finetune.py --env-id antmaze-umaze-v2

The update is the one in iql_continuous.py and iql_antmaze.py (copied on purpose, tested identical); so is the
data handling: maze datasets (dict observations) as iql_antmaze.py, flat ones (locomotion, Adroit) as
iql_continuous.py. What this script adds: the replay buffer, the online environment, and the loop below.

  for each update:
    online phase only: act with a sample of the policy, step the env, append the transition to the buffer
    one IQL update on a uniform batch from the buffer (IK `learner.py`: paper Algorithm 1 interleaved with
    the policy extraction):
      1. V   <- expectile regression of V(s) on min(Q1_targ, Q2_targ)(s, a)
      2. pi  <- advantage-weighted regression, weights exp(temperature * (Q_targ - V_new)), clipped at 100
      3. Q   <- regression on r + gamma * mask * V_new(s')
      4. Q_targ <- Polyak average of Q
"""

import contextlib
import copy
import itertools
import io
import math
import os
import pickle
import random
import re
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import tyro

try:
    with contextlib.redirect_stderr(io.StringIO()):  # hush a notice about Adroit reward versions printed on import
        import gymnasium_robotics  # AntMaze_*, PointMaze_* and AdroitHand* envs
except (ImportError, AttributeError) as e:  # MuJoCo's renderer could not load the library MUJOCO_GL names
    sys.exit(f"error: importing gymnasium_robotics failed ({type(e).__name__}: {e}) with MUJOCO_GL="
             f"{os.environ.get('MUJOCO_GL')}: set MUJOCO_GL=egl, or install that OpenGL library")
gym.register_envs(gymnasium_robotics)


@dataclass
class Args:
    """IQL: offline pre-training on a maze, locomotion or Adroit dataset, then online fine-tuning."""

    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of torch, numpy, random, the online env and evaluation episodes (a population's: its first member's)"""
    num_seeds: int = 1
    """train this many runs at once, with seeds seed, seed+1, ...: one population (see `population`)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True` (CleanRL's flag; no cuDNN kernel runs here)"""
    cuda: bool = True
    """if toggled, train on the GPU when one is available"""
    track: bool = False
    """if toggled, log to Weights & Biases"""
    wandb_project_name: str = "iql"
    """the Weights & Biases project name"""
    wandb_entity: Optional[str] = None
    """the Weights & Biases entity (team)"""
    capture_video: bool = False
    """if toggled, record the first evaluation episode of each evaluation under `videos/{run_name}`"""
    save_model: bool = False
    """if toggled, save networks, optimisers and Args at each phase end: `runs/{run_name}/{exp_name}_{phase}.pt`"""
    checkpoint: Optional[str] = None
    """a --save-model file (this script's offline one, or an offline script's): start from it, skip pre-training"""

    env_id: str = "antmaze-umaze-v2"
    """a D4RL name (antmaze-*-v2, maze2d-*-v1, pen-human-v1, hopper-medium-v2, ...) or a Minari dataset id"""
    goal_input: bool = True
    """mazes: append desired_goal to the network input (--no-goal-input: D4RL's input)"""
    normalize_reward: bool = True
    """locomotion: scale rewards by 1000 / (max - min trajectory return) of the dataset, online ones too (IK: not)"""

    offline_steps: int = 1_000_000
    """gradient updates on the dataset alone, before any interaction"""
    online_steps: int = 1_000_000
    """online steps after pre-training: one environment step and one gradient update each"""
    buffer_size: int = 2_000_000
    """each member's replay capacity (the shared dataset + its online transitions); then its oldest online ones go"""
    batch_size: int = 256
    """transitions per update"""
    learning_rate: float = 3e-4
    """Adam learning rate of the actor, critics and value, constant in both phases (IK's fine-tuning config)"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak rate of the target critics (IK's name; the paper's tau is the expectile)"""
    expectile: Optional[list[float]] = None
    """expectile of the value regression (0.5 = mean, towards 1 = max); several: a sweep; None: domain default"""
    temperature: Optional[list[float]] = None
    """inverse temperature of the advantage weights (0: behaviour cloning); several: a sweep; None: domain default"""
    max_weight: float = 100.0
    """upper clip of the advantage weights exp(beta * A)"""
    dropout: Optional[float] = None
    """dropout rate after every hidden layer of the actor, in training only (0: none); None: domain default"""
    hidden_dim: int = 256
    """units in each of the two hidden layers of every network"""
    compile: bool = False
    """if toggled, run the losses through `torch.compile`"""
    cudagraphs: bool = False
    """if toggled (CUDA only), capture one update in a CUDA graph and replay it every step"""

    eval_freq: int = 100_000
    """evaluate every this many updates, at the phase change and at the end"""
    eval_episodes: int = 100
    """episodes per evaluation, run at once in a vector env"""
    log_freq: int = 1000
    """copy the losses off the device and log them every this many updates"""
    checkpoint_freq: int = 100_000
    """save the training state (buffer included) as `runs/{run_name}/checkpoint_{step}.pt` every this many updates,
    at the phase change and at the end (0: only on a stop signal)"""
    resume: Optional[str] = None
    """a checkpoint_{step}.pt file: continue its run (its settings but the device flags, its folder) from that step"""


# ---- Losses (pure functions of tensors) ------------------------------------------------------------------------------
class Batch(NamedTuple):
    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    masks: torch.Tensor  # 1 - terminal: 0 stops bootstrapping; truncations keep 1


def expectile_loss(diff: torch.Tensor, expectile) -> torch.Tensor:
    """Asymmetric L2 of paper eq. 5: weight `expectile` where diff = q - v > 0, `1 - expectile` elsewhere."""
    weight = torch.where(diff > 0, expectile, 1 - expectile)
    return (weight * diff.square()).mean(-1)


def awr_loss(log_prob, advantage, temperature, max_weight: float):
    """Paper eq. 7, -mean(exp(beta * A) * log pi(a|s)), with the weights clipped at max_weight (IK `actor.py`) and
    carrying no gradient. Returns (loss, weights)."""
    weights = torch.exp(temperature * advantage.detach()).clamp(max=max_weight)
    return -(weights * log_prob).mean(-1), weights


def td_target(rewards, masks, next_v, gamma: float) -> torch.Tensor:
    """r + gamma * mask * V(s'): masks are 0 on terminal transitions only (truncations bootstrap)."""
    return rewards + gamma * masks * next_v


def q_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Paper eq. 6: the sum over the twin critics (q's axis -2) of their mean squared TD errors, as IK sums them."""
    return (q - target.unsqueeze(-2)).square().mean(-1).sum(-1)


def gaussian_log_prob(actions, mean, log_std) -> torch.Tensor:
    """log N(actions; mean, exp(log_std)), summed over action dimensions."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def cosine_decay(step: int, total_steps: int) -> float:
    """Actor LR multiplier: cosine from 1 to 0 over total_steps, then held at 0 (optax cosine_decay_schedule)."""
    return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


# ---- Networks: 2x256 ReLU MLPs, orthogonal init with gain sqrt(2) and zero bias everywhere (IK `common.py`) ----------
# The member axis: a population of M runs trains as one set of networks, each parameter stacked on a leading axis of
# M (`stack_members`). Batches are (M, batch, ...), V is (M, batch), the twin critics' Q (M, 2, batch), every loss
# (M,). A network saved alone (--save-model, `member_state`) has no member axis.
class Linear(nn.Linear):
    """nn.Linear (and its init), weight stored as (in, out): members stack it to (M, in, out) for one batched
    matmul without a transpose."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(in_dim, out_dim)
        self.weight = nn.Parameter(self.weight.detach().T.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dim() == 2:  # one network
            return x @ self.weight + self.bias
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)


def mlp(in_dim: int, out_dim: int, hidden_dim: int, dropout: Optional[float] = None) -> nn.Sequential:
    layers = []
    for d_in in (in_dim, hidden_dim):
        layers += [Linear(d_in, hidden_dim), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
    layers.append(Linear(hidden_dim, out_dim))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight.T, gain=math.sqrt(2))  # on the (out, in) matrix, as nn.Linear holds it
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class TwinQ(nn.Module):
    """Q1 and Q2 stacked on an axis of 2 (after any member axis): one batched matmul per layer; q is ([M,] 2, batch)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, num_q: int = 2):
        super().__init__()
        sizes = [obs_dim + act_dim, hidden_dim, hidden_dim, 1]
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for d_in, d_out in zip(sizes[:-1], sizes[1:]):
            # orthogonal_ on each critic's (out, in) matrix, as nn.Linear stores it, then transposed for bmm
            w = torch.stack([nn.init.orthogonal_(torch.empty(d_out, d_in), gain=math.sqrt(2)).T for _ in range(num_q)])
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(num_q, 1, d_out)))

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        critics = self.weights[0].shape[:-2]  # (2,), or (M, 2)
        x = torch.cat([obs, actions], -1).unsqueeze(-3)
        x = x.expand(*critics, *x.shape[-2:]).flatten(0, -3)  # each critic's copy of its member's input
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b.flatten(0, -3), x, w.flatten(0, -3))
            x = torch.relu(x) if i < len(self.weights) - 1 else x
        return x.view(*critics, -1)


class Value(nn.Module):
    def __init__(self, obs_dim: int, hidden_dim: int):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


class Actor(nn.Module):
    """Gaussian policy: mean tanh(MLP(s)) (no squashed distribution, as IK `policy.py`) and a state-independent
    log-std clamped to [-5, 2] (CORL's floor is -20)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, dropout: Optional[float] = None):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden_dim, dropout)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def forward(self, obs: torch.Tensor):
        return torch.tanh(self.net(obs)), self.log_std.clamp(-5.0, 2.0)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        mean, log_std = self(obs)
        return gaussian_log_prob(actions, mean, log_std.unsqueeze(-2))  # log_std (M, act): one per member

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """The evaluation action: the mean, clipped to [-1, 1] (call `.eval()` first: dropout). A population's actor
        takes flat rows, the members' in turn, as many each."""
        members = self.log_std.shape[:-1]
        mean = self(obs.view(*members, -1, obs.shape[-1]) if members else obs)[0]
        return mean.reshape(*obs.shape[:-1], -1).clamp(-1.0, 1.0)


def stack_members(nets: list) -> nn.Module:
    """The members' networks as one network: each parameter stacked on a new leading member axis."""
    stacked = copy.deepcopy(nets[0])
    for name, p in stacked.named_parameters():
        p.data = torch.stack([net.get_parameter(name).detach() for net in nets])
    return stacked


def member_state(net: nn.Module, i: int) -> dict:
    """Member i's parameters, without the member axis: the state_dict of one network."""
    return {k: v[i].clone() for k, v in net.state_dict().items()}


# ---- One IQL update (paper Algorithm 1; IK `learner.py`: value, then actor and critic with the new V, then target) ---
class Networks(NamedTuple):
    actor: nn.Module
    critic: nn.Module
    target_critic: nn.Module
    value: nn.Module
    optimizers: tuple  # Adam for the actor and the critics (one parameter group each), and Adam for the value
    actor_schedule: torch.optim.lr_scheduler.LRScheduler
    expectile: torch.Tensor  # (M, 1): each member's own
    temperature: torch.Tensor  # (M, 1)


@torch.compiler.disable  # under --compile the losses are compiled; the (fused) optimizer steps stay as they are
def optimizer_step(optimizer, loss):
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def update(batch: Batch, nets: Networks, args: Args):
    """Every member's update at once. Each loss is the sum of the members' mean losses: the members' parameters are
    disjoint slices, so each gets its own gradient, at the scale a single run would have."""
    obs, actions, rewards, next_obs, masks = batch
    actor_and_critic_opt, value_opt = nets.optimizers
    with torch.no_grad():
        target_q = nets.target_critic(obs, actions).min(-2).values  # reused by the value and the actor step

    # 1. Value: expectile regression on the target critics' minimum.
    value_loss = expectile_loss(target_q - nets.value(obs), nets.expectile)
    optimizer_step(value_opt, value_loss.sum())

    # V_new(s) and V_new(s') in one forward. IK uses the updated V for both the advantage and the TD target;
    # CORL and IQL-PyTorch use the V from before its step.
    with torch.no_grad():
        v, next_v = nets.value(torch.cat([obs, next_obs], -2)).chunk(2, -1)
    advantage = target_q - v

    # 2. Actor: advantage-weighted regression on the dataset actions.
    actor_loss, weights = awr_loss(nets.actor.log_prob(obs, actions), advantage, nets.temperature, args.max_weight)

    # 3. Critics: regression on r + gamma * mask * V_new(s').
    critic_loss = q_loss(nets.critic(obs, actions), td_target(rewards, masks, next_v, args.gamma))
    # Steps 2 and 3 share one backward and one Adam step: their parameters are disjoint, so each gets the gradient
    # of its own loss, as with IK's separate actor and critic optimisers, at one call's overhead.
    optimizer_step(actor_and_critic_opt, actor_loss.sum() + critic_loss.sum())

    # 4. Polyak averaging of the target critics, one foreach kernel over all parameters.
    with torch.no_grad():
        torch._foreach_lerp_(list(nets.target_critic.parameters()), list(nets.critic.parameters()), args.tau)

    return {"losses/value_loss": value_loss.detach(), "losses/actor_loss": actor_loss.detach(),
            "losses/q_loss": critic_loss.detach(), "charts/advantage_mean": advantage.mean(-1),
            "charts/weight_mean": weights.mean(-1)}


class Member(NamedTuple):
    name: str  # its TensorBoard run under the population's run folder: the seed and any swept values
    seed: int
    expectile: float
    temperature: float


def population(args: Args) -> list[Member]:
    """Every combination of the --expectile and --temperature values, each with seeds seed, seed+1, ..."""
    members = []
    for expectile, temperature, i in itertools.product(args.expectile, args.temperature, range(args.num_seeds)):
        name = f"seed{args.seed + i}" + (f"-expectile{expectile}" if len(args.expectile) > 1 else "")
        members.append(Member(name + (f"-temperature{temperature}" if len(args.temperature) > 1 else ""),
                              args.seed + i, expectile, temperature))
    return members


def make_networks(obs_dim: int, act_dim: int, args: Args, device, lr_decay_steps: Optional[int],
                  members: list[Member]) -> Networks:
    """The members' stacked networks, Adam (torch defaults: IK has no weight decay or clipping) and the actor's
    schedule: a cosine to 0 over `lr_decay_steps` updates, or constant where that is None."""
    device, nets = torch.device(device), []
    # Each member is built right after seeding torch with its own seed; member 0 last, so that the population's one
    # random stream (batches, dropout) goes on from its seed, as in a single run.
    for member in reversed(members):
        torch.manual_seed(member.seed)
        nets.append((Actor(obs_dim, act_dim, args.hidden_dim, args.dropout), TwinQ(obs_dim, act_dim, args.hidden_dim),
                     Value(obs_dim, args.hidden_dim)))
    actor, critic, value = (stack_members(list(reversed(m))).to(device) for m in zip(*nets))

    def adam(*modules):  # fused; each group's learning rate a tensor, filled in place, that a CUDA graph sees change
        groups = [{"params": m.parameters(), "lr": torch.tensor(args.learning_rate, device=device)} for m in modules]
        return torch.optim.Adam(groups, fused=True, capturable=device.type == "cuda")

    optimizers = (adam(actor, critic), adam(value))
    decay = (lambda t: cosine_decay(t, lr_decay_steps)) if lr_decay_steps else (lambda t: 1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizers[0], [decay, lambda t: 1.0])  # the actor's group only
    expectile, temperature = (torch.tensor([[getattr(m, k)] for m in members], device=device) for k in SWEEPABLE)
    return Networks(actor, critic, copy.deepcopy(critic).requires_grad_(False), value, optimizers, schedule,
                    expectile, temperature)


def make_train_step(sample: Callable[[], Batch], networks: Networks, args: Args, mode: Optional[str] = None):
    """step() runs update(sample()) and the actor's schedule and returns the metrics (device tensors). mode: None
    (eager), "compile" (torch.compile), "cudagraphs" (replays a captured CUDA graph) or "compile+cudagraphs"."""
    def sample_and_update():
        return update(sample(), networks, args)

    fn = torch.compile(sample_and_update) if mode in ("compile", "compile+cudagraphs") else sample_and_update
    fn = cuda_graph(fn) if mode in ("cudagraphs", "compile+cudagraphs") else fn

    def step():
        metrics = fn()
        networks.actor_schedule.step()
        return metrics

    return step


def cuda_graph(fn, warmup: int = 3):
    """Run fn eagerly on a side stream for `warmup` calls (Adam's state and the gradients then exist), capture it
    once, then replay the graph: every call returns the same output tensors, refilled."""
    graph, outputs, calls, stream = torch.cuda.CUDAGraph(), None, 0, torch.cuda.Stream()

    def call():
        nonlocal outputs, calls
        calls += 1
        if calls <= warmup:
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                outputs = fn()
            torch.cuda.current_stream().wait_stream(stream)
            return outputs
        if calls == warmup + 1:
            try:
                with torch.cuda.graph(graph):
                    outputs = fn()
            except RuntimeError as e:
                raise UserError(f"CUDA graph capture failed ({first_line(e)}): run without --cudagraphs") from e
        graph.replay()
        return outputs

    return call


# ---- Fine-tuning: the replay buffer and the online step --------------------------------------------------------------
class ReplayBuffer:
    """Transitions preallocated on the training device (IK `dataset_utils.ReplayBuffer`): the dataset once, shared by
    all members, then `room` online rows per member (capacity - dataset, at most the online steps), the oldest
    overwritten once full (IK's one ring overwrites the dataset first: the same unless capacity < dataset + online
    steps). A member samples uniformly over the dataset and its own rows; the row count lives on the device: sampling
    never waits for the host, and a CUDA graph sees it."""

    def __init__(self, dataset: Batch, capacity: int, device, members: int = 1, online_steps: Optional[int] = None):
        n = len(dataset.rewards)
        if capacity < n:
            raise UserError(f"--buffer-size {capacity:,} is smaller than the dataset ({n:,} transitions); use at "
                            f"least {n:,} (the paper: 2,000,000, room for 1M online steps after 1M data)")
        if capacity == n and online_steps:
            raise UserError(f"--buffer-size {capacity:,} leaves no room beside the dataset for online transitions")
        self.n_data, self.members, self.next, self.online = n, members, 0, 0  # next: the next slot; online: rows held
        # room for the online steps a run makes, no more: the same samples, without unused rows
        self.room = capacity - n if online_steps is None else min(capacity - n, online_steps)
        self.data = Batch(*(torch.zeros((n + members * self.room, *x.shape[1:]), dtype=x.dtype, device=device)
                            for x in dataset))  # allocated on the device: no host copy of the empty rows
        for column, x in zip(self.data, dataset):
            column[:n] = x.to(device)
        self.size = torch.tensor(n, device=device)  # the rows each member samples from
        self.offset = torch.arange(members, device=device)[:, None] * self.room  # member m's online rows: n + offset

    @property
    def count(self) -> int:
        return self.n_data + self.online

    def online_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The online part of a column of `data`, as a (members, room, ...) view."""
        return x[self.n_data:].view(self.members, self.room, *x.shape[1:])

    def add(self, obs, action, reward, next_obs, mask):
        """Write each member's transition (each argument along a leading member axis) into its next slot, without
        waiting for the device."""
        for column, x in zip(self.data, (obs, action, reward, next_obs, mask)):
            x = torch.as_tensor(np.asarray(x, dtype=np.float32)).reshape(self.members, *column.shape[1:])
            self.online_rows(column)[:, self.next].copy_(x, non_blocking=True)
        self.next, self.online = (self.next + 1) % self.room, min(self.online + 1, self.room)
        self.size.fill_(self.count)

    def state_dict(self) -> dict:
        """The fill state and the online rows (the dataset comes back from the data), copied: torch.save of a view
        writes its whole storage."""
        return {"next": self.next, "online": self.online, "rows": {name: self.online_rows(x)[:, :self.online].to(
            "cpu", copy=True) for name, x in zip(Batch._fields, self.data)}}

    def load_state_dict(self, state: dict):
        for name, x in zip(Batch._fields, self.data):
            self.online_rows(x)[:, :state["online"]] = state["rows"][name].to(x.device)
        self.next, self.online = state["next"], state["online"]
        self.size.fill_(self.count)

    def sample(self, batch_size: int) -> Batch:
        # randint over [0, 2^62) modulo the size: uniform up to a bias of size / 2^62; past the dataset: own rows
        idx = torch.randint(2**62, (self.members, batch_size), device=self.size.device) % self.size
        idx = torch.where(idx < self.n_data, idx, idx + self.offset)
        return Batch(*(x[idx] for x in self.data))


@torch.no_grad()
def explore(actor: Actor, obs: torch.Tensor) -> torch.Tensor:
    """Online action: a sample of the Gaussian policy, clipped to [-1, 1] (IK: temperature 1, then np.clip)."""
    mean, log_std = actor(obs)
    return (mean + log_std.unsqueeze(-2).exp() * torch.randn_like(mean)).clamp(-1.0, 1.0)


def online_step(envs: list, obs: list, actor: Actor, buffer: ReplayBuffer, observe: Callable, info: dict, device):
    """Step each member's online env with a sample of its policy and store the transitions; returns each env.step."""
    x = np.stack([observe(o) for o in obs])
    actor.eval()  # dropout off while acting, as IK samples actions
    actions = explore(actor, torch.as_tensor(x, device=device)[:, None]).squeeze(1).cpu().numpy()  # one row a member
    actor.train()
    results = [env.step(a) for env, a in zip(envs, actions)]
    stored = [online_transition(x_i, a, r, observe(next_o), terminated, info)
              for x_i, a, (next_o, r, terminated, _, _) in zip(x, actions, results)]
    buffer.add(*(np.stack(column) for column in zip(*stored)))
    return results


# ---- Data: D4RL names, domains, maze and flat datasets -> transition tensors -----------------------------------------
# D4RL names -> Minari ids. Mazes as in iql_antmaze.py, locomotion as in iql_continuous.py.
ANTMAZE_MAPS = ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse")
POINTMAZE_MAPS = ("umaze", "medium", "large")  # sparse rewards only: the terminal rule needs 0/1 rewards
ADROIT_TASKS = ("pen", "door", "hammer", "relocate")
D4RL_TO_MINARI = {"medium": ["medium-v0"], "expert": ["expert-v0"], "medium-expert": ["medium-v0", "expert-v0"]}
D4RL_REF_SCORES = {  # D4RL's reference returns (d4rl/infos.py): score = 100 * (R - min) / (max - min)
    "hopper": (-20.272305, 3234.3), "halfcheetah": (-280.178953, 12135.0), "walker2d": (1.629008, 4592.3),
    "pen": (96.262799, 3076.8331017826877), "door": (-56.512833, 2880.5693087298737),
    "hammer": (-274.856578, 12794.134825156867), "relocate": (-6.425911, 4233.877797728884), "kitchen": (0.0, 4.0)}
ENV_TO_TASK = {"Hopper": "hopper", "HalfCheetah": "halfcheetah", "Walker2d": "walker2d", "AdroitHandPen": "pen",
               "AdroitHandDoor": "door", "AdroitHandHammer": "hammer", "AdroitHandRelocate": "relocate",
               "FrankaKitchen": "kitchen"}
MAZE_KEYS = {"observation", "achieved_goal", "desired_goal"}
MINARI_ID = re.compile(r"^[\w.-]+(/[\w.-]+)*/[\w.-]+-v\d+$")

# Hyperparameters per domain (IK `configs/`): a field left at None takes its domain's value; a flag always wins.
DOMAIN_DEFAULTS = {
    "locomotion": {"expectile": 0.7, "temperature": 3.0, "dropout": None},
    "maze": {"expectile": 0.9, "temperature": 10.0, "dropout": None},
    "adroit": {"expectile": 0.7, "temperature": 0.5, "dropout": 0.1},
    "kitchen": {"expectile": 0.7, "temperature": 0.5, "dropout": 0.1},
}
SWEEPABLE = ("expectile", "temperature")  # these take several values: a population sweeps them


class UserError(Exception):
    """A mistake in the command line or the data set-up: reported as one line, without a traceback."""


def check_args(args: Args):
    """Refuse values the algorithm cannot use, before any heavy work."""
    sweeps = {n: getattr(args, n) or [] for n in SWEEPABLE}
    rules = [(0 < e < 1, f"--expectile must be in (0, 1), got {e}") for e in sweeps["expectile"]]
    rules += [(t >= 0, f"--temperature must be >= 0 (0 is behaviour cloning), got {t}") for t in sweeps["temperature"]]
    rules += [(getattr(args, n) != [], f"--{n} needs at least one value") for n in SWEEPABLE]
    rules += [(len(set(v)) == len(v), f"--{n} has a value twice: {v}") for n, v in sweeps.items()]
    rules += [(args.dropout is None or 0 <= args.dropout < 1, f"--dropout must be in [0, 1), got {args.dropout}"),
              (0 <= args.gamma <= 1, f"--gamma must be in [0, 1], got {args.gamma}"),
              (0 < args.tau <= 1, f"--tau must be in (0, 1], got {args.tau}"),
              (args.offline_steps >= 0, f"--offline-steps must be >= 0, got {args.offline_steps}"),
              (args.online_steps >= 0, f"--online-steps must be >= 0, got {args.online_steps}"),
              (args.offline_steps + args.online_steps > 0 or args.checkpoint is not None, "--offline-steps and "
               "--online-steps are both 0: nothing to train (with --checkpoint, this evaluates the loaded model)"),
              (args.checkpoint_freq >= 0, f"--checkpoint-freq must be >= 0, got {args.checkpoint_freq}"),
              (not args.cudagraphs or (args.cuda and torch.cuda.is_available()), "--cudagraphs needs a CUDA device")]
    rules += [(getattr(args, n) is None or Path(getattr(args, n)).is_file(), f"--{n} {getattr(args, n)}: no such file")
              for n in ("checkpoint", "resume")]
    rules += [(getattr(args, n) > 0, f"--{n.replace('_', '-')} must be positive, got {getattr(args, n)}") for n in (
        "learning_rate", "max_weight", "buffer_size", "batch_size", "eval_freq", "eval_episodes", "log_freq",
        "hidden_dim", "num_seeds")]
    for ok, message in rules:
        if not ok:
            raise UserError(message)
    check_track(args)


def check_track(args: Args):
    """--track needs W&B: checked before any heavy work, and again for a resumed run's own settings."""
    if args.track:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError("--track needs Weights & Biases: pip install wandb") from None


def env_domain(env_name: str) -> Optional[str]:
    """The domain from the env's spec name (not the dataset id), or None for an env of no known domain."""
    patterns = {"locomotion": "(Hopper|HalfCheetah|Walker2d)$", "adroit": "AdroitHand", "kitchen": "FrankaKitchen",
                "maze": ".*Maze"}
    return next((domain for domain, pattern in patterns.items() if re.match(pattern, env_name)), None)


def with_domain_defaults(args: Args, domain: str):
    """Fill the settings left at None from DOMAIN_DEFAULTS[domain]; returns (Args, a line per value and its source)."""
    values, lines = {}, []
    for name, default in DOMAIN_DEFAULTS[domain].items():
        given = getattr(args, name)
        values[name] = ([default] if name in SWEEPABLE else default) if given is None else given
        shown = " ".join(map(str, values[name])) if name in SWEEPABLE else str(values[name])
        source = f"{domain} default" if given is None else f"flag (the {domain} default is {default})"
        lines.append(f"  {name:<12} {shown:<6} {source}")
    return replace(args, **values), lines


def resolve_dataset_ids(env_id: str) -> list[str]:
    """Map a D4RL name to the Minari ids to load (concatenated), or pass a Minari id through."""
    m = re.fullmatch(r"antmaze-([a-z-]+)-v[02]", env_id)
    if m and m.group(1) in ANTMAZE_MAPS:
        return [f"D4RL/antmaze/{m.group(1)}-v1"]
    m = re.fullmatch(r"maze2d-([a-z-]+)-v1", env_id)
    if m and m.group(1) in POINTMAZE_MAPS:
        return [f"D4RL/pointmaze/{m.group(1)}-v2"]
    m = re.fullmatch(r"([a-z]+)-(human|cloned|expert)-v[01]", env_id)
    if m and m.group(1) in ADROIT_TASKS:
        return [f"D4RL/{m.group(1)}/{m.group(2)}-v2"]
    m = re.fullmatch(r"(halfcheetah|hopper|walker2d)-([a-z-]+)-v2", env_id)
    if m and m.group(2) in D4RL_TO_MINARI:
        return [f"mujoco/{m.group(1)}/{name}" for name in D4RL_TO_MINARI[m.group(2)]]
    if "/" in env_id and MINARI_ID.match(env_id):
        return [env_id]
    raise UserError(f"unknown env id '{env_id}', or a D4RL name with no Minari counterpart. Use antmaze-"
                    f"{{{','.join(ANTMAZE_MAPS)}}}-v2, maze2d-{{{','.join(POINTMAZE_MAPS)}}}-v1, "
                    f"{{{','.join(ADROIT_TASKS)}}}-{{human,cloned,expert}}-v1, "
                    "{halfcheetah,hopper,walker2d}-{medium,expert,medium-expert}-v2, or a Minari id namespace/name-vN.")


def first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:150]}" if str(e) else type(e).__name__


def load_minari_dataset(dataset_id: str):
    """Load a dataset from MINARI_DATASETS_PATH (default ~/.minari/datasets), downloading it if it is not there."""
    import minari

    if os.environ.get("MINARI_DATASETS_PATH") == "":
        raise UserError("MINARI_DATASETS_PATH is set but empty: unset it (~/.minari/datasets) or name a folder")
    root = Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets"))
    try:
        if (root / dataset_id / "data").is_dir():
            return minari.load_dataset(dataset_id)
    except Exception as e:  # a truncated download or a corrupt file
        raise UserError(f"cannot read dataset '{dataset_id}' from {root / dataset_id / 'data'} ({first_line(e)}); "
                        "delete that folder and download it again") from None
    try:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
            raise ConnectionError("HF_HUB_OFFLINE is set")
        print(f"{dataset_id} is not in {root}: downloading it (HF_HUB_OFFLINE=1 skips the attempt) ...", flush=True)
        from huggingface_hub.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # one message below instead of one per retry
        return minari.load_dataset(dataset_id, download=True)
    except Exception as e:  # no network, no huggingface_hub, or not on the server
        folder = root / dataset_id.rsplit("/", 1)[0]
        there = sorted(str(p.parent.relative_to(root)) for p in folder.glob("*/data")) if folder.is_dir() else []
        raise UserError(f"dataset '{dataset_id}' is not in {root} (MINARI_DATASETS_PATH) and could not be downloaded "
                        f"({first_line(e)}). " + (f"Datasets in {folder}: {', '.join(there)}." if there else
                        f"On a machine with network run `minari download {dataset_id}` and copy {root / dataset_id} "
                        "here, or point MINARI_DATASETS_PATH at the folder that holds it.")) from None


def maze_observations(obs: dict, goal_input: bool) -> np.ndarray:
    """The network input: concat(achieved_goal, observation), plus desired_goal unless goal_input is False: D4RL's
    29-dim AntMaze layout (xy first); PointMaze's observation holds xy already, so xy appears twice. Minari's maze
    goals change between episodes, and the rewards follow each episode's own goal: without it, values are ambiguous."""
    parts = [obs["achieved_goal"], obs["observation"]] + ([obs["desired_goal"]] if goal_input else [])
    return np.concatenate(parts, axis=-1, dtype=np.float32)


def maze_rewards_and_terminals(rewards: np.ndarray):
    """IK's AntMaze rewards r - 1 (sparse 0/1 becomes -1/0), and a terminal wherever the goal reward was
    received (r > 0), as D4RL's AntMaze terminals are. Minari's maze data have no terminations of their own."""
    return (rewards - 1.0).astype(np.float32), rewards > 0


def flatten_maze_episodes(episodes, goal_input: bool) -> dict[str, np.ndarray]:
    """Minari maze episodes (T+1 dict observations) -> aligned transitions; truncated ones bootstrap (real next obs)."""
    parts = {k: [] for k in ("observations", "actions", "rewards", "next_observations")}
    for ep in episodes:
        obs = maze_observations(ep.observations, goal_input)
        for key, x in (("observations", obs[:-1]), ("next_observations", obs[1:]), ("actions", ep.actions),
                       ("rewards", ep.rewards)):
            parts[key].append(x)
    data = {k: np.concatenate(v, dtype=np.float32) for k, v in parts.items()}
    data["rewards"], data["terminals"] = maze_rewards_and_terminals(data["rewards"])
    # As IK `dataset_utils.py`: actions clipped to +-(1 - 1e-5) (only a tanh-squashed log-prob needs it; kept as
    # IK). Non-finite actions are left for check_data.
    np.clip(data["actions"], -1 + 1e-5, 1 - 1e-5, out=data["actions"], where=np.isfinite(data["actions"]))
    return data


def flat_observations(obs) -> np.ndarray:
    """The network input: the observation array, or Kitchen's `observation` entry. Kitchen's goals are left out: the
    desired ones are the same in every episode of a dataset, the achieved ones repeat positions `observation` holds."""
    return obs["observation"] if isinstance(obs, dict) else obs


def flatten_episodes(episodes) -> dict[str, np.ndarray]:
    """Minari episodes (T+1 observations each) -> aligned transition arrays. Truncated transitions bootstrap (their
    next observation is real); `episode_ends` marks each episode's last transition, for reward normalisation."""
    parts = {k: [] for k in ("observations", "actions", "rewards", "next_observations", "terminals", "episode_ends")}
    for ep in episodes:
        obs, n = flat_observations(ep.observations), len(ep.rewards)
        for key, x in (("observations", obs[:-1]), ("next_observations", obs[1:]), ("actions", ep.actions),
                       ("rewards", ep.rewards), ("terminals", ep.terminations),
                       ("episode_ends", np.arange(n) == n - 1)):
            parts[key].append(x)
    data = {k: np.concatenate(parts[k], dtype=np.float32)  # casts while copying, in one pass
            for k in ("observations", "actions", "rewards", "next_observations")}
    data["terminals"] = np.concatenate(parts["terminals"]).astype(bool)
    data["episode_ends"] = np.concatenate(parts["episode_ends"])
    # As IK `dataset_utils.py`: actions clipped to +-(1 - 1e-5) (only a tanh-squashed log-prob needs it; kept as
    # IK). Non-finite actions are left for check_data.
    np.clip(data["actions"], -1 + 1e-5, 1 - 1e-5, out=data["actions"], where=np.isfinite(data["actions"]))
    return data


def reward_scale(rewards, ends) -> float:
    """IK's locomotion reward normalisation: 1000 / (max - min undiscounted trajectory return). IK cuts D4RL's flat
    arrays into trajectories where an observation jumps (`dataset_utils.py`); Minari's episode ends are those cuts."""
    returns = np.bincount(np.concatenate([[0], np.cumsum(ends[:-1])]), weights=rewards)
    if returns.max() == returns.min():
        raise UserError("reward normalisation needs trajectories with different returns; use --no-normalize-reward")
    return float(1000.0 / (returns.max() - returns.min()))


def network_input(obs, goal_input: bool) -> np.ndarray:
    """An env observation (or a vector env's batch) as the network input: maze dicts through maze_observations."""
    return maze_observations(obs, goal_input) if isinstance(obs, dict) else np.asarray(obs, dtype=np.float32)


def read_episodes(datasets):
    """Every episode of the datasets, in order; a truncated or corrupt data file is reported by name."""
    for dataset in datasets:
        try:
            yield from dataset.iterate_episodes()
        except OSError as e:
            raise UserError(f"cannot read {dataset.spec.data_path} ({first_line(e)}); delete that folder and "
                            "download the dataset again") from None


def check_actions(space, env_id: str):
    """The tanh policy acts in [-1, 1]: refuse other actions (the dataset's clip would hide them)."""
    if not (isinstance(space, gym.spaces.Box) and np.all(space.low == -1) and np.all(space.high == 1)):
        raise UserError(f"'{env_id}' has actions {space}; the tanh policy here acts in Box(-1.0, 1.0)")


def check_data(data: dict, env_id: str):
    """Refuse NaN or infinite values in the dataset: one of them turns every loss into NaN within a few updates."""
    for key in ("observations", "next_observations", "actions", "rewards"):
        bad = ~np.isfinite(data[key]).reshape(len(data[key]), -1).all(axis=1)
        if bad.any():
            raise UserError(f"dataset '{env_id}' has NaN or infinite {key} ({bad.sum()} transitions, the first "
                            f"at index {bad.argmax()}): clean the data or choose another dataset")


def load_data(args: Args):
    """Load, flatten and transform the dataset(s) as the offline scripts do (mazes: r - 1, terminal where r > 0;
    locomotion: the reward scale); returns (Batch on the CPU, first dataset, info: what online_transition needs)."""
    dataset_ids = resolve_dataset_ids(args.env_id)
    datasets = [load_minari_dataset(i) for i in dataset_ids]
    first, space, spec = datasets[0], datasets[0].observation_space, datasets[0].env_spec
    check_actions(first.action_space, args.env_id)
    maze, env_name = isinstance(space, gym.spaces.Dict), spec.name if spec is not None else ""
    domain, task, scale = env_domain(env_name), ENV_TO_TASK.get(env_name), 1.0
    if domain == "kitchen":
        raise UserError(f"'{args.env_id}' is a Kitchen dataset: offline only, with iql_continuous.py.")
    if maze and not MAZE_KEYS <= set(space.spaces):
        raise UserError(f"'{args.env_id}' has dict observations without {sorted(MAZE_KEYS)} "
                        f"(it has {sorted(space.spaces)}): this script takes maze and flat-observation datasets.")
    if maze and spec is not None and spec.kwargs.get("reward_type") == "dense":
        raise UserError(f"'{args.env_id}' has dense rewards; the maze terminal rule (r > 0 at the goal) "
                        "needs the sparse 0/1 maze rewards that IQL's AntMaze setting uses.")
    episodes = read_episodes(datasets)
    data = flatten_maze_episodes(episodes, args.goal_input) if maze else flatten_episodes(episodes)
    check_data(data, args.env_id)
    if not maze and args.normalize_reward and domain == "locomotion":
        scale = reward_scale(data["rewards"], data["episode_ends"])
        data["rewards"] *= np.float32(scale)
    data["masks"] = 1.0 - data["terminals"].astype(np.float32)
    info = {"dataset_ids": dataset_ids, "maze": maze, "domain": domain, "task": task, "reward_scale": scale}
    return Batch(*(torch.from_numpy(data[k]) for k in Batch._fields)), first, info


def online_transition(x, action, reward: float, next_x, terminated: bool, info: dict) -> tuple:
    """An online step as ReplayBuffer.add stores it: the reward on the dataset's scale (mazes: r - 1, the same
    maze_rewards_and_terminals), mask 0 only on a true termination (a time-limit truncation bootstraps, as in IK)."""
    reward = maze_rewards_and_terminals(np.float32(reward))[0] if info["maze"] else reward * info["reward_scale"]
    return x, action, float(reward), next_x, 0.0 if terminated else 1.0


# ---- Evaluation ------------------------------------------------------------------------------------------------------
def eval_env_spec(dataset):
    """The dataset's evaluation env spec; an env that cannot be made (no spec, a package missing) fails here."""
    try:
        env = dataset.recover_environment(eval_env=True)
    except Exception as e:
        raise UserError(f"cannot make the evaluation env of '{dataset.spec.dataset_id}' ({first_line(e)})") from None
    env.close()
    return env.spec


def make_eval_envs(env_spec, num_envs: int, render: bool = False, **overrides) -> gym.vector.SyncVectorEnv:
    """A sync vector env of the dataset's eval env (keyword overrides go to every env); with render, the first
    env renders rgb frames. Sync, not async: faster for 100 PointMaze envs on 2 cores (benchmarks/SPEED.md)."""
    kwargs = [{**overrides, "render_mode": "rgb_array"} if render and i == 0 else overrides for i in range(num_envs)]
    return gym.vector.SyncVectorEnv([lambda kw=kw: gym.make(env_spec, **kw) for kw in kwargs])


def record_success(reached: np.ndarray, done: np.ndarray, info: dict) -> np.ndarray:
    """Mark the envs whose current (first) episode reports info["success"]; envs already done are ignored."""
    if "success" not in info:
        return reached
    success = np.asarray(info["success"], dtype=bool) & np.asarray(info.get("_success", True), dtype=bool)
    return reached | (success & ~done)


def evaluate(actor: Actor, envs: gym.vector.SyncVectorEnv, seeds: list[int], device, observe: Callable, frames=None):
    """One full episode per env with the deterministic action; returns (returns, reached the goal) per env. observe(obs)
    makes the network input. The vector env autoresets after an episode ends, so each env's first episode is counted
    through a done mask. With `frames` (a list), the first env's episode is rendered into it."""
    actor.eval()  # dropout off
    obs, _ = envs.reset(seed=seeds)
    returns, reached, done = np.zeros(envs.num_envs), np.zeros(envs.num_envs, bool), np.zeros(envs.num_envs, bool)
    while not done.all():
        if frames is not None and not done[0]:
            frames.append(envs.envs[0].render())
        action = actor.act(torch.as_tensor(observe(obs), device=device)).cpu().numpy()
        obs, reward, terminated, truncated, info = envs.step(action)
        returns += np.where(done, 0.0, reward)
        reached = record_success(reached, done, info)
        done |= terminated | truncated
    actor.train()
    return returns, reached


def reference_scores(dataset, env_task: Optional[str]):
    """(min, max, source) for the normalised score: the dataset's own, else D4RL's, else None. Kitchen always uses
    D4RL's 0 to 4 tasks: its episodes are scored on KITCHEN_EVAL envs, whatever scale the dataset's scores have."""
    if env_task == "kitchen":
        return (*D4RL_REF_SCORES["kitchen"], "D4RL's kitchen scale (100 x tasks completed / 4)")
    meta = dataset.storage.metadata
    if meta.get("ref_min_score") is not None and meta.get("ref_max_score") is not None:
        return meta["ref_min_score"], meta["ref_max_score"], "the dataset's ref_min_score/ref_max_score"
    if env_task in D4RL_REF_SCORES:
        return (*D4RL_REF_SCORES[env_task], f"D4RL's {env_task} constants (d4rl/infos.py)")
    return None, None, "no reference scores in the dataset and no D4RL constants for this env"


def make_envs(dataset, maze: bool, members: int, num_eval: int, render: bool = False):
    """Each member's online env and the vector env of evaluation episodes, from the dataset's eval spec: a Minari maze
    dataset records a continuing task of up to 1e6 steps (some with new random goals), the wrong env to act in; with
    continuing_task=False an episode ends at the goal (a termination, info["success"]), as D4RL's AntMaze episodes
    do. IK acts and evaluates in one env; a separate one keeps evaluation from cutting online episodes short."""
    spec, overrides = eval_env_spec(dataset), {"continuing_task": False} if maze else {}
    online = [gym.make(spec, **overrides) for _ in range(members)]
    return online, make_eval_envs(spec, num_eval, render=render, **overrides)


def check_video(envs, seed: int):
    """Fail now, not at the first evaluation, where --capture-video cannot render or write."""
    try:
        import moviepy  # noqa: F401  (gymnasium's save_video writes with it)

        envs.reset(seed=seed)
        envs.envs[0].render()
    except Exception as e:
        raise UserError(f"--capture-video cannot render ({first_line(e)}); on a headless machine set MUJOCO_GL=egl, "
                        "and pip install moviepy") from None


# ---- Pre-trained weights: the files --save-model writes at each phase end, and --checkpoint loads --------------------
def save_checkpoint(run_dir: Path, networks: Networks, args: Args, members: list, i: int, step: int, phase: str,
                    obs_dim: int, act_dim: int, info: dict):
    """Member i's `{exp_name}_{phase}.pt` in its folder: its networks and Adam state (no member axis), its own run's
    Args and the reward scale (not the replay buffer or the env)."""
    member = members[i]
    path = (run_dir if len(members) == 1 else run_dir / member.name) / f"{args.exp_name}_{phase}.pt"
    own = replace(args, seed=member.seed, num_seeds=1, expectile=[member.expectile], temperature=[member.temperature])
    torch.save({"args": asdict(own), "step": step, "phase": phase, "obs_dim": obs_dim, "act_dim": act_dim,
                "reward_scale": info["reward_scale"], **{n: member_state(getattr(networks, n), i) for n in NETS},
                "optimizers": [{j: {k: v if k == "step" else v[i].clone() for k, v in s.items()}
                                for j, s in opt.state_dict()["state"].items()} for opt in networks.optimizers]}, path)
    print(f"model saved to {path}")


def load_checkpoint(path: str, networks: Networks, args: Args, obs_dim: int, act_dim: int, info: dict) -> int:
    """Load a --save-model file into every member's networks (and Adam's moments, where it holds this version's);
    returns the updates it was trained for. A file that does not fit this run fails with one line."""
    members = len(networks.expectile)
    try:
        ckpt = torch.load(path, map_location=networks.value.net[0].weight.device, weights_only=True)
    except pickle.UnpicklingError:  # more than tensors inside: a checkpoint_{step}.pt keeps random-generator states
        raise UserError(f"{path} is not a --save-model file (a checkpoint_{{step}}.pt resumes with --resume)") from None
    except Exception as e:
        raise UserError(f"cannot read checkpoint {path} as a file saved by torch.save ({first_line(e)})") from None
    if not isinstance(ckpt, dict) or not {*NETS, "obs_dim", "act_dim", "args"} <= set(ckpt):
        raise UserError(f"{path} is not a checkpoint saved with --save-model by these scripts")
    trained, hidden = ckpt["args"].get("env_id", "?"), ckpt["args"].get("hidden_dim")
    scale = ckpt.get("reward_scale", 1.0)  # an iql_antmaze.py file has none: maze rewards are not scaled
    if (ckpt["obs_dim"], ckpt["act_dim"]) != (obs_dim, act_dim):
        raise UserError(f"checkpoint {path} has input {ckpt['obs_dim']} and action {ckpt['act_dim']} ({trained}), "
                        f"this run {obs_dim} and {act_dim}: another env, or --goal-input differs")
    if hidden != args.hidden_dim:
        raise UserError(f"checkpoint {path} has --hidden-dim {hidden}, this run {args.hidden_dim}: pass --hidden-dim "
                        f"{hidden}")
    if not math.isclose(scale, info["reward_scale"], rel_tol=1e-6):
        raise UserError(f"checkpoint {path} was trained on rewards scaled by {scale:.6g}, this run's by "
                        f"{info['reward_scale']:.6g} (another dataset, or --normalize-reward): Q and V would not fit")
    try:
        for name in NETS:
            getattr(networks, name).load_state_dict({k: torch.stack([v] * members) for k, v in ckpt[name].items()})
    except RuntimeError as e:  # e.g. a dropout layer more or less shifts the layer names
        raise UserError(f"checkpoint {path} does not fit these networks ({' '.join(str(e).split())[:200]}); files from "
                        "before the member axis (commit 05cdb50 or earlier) store layers as (out, in) and do not "
                        "load") from None
    if len(ckpt.get("optimizers", [])) == len(networks.optimizers):  # the Adam moments; the rates stay this run's
        for opt, state in zip(networks.optimizers, ckpt["optimizers"]):
            state = {i: {k: v if k == "step" else torch.stack([v] * members) for k, v in s.items()}
                     for i, s in state.items()}
            opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    else:
        print(f"note: {path} holds no optimiser state of this version (an offline script's, or from commit 20bd83a or "
              "earlier, before the actor and critics shared an Adam): Adam starts afresh")
    if trained != args.env_id:
        print(f"warning: checkpoint {path} was trained on {trained}, this run fine-tunes on {args.env_id}")
    if ckpt.get("phase") == "online":
        print(f"warning: {path} was saved after online fine-tuning, without its replay buffer and env: this starts a "
              "new online phase from its networks (a restart, not a resume)")
    return int(ckpt.get("step", ckpt["args"].get("total_steps", 0)))


# ---- Training state: checkpoints that resume exactly, and a clean stop on SIGINT / SIGTERM / SIGUSR1 / SIGUSR2 -------
STOPPED = 75  # exit status of a run stopped by a signal after saving a checkpoint (sysexits' EX_TEMPFAIL: retry)
NETS = ("actor", "critic", "target_critic", "value")


def save_state(path: str, step: int, networks: Networks, args: Args, eval_rngs: list, evaluations: list,
               extra: Optional[dict] = None) -> str:
    """All a resumed run needs to go on exactly (and `extra`); written to path.tmp, then renamed: never half-written."""
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
           "eval": [rng.bit_generator.state for rng in eval_rngs]}
    torch.save({"script": os.path.basename(__file__), "step": step, "args": asdict(args), "evaluations": evaluations,
                **(extra or {}), **{name: getattr(networks, name).state_dict() for name in NETS},
                "optimizers": [opt.state_dict() for opt in networks.optimizers],
                "actor_schedule": networks.actor_schedule.state_dict(), "rng": rng}, path + ".tmp")
    os.replace(path + ".tmp", path)
    return path


def restore_state(state: dict, networks: Networks, eval_rngs: list) -> tuple[int, list]:
    """Put a checkpoint (read by run_folder) into networks, optimisers, schedule, RNGs; returns (step, evaluations)."""
    try:
        for name in NETS:
            getattr(networks, name).load_state_dict(state[name])
    except RuntimeError as e:
        raise UserError(f"the checkpoint does not fit these networks ({' '.join(str(e).split())[:150]})") from None
    for opt, saved in zip(networks.optimizers, state["optimizers"]):
        lrs = [group["lr"] for group in opt.param_groups]  # this run's tensors, which the schedule and a CUDA graph use
        opt.load_state_dict(saved)  # it swaps in the saved ones and the saved `capturable`
        for group, lr in zip(opt.param_groups, lrs):
            group.update(lr=lr.fill_(float(group["lr"])), capturable=opt.defaults["capturable"])
    networks.actor_schedule.load_state_dict(state["actor_schedule"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    for eval_rng, saved in zip(eval_rngs, rng["eval"]):
        eval_rng.bit_generator.state = saved
    return state["step"], state["evaluations"]


def run_folder(args: Args):
    """(args, saved state or None, run folder). --resume continues a run in its own folder with its own settings,
    except this command's device flags (--cuda, --compile, --cudagraphs): bit-identical on the same device."""
    if not args.resume:
        name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
        return args, None, Path("runs") / name.replace("/", "-")
    path, script = args.resume, os.path.basename(__file__)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own file: numpy RNG states inside
    except Exception as e:
        raise UserError(f"cannot read checkpoint {path} ({first_line(e)})") from None
    if not isinstance(state, dict) or not {"step", "args", "rng", "optimizers"} <= set(state):
        raise UserError(f"{path} is not a checkpoint_{{step}}.pt file of this script (--save-model files don't resume)")
    if state.get("script", script) != script:
        raise UserError(f"{path} was written by {state['script']}, not {script}: resume it with {state['script']}")
    saved, known = set(state["args"]), {f.name for f in fields(Args)}
    differ = ([f"settings unknown here: {sorted(saved - known)}"] if saved - known else []) + (
        [f"settings missing: {sorted(known - saved)}"] if known - saved else []) + (
        [f"{len(state['optimizers'])} optimisers, not 2"] if len(state["optimizers"]) != 2 else [])
    if differ:
        raise UserError(f"{path} was written by another version of {script}, which this one cannot resume "
                        f"({'; '.join(differ)})")
    args = replace(Args(**state["args"]), resume=path, cuda=args.cuda, compile=args.compile, cudagraphs=args.cudagraphs)
    check_track(args)  # the run's own settings
    print(f"resuming {Path(path).parent.name} from step {state['step']:,} with its own settings (of this command's "
          "flags only --cuda, --compile and --cudagraphs are used)")
    return args, state, Path(path).parent


class StopSignal:
    """SIGINT (Ctrl-C), SIGTERM (pre-emption) and SIGUSR1/2 (SLURM's `--signal`, before a time limit) set a flag: the
    loop saves a checkpoint and exits STOPPED with the command that resumes it (at the last step it just finishes)."""

    def __init__(self):
        self.name = None
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, self.set)

    def set(self, signum, frame):
        self.name = signal.Signals(signum).name
        signal.signal(signum, signal.SIG_DFL)  # the same signal again stops the run at once

    def exit(self, step: int, path: str, args: Args):
        data = os.environ.get("MINARI_DATASETS_PATH")  # carried into the command, which quotes each path
        env = f"MINARI_DATASETS_PATH={shlex.quote(str(Path(data).resolve()))} " if data else ""
        flags = "".join(f" --{f}" for f in ("compile", "cudagraphs") if getattr(args, f))
        flags += "" if args.cuda else " --no-cuda"
        print(f"{self.name} at step {step:,}: saved {path}; continue with: {env}python "
              f"{shlex.quote(os.path.relpath(__file__))} --resume {shlex.quote(path)}{flags}", file=sys.stderr)
        sys.exit(STOPPED)


def progress_line(step: int, total: int, rate: float, last_eval: str, members: int = 1) -> str:
    """The line every script prints at each log step."""
    eta = int((total - step) / max(rate, 1e-9))
    return (f"step {step:,}/{total:,}  {rate:.0f} updates/s" + (f" ({rate * members:.0f} member-updates/s)" if members
            > 1 else "") + f"  ETA {eta // 3600}h{eta % 3600 // 60:02d}m{eta % 60:02d}s  last evaluation: {last_eval}")


def check_finite(losses: dict, step: int, members: list):
    """Stop the population on a NaN or infinite loss (per member), naming the member; log steps only (no extra sync)."""
    bad = [f"{tag} = {v}" + (f" (member {m.name})" if len(members) > 1 else "") for tag, values in losses.items()
           for m, v in zip(members, values) if not math.isfinite(v)]
    if bad:
        raise UserError(f"step {step:,}: {', '.join(bad)}; the run diverged (try a lower --learning-rate, "
                        "or check the data for extreme values)")


def make_writers(args: Args, run_dir: Path, start: int, device, texts: dict, members: list) -> list:
    """One TensorBoard run per member (the run folder itself for a single run, else `{run_dir}/{member}`), and one
    W&B run with --track; a resumed run continues without repeated steps."""
    single = len(members) == 1
    if args.track:
        import wandb

        if not single:  # one W&B run, each member's scalars under its folder's name
            wandb.tensorboard.patch(root_logdir=str(run_dir))
        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=single,
                   config=vars(args), name=run_dir.name, save_code=True)
    from torch.utils.tensorboard import SummaryWriter

    writers = [SummaryWriter(str(run_dir if single else run_dir / m.name), purge_step=start + 1 if start else None)
               for m in members]
    for m, writer in zip(members, writers):
        table = {**vars(args), "seed": m.seed, "expectile": m.expectile, "temperature": m.temperature,
                 "device used": device}
        rows = "".join(f"\n|{k}|{v}|" for k, v in table.items())
        for tag, text in {"hyperparameters": "|param|value|\n|-|-|" + rows, **texts}.items():
            writer.add_text(tag, text)
    print(f"run folder: {run_dir}" + ("" if single else f" ({len(members)} members: "
                                          f"{', '.join(m.name for m in members)})"))
    return writers


def main(args: Args):
    check_args(args)
    args, state, run_dir = run_folder(args)
    given_args = args  # before the domain defaults fill it in: what a checkpoint keeps
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # Data: the dataset fills the start of the replay buffer, on the training device.
    t0 = time.time()
    data, dataset, info = load_data(args)
    (n, obs_dim), act_dim, maze = data.observations.shape, data.actions.shape[1], info["maze"]
    if info["domain"] is None:
        print(f"note: {dataset.env_spec.id if dataset.env_spec else 'this env'} is none of the known domains: "
              "the locomotion hyperparameters apply, and its rewards stay unscaled")
    args, table = with_domain_defaults(args, info["domain"] or "locomotion")
    members = population(args)
    buffer = ReplayBuffer(data, args.buffer_size, device, len(members), args.online_steps)
    del data
    reward_note = "rewards r - 1, terminal at the goal" if maze else f"reward scale {info['reward_scale']:.4g}"
    ids = "" if info["dataset_ids"] == [args.env_id] else f" ({' + '.join(info['dataset_ids'])})"
    print(f"loaded {args.env_id}{ids}: {n:,} transitions, input {obs_dim}, action "
          f"{act_dim}, {reward_note} ({time.time() - t0:.1f}s); replay buffer of {args.buffer_size:,} on {device}")
    if args.batch_size > n:
        raise UserError(f"--batch-size {args.batch_size} is larger than the dataset ({n} transitions)")
    print("hyperparameters:\n" + "\n".join(table))

    online_envs, envs = make_envs(dataset, maze, len(members), len(members) * args.eval_episodes, args.capture_video)
    eval_spec = envs.envs[0].spec
    ref_min, ref_max, ref_source = (0.0, 1.0, "100 x success rate") if maze else reference_scores(dataset, info["task"])
    print(f"online and evaluation env: {eval_spec.id}" + (" with continuing_task=False" if maze else "")
          + f", at most {eval_spec.max_episode_steps} steps; normalised score from {ref_source}"
          + ("" if ref_min is not None else ": logging the return only"))
    if args.capture_video:
        check_video(envs, args.seed)
    eval_rngs = [np.random.default_rng(m.seed) for m in members]  # fresh, reproducible episode seeds per evaluation
    observe = partial(network_input, goal_input=args.goal_input)

    networks = make_networks(obs_dim, act_dim, args, device, None, members)  # constant rates (IK fine-tune)
    actor = networks.actor
    mode = "+".join(m for m in ("compile", "cudagraphs") if getattr(args, m)) or None
    train_step = make_train_step(lambda: buffer.sample(args.batch_size), networks, args, mode)

    # Updates are counted over both phases: 1..offline_end on the dataset, then online_steps more online. Per member:
    # its evaluations (step, return, normalised score, success, summary) and its online episodes so far.
    start, evaluations, episodes = 0, [[] for _ in members], [0] * len(members)
    if state is not None:
        start, evaluations = restore_state(state, networks, eval_rngs)
        buffer.load_state_dict(state["buffer"])
        offline_end, episodes = state["offline_end"], state["online_episodes"]
    elif args.checkpoint:
        start = offline_end = load_checkpoint(args.checkpoint, networks, args, obs_dim, act_dim, info)
        print(f"loaded {args.checkpoint} ({start:,} updates): pre-training skipped (--offline-steps is not used)")
    else:
        offline_end = args.offline_steps
    end = offline_end + args.online_steps

    writers = make_writers(args, run_dir, start, device, {
        "domain defaults": "\n".join(table),
        "dataset": f"{args.env_id} -> {', '.join(info['dataset_ids'])}; {n} transitions; reward scale "
                   f"{info['reward_scale']}; scores from {ref_source}; online phase from update {offline_end}"},
        members)
    key = 3 if maze else 2 if ref_min is not None else 1  # what a member is scored by
    name = ("success rate", "normalized", "return")[3 - key]

    def evaluate_and_log(step: int):
        frames = [] if args.capture_video else None
        seeds = [s for rng in eval_rngs for s in rng.integers(2**31, size=args.eval_episodes).tolist()]
        returns, reached = evaluate(actor, envs, seeds, device, observe, frames)
        if frames:
            from gymnasium.utils.save_video import save_video

            save_video(frames, f"videos/{run_dir.name}", fps=envs.envs[0].metadata["render_fps"],
                       name_prefix=f"eval-step-{step}", episode_trigger=lambda _: True)
        for member, writer, r, done, member_evaluations in zip(members, writers, returns.reshape(len(members), -1),
                                                               reached.reshape(len(members), -1), evaluations):
            success = done.mean() if maze else None
            score = None if ref_min is None else 100 * (success if maze else (r.mean() - ref_min) / (ref_max - ref_min))
            for tag, value in (("episodic_return", r.mean()), ("success_rate", success), ("normalized_score", score)):
                if value is not None:
                    writer.add_scalar(f"charts/{tag}", value, step)
            summary = f"return {r.mean():.2f}" + (f", success {success:.2f} ({done.sum()}/{len(done)})" if maze else "")
            summary += "" if score is None else f", normalized {score:.2f}"
            member_evaluations.append((step, r.mean(), score, success, summary))
            print(f"evaluation at step {step:,} ({'online' if step > offline_end else 'offline'}): {summary}"
                  + (f"  {member.name}" if len(members) > 1 else ""), flush=True)

    def last_evaluation():
        if not evaluations[0]:
            return "none yet"
        scores = sorted(e[-1][key] for e in evaluations)
        return evaluations[0][-1][4] if len(members) == 1 else \
            f"{name} best member {scores[-1]:.2f}, worst {scores[0]:.2f}"

    phase_start, phase_time = start, time.time()

    def phase_change(step: int):
        nonlocal phase_start, phase_time
        for writer in writers:
            writer.add_scalar("charts/online_start_step", step, step)
        print(f"offline phase done after {step:,} updates ({step - start:,} in this run, "
              f"{time.time() - phase_time:.0f}s); online phase: {args.online_steps:,} steps", flush=True)
        if args.save_model and step > start:
            for i in range(len(members)):
                save_checkpoint(run_dir, networks, args, members, i, step, "offline", obs_dim, act_dim, info)
        phase_start, phase_time = step, time.time()

    if offline_end == start and state is None:  # the online phase starts right away: evaluate its first policy
        evaluate_and_log(start)
        phase_change(start)
    # A run resumed inside the online phase starts new episodes (the simulator's state is not saved), on new seeds.
    obs = [e.reset(seed=m.seed if start <= offline_end else m.seed + start)[0] for e, m in zip(online_envs, members)]
    episode_return, episode_length = np.zeros(len(members)), np.zeros(len(members), dtype=int)
    stop, closing = StopSignal(), (*writers, *online_envs, envs)
    for step in range(start + 1, end + 1):
        if step > offline_end:  # online: one env step per member with a sample of its policy, stored in the buffer
            results = online_step(online_envs, obs, actor, buffer, observe, info, device)
            obs, rewards, terminated, truncated, env_infos = map(list, zip(*results))
            episode_return += rewards
            episode_length += 1
            for i in np.flatnonzero(np.logical_or(terminated, truncated)):  # log the member's episode, start another
                episodes[i] += 1
                logged = {"return": episode_return[i], "length": episode_length[i], "episodes": episodes[i]}
                if maze:
                    logged["success"] = float(env_infos[i].get("success", False))
                for tag, value in logged.items():
                    writers[i].add_scalar(f"charts/online_{tag}", value, step)
                obs[i], _ = online_envs[i].reset()
                episode_return[i], episode_length[i] = 0.0, 0

        metrics = train_step()

        if step % args.log_freq == 0:
            losses = dict(zip(metrics, torch.stack(list(metrics.values())).tolist()))  # the one host sync
            check_finite(losses, step, members)
            rate = (step - phase_start) / (time.time() - phase_time)
            for i, writer in enumerate(writers):
                for tag, values in losses.items():
                    writer.add_scalar(tag, values[i], step)
                writer.add_scalar("charts/actor_lr", args.learning_rate, step)
                writer.add_scalar("charts/buffer_size", buffer.count, step)
                writer.add_scalar("charts/SPS", int(rate), step)
            print(progress_line(step, end, rate, last_evaluation(), len(members)), flush=True)

        if step % args.eval_freq == 0 or step in (offline_end, end):
            evaluate_and_log(step)
        if step == offline_end:
            phase_change(step)

        stopping = stop.name is not None and step < end
        if stopping or (args.checkpoint_freq and (step % args.checkpoint_freq == 0 or step in (offline_end, end))):
            extra = {"offline_end": offline_end, "online_episodes": episodes, "buffer": buffer.state_dict()}
            path = save_state(str(run_dir / f"checkpoint_{step}.pt"), step, networks, given_args, eval_rngs,
                              evaluations, extra)
            if stopping:
                for x in closing:
                    x.close()
                stop.exit(step, path, args)

    # Each member's evaluations at the phase change and at the end, and its best one (selected on the evaluations
    # themselves, so optimistic).
    for i, (member, member_evaluations) in enumerate(zip(members, evaluations)):
        at_change = next(e for e in member_evaluations if e[0] == offline_end)
        final, best = member_evaluations[-1], max(member_evaluations, key=lambda e: e[key])
        line = f"offline end (step {at_change[0]:,}): {name} {at_change[key]:.2f}"
        if args.online_steps > 0:
            line += f"; online end (step {final[0]:,}): {name} {final[key]:.2f} over {episodes[i]} online episodes"
        print((f"{member.name}: " if len(members) > 1 else "") + f"{line}; best evaluation (step {best[0]:,}): "
              f"{best[key]:.2f}")
        if args.save_model and args.online_steps > 0:
            save_checkpoint(run_dir, networks, args, members, i, end, "online", obs_dim, act_dim, info)
    if args.save_model and end == start and args.online_steps == 0:
        print("note: --save-model saved nothing: this run made no updates")
    for x in closing:
        x.close()


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except UserError as e:  # user mistakes: one line, no traceback
        sys.exit(f"error: {e}")
