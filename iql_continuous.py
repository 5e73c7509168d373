"""Offline Implicit Q-Learning (IQL) on continuous-control Minari datasets: MuJoCo locomotion, Adroit, Kitchen.

Kostrikov, Nair & Levine, "Offline Reinforcement Learning with Implicit Q-Learning", ICLR 2022 (arXiv 2110.06169).
Defaults follow the authors' JAX code (github.com/ikostrikov/implicit_q_learning, "IK" below), per domain
(DOMAIN_DEFAULTS); comments say where a popular port differs.

    python iql_continuous.py --env-id halfcheetah-medium-v2
    python iql_continuous.py --env-id pen-human-v1

One update (IK `learner.py`: the policy step runs between the paper's V and Q updates, which Algorithm 1 runs
before a separate policy extraction):
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
import random
import re
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import tyro

try:
    with contextlib.redirect_stderr(io.StringIO()):  # hush a notice about Adroit reward versions printed on import
        import gymnasium_robotics  # AdroitHand* and FrankaKitchen envs
except (ImportError, AttributeError) as e:  # MuJoCo's renderer could not load the library MUJOCO_GL names
    sys.exit(f"error: importing gymnasium_robotics failed ({type(e).__name__}: {e}) with MUJOCO_GL="
             f"{os.environ.get('MUJOCO_GL')}: set MUJOCO_GL=egl, or install that OpenGL library")
gym.register_envs(gymnasium_robotics)


@dataclass
class Args:
    """Offline IQL on a locomotion, Adroit or Kitchen dataset (a D4RL name or a Minari id)."""

    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of the experiment (torch, numpy, random, evaluation episodes); a population's first member's"""
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
    """if toggled, record the first evaluation episode of each evaluation (member 0's) under `videos/{run_name}`"""
    save_model: bool = False
    """if toggled, save every network and the Args to `runs/{run_name}/{exp_name}.pt` at the end (a population:
    one file per member, in `runs/{run_name}/{member}/`)"""
    env_id: str = "halfcheetah-medium-v2"
    """a D4RL name (hopper-medium-expert-v2, pen-human-v1, kitchen-partial-v0, ...) or a Minari id namespace/name-vN"""
    normalize_reward: bool = True
    """scale locomotion rewards by 1000 / (max - min trajectory return), as IK does (other domains: unscaled)"""
    total_steps: int = 1_000_000
    """number of gradient updates"""
    batch_size: int = 256
    """transitions per update"""
    learning_rate: float = 3e-4
    """Adam learning rate of the actor, critics and value (the actor's decays to 0 by a cosine)"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak rate of the target critics (IK's name; the paper's tau is the expectile)"""
    expectile: Optional[list[float]] = None
    """expectile of the value regression (0.5 = mean, towards 1 = max over dataset actions); several values are a
    sweep; None: domain default"""
    temperature: Optional[list[float]] = None
    """inverse temperature beta of the advantage weights (0 is behaviour cloning); several values are a sweep; None:
    domain default"""
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
    eval_freq: int = 5000
    """evaluate every this many updates (and at the end)"""
    eval_episodes: int = 10
    """episodes per evaluation (of each member), run at once in a vector env"""
    log_freq: int = 1000
    """copy the losses off the device and log them every this many updates"""
    checkpoint_freq: int = 100_000
    """save the training state to `runs/{run_name}/checkpoint_{step}.pt` every this many updates and at the end (0:
    only on a stop signal)"""
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


# ---- Data: D4RL names, domains and their defaults, Minari episodes -> transition tensors -----------------------------
# D4RL names -> Minari ids ({} filled from the name; several ids are concatenated, as D4RL built medium-expert).
# medium-replay and random have no public Minari counterpart (Minari issue 318): None.
D4RL_TO_MINARI = {
    r"(halfcheetah|hopper|walker2d)-(medium|expert)-v2": ["mujoco/{0}/{1}-v0"],
    r"(halfcheetah|hopper|walker2d)-medium-expert-v2": ["mujoco/{0}/medium-v0", "mujoco/{0}/expert-v0"],
    r"(halfcheetah|hopper|walker2d)-(medium-replay|random)-v2": None,
    r"(pen|door|hammer|relocate)-(human|cloned|expert)-v[01]": ["D4RL/{0}/{1}-v2"],
    r"kitchen-(complete|partial|mixed)-v0": ["D4RL/kitchen/{0}-v2"],
}
D4RL_REF_SCORES = {  # D4RL's reference returns (d4rl/infos.py): score = 100 * (R - min) / (max - min)
    "hopper": (-20.272305, 3234.3), "halfcheetah": (-280.178953, 12135.0), "walker2d": (1.629008, 4592.3),
    "pen": (96.262799, 3076.8331017826877), "door": (-56.512833, 2880.5693087298737),
    "hammer": (-274.856578, 12794.134825156867), "relocate": (-6.425911, 4233.877797728884), "kitchen": (0.0, 4.0)}
ENV_TO_TASK = {"Hopper": "hopper", "HalfCheetah": "halfcheetah", "Walker2d": "walker2d", "AdroitHandPen": "pen",
               "AdroitHandDoor": "door", "AdroitHandHammer": "hammer", "AdroitHandRelocate": "relocate",
               "FrankaKitchen": "kitchen"}
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
    rules = [(0 < e < 1, f"--expectile must be in (0, 1), got {e}") for e in args.expectile or []]
    rules += [(t >= 0, f"--temperature must be >= 0 (0 is behaviour cloning), got {t}") for t in args.temperature or []]
    rules += [(getattr(args, n) > 0, f"--{n.replace('_', '-')} must be positive, got {getattr(args, n)}") for n in (
        "learning_rate", "max_weight", "total_steps", "batch_size", "eval_freq", "eval_episodes", "log_freq",
        "hidden_dim", "num_seeds")]
    rules += [(getattr(args, n) != [], f"--{n} needs at least one value") for n in SWEEPABLE]
    rules += [(len(set(getattr(args, n) or [])) == len(getattr(args, n) or []), f"--{n} has a value twice: "
               f"{getattr(args, n)}") for n in SWEEPABLE]
    rules += [(args.dropout is None or 0 <= args.dropout < 1, f"--dropout must be in [0, 1), got {args.dropout}"),
              (0 <= args.gamma <= 1, f"--gamma must be in [0, 1], got {args.gamma}"),
              (0 < args.tau <= 1, f"--tau must be in (0, 1], got {args.tau}"),
              (args.checkpoint_freq >= 0, f"--checkpoint-freq must be >= 0, got {args.checkpoint_freq}"),
              (not args.cudagraphs or (args.cuda and torch.cuda.is_available()), "--cudagraphs needs a CUDA device"),
              (args.resume is None or Path(args.resume).is_file(), f"--resume {args.resume}: no such file")]
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
    for pattern, ids in D4RL_TO_MINARI.items():
        m = re.fullmatch(pattern, env_id)
        if m and ids is None:
            raise UserError(f"'{env_id}' has no Minari counterpart (Minari hosts no {m[2]} locomotion data; Minari "
                            f"issue 318). Available: {m[1]}-medium-v2, {m[1]}-expert-v2, {m[1]}-medium-expert-v2, "
                            f"or any Minari id such as mujoco/{m[1]}/simple-v0.")
        if m:
            return [i.format(*m.groups()) for i in ids]
    if re.fullmatch(r"(antmaze|maze2d)-.*", env_id):
        raise UserError(f"'{env_id}' is a maze dataset: use iql_antmaze.py for it.")
    if "/" in env_id and MINARI_ID.match(env_id):
        return [env_id]
    raise UserError(f"unknown env id '{env_id}'. Use a D4RL name {{halfcheetah,hopper,walker2d}}-{{medium,expert,"
                    "medium-expert}-v2, {pen,door,hammer,relocate}-{human,cloned,expert}-v1, kitchen-{complete,partial,"
                    "mixed}-v0, or a Minari id namespace/name-vN (mujoco/hopper/simple-v0).")


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


def sample_batch(data: Batch, batch_size: int, members: int) -> Batch:
    """Each member's uniform minibatch, (members, batch_size, ...), indices drawn on the data's device (no sync)."""
    idx = torch.randint(len(data.rewards), (members, batch_size), device=data.rewards.device)
    return Batch(*(x[idx] for x in data))


def load_data(args: Args, device):
    """Load, flatten and transform the dataset(s); returns (Batch on device, first dataset, info dict)."""
    dataset_ids = resolve_dataset_ids(args.env_id)
    datasets = [load_minari_dataset(i) for i in dataset_ids]
    first = datasets[0]
    env_name = first.env_spec.name if first.env_spec is not None else ""
    domain, task = env_domain(env_name), ENV_TO_TASK.get(env_name)
    if domain == "maze":
        raise UserError(f"'{args.env_id}' is a maze dataset ({env_name}): use iql_antmaze.py for it.")
    if isinstance(first.observation_space, gym.spaces.Dict) and domain != "kitchen":
        raise UserError(f"'{args.env_id}' has dict observations ({', '.join(first.observation_space.spaces)}) from "
                        f"{env_name or 'an unknown env'}: this script takes flat observations and Kitchen's.")
    check_actions(first.action_space, args.env_id)
    data = flatten_episodes(read_episodes(datasets))
    check_data(data, args.env_id)
    scale = 1.0  # only locomotion rewards are scaled (IK); Adroit and Kitchen rewards stay as stored
    if args.normalize_reward and domain == "locomotion":
        scale = reward_scale(data["rewards"], data["episode_ends"])
    data["rewards"] = data["rewards"] * np.float32(scale)
    data["masks"] = 1.0 - data["terminals"].astype(np.float32)
    batch = Batch(*(torch.from_numpy(data[k]).to(device) for k in Batch._fields))
    return batch, first, {"domain": domain, "task": task, "reward_scale": scale, "dataset_ids": dataset_ids}


# ---- Evaluation ------------------------------------------------------------------------------------------------------
# D4RL's Kitchen evaluation: each task pays once and is then removed; the episode ends when all are done (the return
# counts the tasks completed). Minari's Kitchen data were recorded with tasks kept, so their rewards repeat on every
# step while a task stays done: training uses them as stored, evaluation scores the D4RL way.
KITCHEN_EVAL = {"remove_task_when_completed": True, "terminate_on_tasks_completed": True}


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


def evaluate(actor: Actor, envs: gym.vector.SyncVectorEnv, seeds: list[int], device, frames=None) -> np.ndarray:
    """One full episode per env with the deterministic action; returns each env's undiscounted return. The vector env
    autoresets, so each env's first episode is counted through a done mask; `frames` (a list) gets env 0's frames."""
    actor.eval()  # dropout off
    obs, _ = envs.reset(seed=seeds)
    returns, done = np.zeros(envs.num_envs), np.zeros(envs.num_envs, dtype=bool)
    while not done.all():
        if frames is not None and not done[0]:
            frames.append(envs.envs[0].render())
        action = actor.act(torch.as_tensor(flat_observations(obs), dtype=torch.float32, device=device)).cpu().numpy()
        obs, reward, terminated, truncated, _ = envs.step(action)
        returns += np.where(done, 0.0, reward)
        done |= terminated | truncated
    actor.train()
    return returns


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


def check_video(envs, seed: int):
    """Fail now, not at the first evaluation, where --capture-video cannot render or write."""
    try:
        import moviepy  # noqa: F401  (gymnasium's save_video writes with it)

        envs.reset(seed=seed)
        envs.envs[0].render()
    except Exception as e:
        raise UserError(f"--capture-video cannot render ({first_line(e)}); on a headless machine set MUJOCO_GL=egl, "
                        "and pip install moviepy") from None


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

    t0 = time.time()
    data, dataset, info = load_data(args, device)  # the whole dataset lives on the training device
    (n, obs_dim), act_dim = data.observations.shape, data.actions.shape[1]
    ids = "" if info["dataset_ids"] == [args.env_id] else f" ({' + '.join(info['dataset_ids'])})"
    print(f"loaded {args.env_id}{ids}: {n:,} transitions, obs {obs_dim}, action "
          f"{act_dim}, reward scale {info['reward_scale']:.4g} ({time.time() - t0:.1f}s) on {device}")
    if info["domain"] is None:
        print(f"note: {dataset.env_spec.id if dataset.env_spec else 'this env'} is none of the known domains: the "
              "locomotion hyperparameters apply, and its rewards stay unscaled")
    args, table = with_domain_defaults(args, info["domain"] or "locomotion")
    print("hyperparameters:\n" + "\n".join(table))
    if args.batch_size > n:
        raise UserError(f"--batch-size {args.batch_size} is larger than the dataset ({n} transitions)")
    members = population(args)
    ref_min, ref_max, ref_source = reference_scores(dataset, info["task"])
    print(f"normalised score from {ref_source}" + ("" if ref_min is not None else ": logging the return only"))
    envs = make_eval_envs(eval_env_spec(dataset), len(members) * args.eval_episodes,
                          render=args.capture_video, **(KITCHEN_EVAL if info["domain"] == "kitchen" else {}))
    if args.capture_video:
        check_video(envs, args.seed)
    eval_rngs = [np.random.default_rng(m.seed) for m in members]  # fresh, reproducible episode seeds per evaluation

    networks = make_networks(obs_dim, act_dim, args, device, args.total_steps, members)
    mode = "+".join(m for m in ("compile", "cudagraphs") if getattr(args, m)) or None
    train_step = make_train_step(lambda: sample_batch(data, args.batch_size, len(members)), networks, args, mode)
    start, evaluations = (0, [[] for _ in members]) if state is None else restore_state(state, networks, eval_rngs)
    writers = make_writers(args, run_dir, start, device, {  # evaluations: each member's (step, return, score)
        "domain defaults": "\n".join(table),
        "dataset": f"{args.env_id} -> {', '.join(info['dataset_ids'])}; {n} transitions; reward scale "
                   f"{info['reward_scale']}; scores from {ref_source}"}, members)
    key, scored = (2, "normalized") if ref_min is not None else (1, "return")  # what evaluations[member][-1][key] is

    def last_evaluation():  # one run's last score, or the best and worst member's
        if not evaluations[0]:
            return "none yet"
        if len(members) == 1:
            e = evaluations[0][-1]
            return f"return {e[1]:.2f}" + (f", normalized {e[2]:.2f}" if e[2] is not None else "")
        scores = sorted(e[-1][key] for e in evaluations)
        return f"{scored} best member {scores[-1]:.2f}, worst {scores[0]:.2f}"

    start_time, stop = time.time(), StopSignal()
    for step in range(start + 1, args.total_steps + 1):
        metrics = train_step()

        if step % args.log_freq == 0:
            losses = dict(zip(metrics, torch.stack(list(metrics.values())).tolist()))  # the one host sync
            check_finite(losses, step, members)
            rate = (step - start) / (time.time() - start_time)
            actor_lr = args.learning_rate * cosine_decay(step - 1, args.total_steps)
            for i, writer in enumerate(writers):
                for tag, values in losses.items():
                    writer.add_scalar(tag, values[i], step)
                writer.add_scalar("charts/actor_lr", actor_lr, step)
                writer.add_scalar("charts/SPS", int(rate), step)
            print(progress_line(step, args.total_steps, rate, last_evaluation(), len(members)), flush=True)

        if step % args.eval_freq == 0 or step == args.total_steps:
            frames = [] if args.capture_video else None
            seeds = [s for rng in eval_rngs for s in rng.integers(2**31, size=args.eval_episodes).tolist()]
            returns = evaluate(networks.actor, envs, seeds, device, frames).reshape(len(members), -1)
            if frames:
                from gymnasium.utils.save_video import save_video

                save_video(frames, f"videos/{run_dir.name}", fps=envs.envs[0].metadata["render_fps"],
                           name_prefix=f"eval-step-{step}", episode_trigger=lambda _: True)
            for member, writer, r, member_evaluations in zip(members, writers, returns, evaluations):
                score = None if ref_min is None else 100 * (r.mean() - ref_min) / (ref_max - ref_min)
                writer.add_scalar("charts/episodic_return", r.mean(), step)
                if score is not None:
                    writer.add_scalar("charts/normalized_score", score, step)
                member_evaluations.append((step, r.mean(), score))
                print(f"step {step:>8,}  return {r.mean():9.2f} +- {r.std():7.2f}"
                      + (f"  normalized {score:7.2f}" if score is not None else "")
                      + (f"  {member.name}" if len(members) > 1 else "")
                      + f"  SPS {int((step - start) / (time.time() - start_time))}", flush=True)

        stopping = stop.name is not None and step < args.total_steps
        if stopping or (args.checkpoint_freq and (step % args.checkpoint_freq == 0 or step == args.total_steps)):
            path = save_state(str(run_dir / f"checkpoint_{step}.pt"), step, networks, given_args, eval_rngs,
                              evaluations)
            if stopping:
                for closing in (*writers, envs):
                    closing.close()
                stop.exit(step, path, args)

    for i, (member, member_evaluations) in enumerate(zip(members, evaluations)):
        final, best = member_evaluations[-1], max(member_evaluations, key=lambda e: e[key])
        print((f"{member.name}: " if len(members) > 1 else "") + f"final (step {final[0]:,}): {scored} "
              f"{final[key]:.2f}; best evaluation (step {best[0]:,}): {best[key]:.2f}")
        if args.save_model:  # one file per member, without the member axis
            path = run_dir / ("" if len(members) == 1 else member.name) / f"{args.exp_name}.pt"
            torch.save({"args": asdict(replace(args, seed=member.seed, num_seeds=1, expectile=[member.expectile],
                                               temperature=[member.temperature])),
                        "obs_dim": obs_dim, "act_dim": act_dim, "reward_scale": info["reward_scale"],
                        **{name: member_state(getattr(networks, name), i) for name in NETS}}, path)
            print(f"model saved to {path}")
    for closing in (*writers, envs):
        closing.close()


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except UserError as e:  # user mistakes: one line, no traceback
        sys.exit(f"error: {e}")
