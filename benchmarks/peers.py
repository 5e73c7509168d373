"""Update speed of iql_continuous.py next to two outside IQL implementations, run unchanged, on one Minari dataset.

    python benchmarks/peers.py --corl PEERS/iql.py --ik PEERS/implicit_q_learning --jax-python JAXVENV/bin/python \
        --compile
    python benchmarks/peers.py --corl PEERS/iql.py --env-id mujoco/hopper/medium-v0 --rounds 6 --updates 1000

The programs:
  - ours: iql_continuous.py's own train step (sample_batch + update + the actor's cosine schedule), built as
    benchmarks/speed.py's ScriptUpdate builds it, one member with the locomotion values (expectile 0.7,
    temperature 3.0); with `--compile` also `ours --compile`, the same step as `--compile` builds it (the losses
    through torch.compile), compiled during the warm-up;
  - CORL: `ImplicitQLearning.train(ReplayBuffer.sample(256))` from CORL's algorithms/offline/iql.py
    (github.com/tinkoff-ai/CORL), with its own TwinQ, ValueFunction, GaussianPolicy, Adam optimisers and
    cosine-annealed actor learning rate, expectile (iql_tau) 0.7, beta 3.0;
  - authors: the authors' JAX `Learner.update` (github.com/ikostrikov/implicit_q_learning, learner.py), built
    with the locomotion config's values (2x256, expectile 0.7, temperature 3.0, cosine actor schedule), fed
    batches of their `Batch` namedtuple (dataset_utils.py) drawn with np.random.randint as their `Dataset.sample`
    draws them.
Every program gets the same transitions (iql_continuous.py's `load_data`: IK's reward scaling, masks from the
terminations), batch 256, 2x256 networks, and every timing includes drawing the batches. `--threads` sets torch's
threads for ours and CORL; the authors' process is pinned to that many cores (XLA sizes its CPU thread pool by the
cores it may use).

What is measured: each program is warmed up once (`--warmup` updates; the authors' jitted update compiles then),
then in each of `--rounds` rounds ours, CORL and the authors' each run `--updates` updates in turn, one at a time,
the machine's drift being shared by the three timings of a round. Reported: each program's median updates/s over
the rounds and, for each peer, the median over rounds of that round's (ours / peer) ratio.

The peers' files are run as they are, from where they were put: nothing of theirs is copied here. Only the I/O
around them is ours:
  - stand-ins for the modules their files import but the timed code never calls: `d4rl`, `gym` (class bases and
    annotations only), `wandb`, `pyrallis` (`wrap()` becomes a no-op decorator), and, for the authors' code when
    `tensorflow_probability.substrates.jax` does not import with the installed jax, a diagonal normal in its place
    (the only distribution their IQL configs build: `MultivariateNormalDiag`'s `log_prob` and `sample`);
  - for jax and flax releases newer than their code: `jax.tree_multimap` (now `jax.tree_util.tree_map`), flax's
    `flax_return_frozendict` switched on (their `Model.create` unpacks `FrozenDict.pop`), and, while their modules
    are imported, `jax.jit` ignoring `static_argnames` the function has no parameter of (policy.py names
    `distribution`; newer jax raises where older jax ignored it).
The authors' code runs in its own process, under `--jax-python` (a virtualenv with jax, flax and optax; this
python by default). The parent writes the transitions to a temporary .npz, starts the process once (it builds the
Learner and warms up, then says it is ready), and in every round, after ours and CORL, sends it one line with the
number of updates; the process times them, blocks on the last update's result (`jax.block_until_ready`: the
jitted update runs asynchronously, as in their training loop) and answers with one JSON line. So the three
timings of a round never overlap, and the JAX process sits idle on its stdin while the others are timed.

Prints a table and writes JSON (`--out`), holding every round's rates and the order in which the timings ran.
"""

import collections
import contextlib
import importlib
import importlib.machinery
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BATCH, HIDDEN, EXPECTILE, TEMPERATURE, DECAY_STEPS, SEED = 256, 256, 0.7, 3.0, 1_000_000, 1
FIELDS = ("observations", "actions", "rewards", "masks", "next_observations")  # the authors' Batch, in its order
CORL_NAMES = ("ReplayBuffer", "TwinQ", "ValueFunction", "GaussianPolicy", "ImplicitQLearning")
CORL_HELP = "pass --corl PATH: CORL's algorithms/offline/iql.py (github.com/tinkoff-ai/CORL), exported as it is"
IK_HELP = ("pass --ik PATH: a folder holding the files of github.com/ikostrikov/implicit_q_learning (learner.py, "
           "critic.py, actor.py, ...)")
COMPILED = "ours --compile"
JAX_HELP = "pass --jax-python PATH: the python of a virtualenv with jax, flax and optax"


@dataclass
class Args:
    corl: Optional[str] = None
    """CORL's algorithms/offline/iql.py, exported unchanged (not given: CORL is skipped)"""
    ik: Optional[str] = None
    """the folder of the authors' repository, with learner.py (not given: the authors' code is skipped)"""
    jax_python: Optional[str] = None
    """the python that runs the authors' JAX code (None: this python)"""
    env_id: Optional[str] = None
    """a Minari id or a D4RL name; None: the 1M-step HalfCheetah-shaped dataset that benchmarks/speed.py caches"""
    rounds: int = 4
    """alternating rounds (ours, CORL, authors); medians over them are reported"""
    updates: int = 500
    """updates in each program's timing of a round"""
    warmup: int = 100
    """updates each program runs once, untimed, before the first round"""
    threads: int = 2
    """torch threads for ours and CORL; CPU cores the authors' JAX process may use"""
    compile: bool = False
    """also time our --compile train step (`ours --compile`), with its own ratios to the peers"""
    out: str = "benchmarks/peers.json"
    """where the JSON results go"""


class PeerError(Exception):
    """A user error: printed as one `error: ...` line."""


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


# ----------------------------------------------------------------------------------------------
# Stand-ins for what the peers import but the timed code never uses
# ----------------------------------------------------------------------------------------------
def old_stack_stubs() -> dict:
    """Empty modules for the old stack the peers' files import at the top: D4RL loading, old gym, W&B and pyrallis
    are used only by their training scripts' own I/O, which is replaced here."""

    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        return m

    def wrap(*_, **__):  # pyrallis.wrap() decorates CORL's train(): leave the function as it is
        return lambda fn: fn

    gym = module("gym", Env=object, spaces=types.SimpleNamespace(Box=object), wrappers=types.SimpleNamespace())
    return {"d4rl": module("d4rl"), "gym": gym, "wandb": module("wandb"), "pyrallis": module("pyrallis", wrap=wrap)}


@contextlib.contextmanager
def stand_ins(modules: dict):
    """`modules` in sys.modules for the duration, then sys.modules as it was (this process goes on to import the
    real gymnasium and may have a real gym)."""
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, m in saved.items():
            if m is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = m


def load_corl(path: str) -> types.ModuleType:
    """CORL's file, executed as it is (under the stand-ins) as a module of its own."""
    file = Path(path)
    if not file.is_file():
        raise PeerError(f"--corl {path}: no such file; {CORL_HELP}")
    loader = importlib.machinery.SourceFileLoader("corl_iql", str(file))  # any file name, .py or not
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    try:
        with stand_ins({**old_stack_stubs(), loader.name: module}):  # its dataclasses look themselves up there
            loader.exec_module(module)
    except Exception as e:
        raise PeerError(f"--corl {path} did not load ({first_line(e)}); {CORL_HELP}") from None
    missing = [n for n in CORL_NAMES if not hasattr(module, n)]
    if missing:
        raise PeerError(f"--corl {path} has no {', '.join(missing)}: is it CORL's algorithms/offline/iql.py? "
                        f"{CORL_HELP}")
    return module


# ----------------------------------------------------------------------------------------------
# The programs: each warms up once, then times `n` updates (batch sampling included) per call
# ----------------------------------------------------------------------------------------------
class InProcess:
    def __init__(self, step):
        self.step = step

    def warm_up(self, n: int):
        for _ in range(n):
            self.step()

    def time(self, n: int) -> dict:
        # Both rounds' ends on the wall clock (comparable with the JAX process's), the rate from perf_counter.
        start, t = time.time(), time.perf_counter()
        for _ in range(n):
            self.step()
        seconds = time.perf_counter() - t
        return {"updates_per_s": n / seconds, "start": start, "end": time.time()}

    def close(self):
        pass


def ours_step(iql, data, mode=None):
    """iql_continuous.py's train step as benchmarks/speed.py's ScriptUpdate builds it, at this dataset's shapes
    (mode "compile": as under --compile)."""
    args = iql.Args()
    nets = iql.make_networks(data.observations.shape[1], data.actions.shape[1], args, "cpu", DECAY_STEPS,
                             [iql.Member("", SEED, EXPECTILE, TEMPERATURE)])
    return iql.make_train_step(lambda: iql.sample_batch(data, BATCH, 1), nets, args, mode)


def corl_step(corl, arrays: dict):
    """CORL's trainer and replay buffer, built with the values its TrainConfig has for locomotion."""
    import torch

    np.random.seed(SEED)  # its buffer samples with np.random.randint
    torch.manual_seed(SEED)
    n, obs_dim, act_dim = arrays["observations"].shape[0], arrays["observations"].shape[1], arrays["actions"].shape[1]
    buffer = corl.ReplayBuffer(obs_dim, act_dim, n, "cpu")
    d4rl_style = {**arrays, "terminals": 1.0 - arrays["masks"]}
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the dataset's size
        buffer.load_d4rl_dataset(d4rl_style)
    q, v = corl.TwinQ(obs_dim, act_dim, HIDDEN), corl.ValueFunction(obs_dim, HIDDEN)
    actor = corl.GaussianPolicy(obs_dim, act_dim, 1.0, HIDDEN)  # max_action 1: MuJoCo's action bounds
    adam = lambda net: torch.optim.Adam(net.parameters(), lr=3e-4)  # noqa: E731
    trainer = corl.ImplicitQLearning(max_action=1.0, actor=actor, actor_optimizer=adam(actor), q_network=q,
                                     q_optimizer=adam(q), v_network=v, v_optimizer=adam(v), iql_tau=EXPECTILE,
                                     beta=TEMPERATURE, max_steps=DECAY_STEPS, discount=0.99, tau=0.005, device="cpu")
    return lambda: trainer.train(buffer.sample(BATCH))


class AuthorsProcess:
    """The authors' Learner in a process of its own (see the module docstring for the line protocol)."""

    def __init__(self, python: str, folder: str, data_file: str, warmup: int, threads: int):
        spec = {"ik": str(Path(folder).resolve()), "data": data_file, "warmup": warmup, "threads": threads}
        self.stderr = tempfile.TemporaryFile("w+")  # a file, not a pipe: jax's warnings cannot fill it and block us
        self.proc = subprocess.Popen([python, str(Path(__file__).resolve()), "--ik-worker", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     bufsize=1, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.python, self.folder = python, folder
        self.info = self.read()
        if "error" in self.info:
            self.close()
            raise PeerError(f"the authors' code in {folder} did not run under {python} ({self.info['error']}); "
                            f"{JAX_HELP}, and {IK_HELP}")

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:  # it died before it could answer (a crash, or a python that cannot run this file)
            self.proc.wait()
            self.stderr.seek(0)
            tail = [s for s in self.stderr.read().strip().splitlines() if s.strip()]
            return {"error": f"exit status {self.proc.returncode}" + (f": {tail[-1].strip()}" if tail else "")}
        return json.loads(line)

    def warm_up(self, n: int):
        pass  # done at its start, before it said it was ready (the jit compiles then)

    def time(self, n: int) -> dict:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        answer = self.read()
        if "error" in answer:
            raise PeerError(f"the authors' code stopped under {self.python} ({answer['error']})")
        return answer

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()  # end of its input: it exits
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


# ----------------------------------------------------------------------------------------------
# The authors' side: runs under --jax-python, with numpy and the authors' dependencies only (no torch, no tyro)
# ----------------------------------------------------------------------------------------------
class DiagonalNormal:
    """A normal with a diagonal scale, standing in for TFP's MultivariateNormalDiag where TFP does not import."""

    def __init__(self, loc, scale_diag):
        self.loc, self.scale_diag = loc, scale_diag

    def log_prob(self, x):
        import jax.numpy as jnp

        z = (x - self.loc) / self.scale_diag
        return jnp.sum(-0.5 * jnp.square(z) - jnp.log(self.scale_diag) - 0.5 * jnp.log(2.0 * jnp.pi), axis=-1)

    def sample(self, seed, sample_shape=()):
        import jax

        noise = jax.random.normal(seed, tuple(sample_shape) + self.loc.shape, self.loc.dtype)
        return self.loc + self.scale_diag * noise


def tfp_stand_in() -> dict:
    def unused(*_, **__):  # the tanh-squashed distribution: their IQL configs do not build it
        raise NotImplementedError("only the diagonal normal is stood in for")

    tfp_jax = types.ModuleType("tensorflow_probability.substrates.jax")
    tfp_jax.distributions = types.SimpleNamespace(MultivariateNormalDiag=DiagonalNormal, Distribution=DiagonalNormal,
                                                  TransformedDistribution=unused)
    tfp_jax.bijectors = types.SimpleNamespace(Tanh=unused)
    substrates = types.ModuleType("tensorflow_probability.substrates")
    substrates.jax = tfp_jax
    top = types.ModuleType("tensorflow_probability")
    top.substrates = substrates
    return {top.__name__: top, substrates.__name__: substrates, tfp_jax.__name__: tfp_jax}


@contextlib.contextmanager
def lenient_jit(jax):
    """jax.jit that drops static_argnames naming no parameter of the function, while their modules are imported."""
    import inspect

    jit = jax.jit

    def patched(fun=None, **kwargs):
        if fun is None:  # used as @jax.jit(...) with keywords only
            return lambda f: patched(f, **kwargs)
        names = kwargs.get("static_argnames")
        if names is not None:
            params = inspect.signature(fun).parameters
            kwargs["static_argnames"] = tuple(n for n in ((names,) if isinstance(names, str) else names)
                                              if n in params)
        return jit(fun, **kwargs)

    jax.jit = patched
    try:
        yield
    finally:
        jax.jit = jit


def import_authors(folder: str):
    """(Learner, Batch, jax or None) from the authors' folder. Without jax (a stand-in Learner, as in the tests)
    nothing runs asynchronously and the compatibility shims have nothing to patch."""
    try:
        import jax
    except ImportError:
        jax = None
    stubs = old_stack_stubs()  # dataset_utils.py imports gym and d4rl at the top
    patch = contextlib.nullcontext()
    if jax is not None:
        if not hasattr(jax, "tree_multimap"):  # removed from jax; their target_update calls it
            jax.tree_multimap = jax.tree_util.tree_map
        try:  # flax >= 0.8 returns plain dicts from init by default; older releases have no such flag
            import flax

            flax.config.update("flax_return_frozendict", True)
        except (ImportError, AttributeError, KeyError, LookupError):  # no flax: their import says so below
            pass
        try:
            importlib.import_module("tensorflow_probability.substrates.jax")
        except Exception:  # not installed, or (TFP 0.25 with jax >= 0.5) installed but broken on import
            for name in [n for n in sys.modules if n.startswith("tensorflow_probability")]:
                del sys.modules[name]
            stubs.update(tfp_stand_in())
        patch = lenient_jit(jax)
    sys.modules.update(stubs)  # this process does nothing else: no need to take them back
    sys.path.insert(0, folder)
    with patch:
        learner = importlib.import_module("learner")
        try:
            batch = importlib.import_module("dataset_utils").Batch
        except (ImportError, AttributeError):  # e.g. no tqdm in that virtualenv: a namedtuple of the same fields
            batch = collections.namedtuple("Batch", FIELDS)
    return learner.Learner, batch, jax


def ik_worker(spec: dict) -> int:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever their code or XLA prints goes to stderr: stdout carries our JSON lines only

    def say(**message):
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    try:
        if hasattr(os, "sched_setaffinity"):  # before jax starts: XLA sizes its thread pool by the allowed cores
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: spec["threads"]])
        Learner, Batch, jax = import_authors(spec["ik"])
        with np.load(spec["data"]) as f:
            arrays = {k: f[k] for k in FIELDS}
        n = len(arrays["rewards"])
        np.random.seed(SEED)
        agent = Learner(SEED, arrays["observations"][:1], arrays["actions"][:1], hidden_dims=(HIDDEN, HIDDEN),
                        expectile=EXPECTILE, temperature=TEMPERATURE, dropout_rate=None, max_steps=DECAY_STEPS,
                        opt_decay_schedule="cosine")

        def run(k: int):
            info = None
            for _ in range(k):
                idx = np.random.randint(n, size=BATCH)
                info = agent.update(Batch(**{name: a[idx] for name, a in arrays.items()}))
            if jax is not None:  # each update waits on the one before: the last one's result ends them all
                jax.block_until_ready(info)

        run(spec["warmup"])
    except Exception as e:
        say(error=first_line(e))
        return 1
    say(ready=True, jax=getattr(jax, "__version__", None), batch=f"{Batch.__module__}.{Batch.__name__}",
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    for line in sys.stdin:  # one line per round: the number of updates to time
        k = int(line)
        start, t = time.time(), time.perf_counter()
        run(k)
        seconds = time.perf_counter() - t
        say(updates_per_s=k / seconds, start=start, end=time.time())
    return 0


# ----------------------------------------------------------------------------------------------
# Rounds and summary
# ----------------------------------------------------------------------------------------------
def alternate(programs: dict, rounds: int, updates: int) -> tuple[dict, list]:
    """Every program once per round, in the dict's order. Returns ({name: [updates/s per round]}, the timings in
    the order they ran: [{round, program, start, end}])."""
    rates, order = {name: [] for name in programs}, []
    for r in range(rounds):
        for name, program in programs.items():
            t = program.time(updates)
            rates[name].append(t["updates_per_s"])
            order.append({"round": r + 1, "program": name, "start": t["start"], "end": t["end"]})
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {rates[n][-1]:.0f}/s" for n in programs), flush=True)
    return rates, order


def summarize(rates: dict) -> dict:
    """Each program's median updates/s and, for each peer, the median of the rounds' (ours / peer) ratios (`ratio`;
    `compiled_ratio` for `ours --compile`): a ratio of one round's timings, in which the machine's speed was the same
    for both, so that its drift from round to round cancels (the ratio of the medians would not cancel it)."""
    summary = {}
    for name, r in rates.items():
        summary[name] = {"median": statistics.median(r), "rounds": r}
        for reference, key in (("ours", "ratio"), (COMPILED, "compiled_ratio")):
            if reference in rates and not name.startswith("ours"):
                ratios = [mine / theirs for mine, theirs in zip(rates[reference], r)]
                summary[name].update({f"{key}s": ratios, key: statistics.median(ratios)})
    return summary


def check_paths(args: Args):
    """Every given path, before anything slow is imported."""
    if args.corl is not None and not Path(args.corl).is_file():
        raise PeerError(f"--corl {args.corl}: no such file; {CORL_HELP}")
    if args.ik is not None and not (Path(args.ik) / "learner.py").is_file():
        raise PeerError(f"--ik {args.ik}: no learner.py there; {IK_HELP}")
    if args.jax_python is not None:
        if args.ik is None:
            raise PeerError(f"--jax-python {args.jax_python} is for the authors' code: {IK_HELP}")
        if not (Path(args.jax_python).is_file() and os.access(args.jax_python, os.X_OK)):
            raise PeerError(f"--jax-python {args.jax_python}: no such program; {JAX_HELP}")
    if args.rounds < 1 or args.updates < 1 or args.warmup < 0 or args.threads < 1:
        raise PeerError("--rounds, --updates and --threads must be at least 1, --warmup at least 0")


def run(args: Args) -> dict:
    check_paths(args)
    notes = []
    if args.corl is None:
        notes.append(f"CORL skipped: {CORL_HELP}")
    if args.ik is None:
        notes.append(f"the authors' code skipped: {IK_HELP}")
    for note in notes:
        print(f"note: {note}")

    import torch

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import iql_continuous as iql
    import speed

    torch.set_num_threads(args.threads)
    corl = load_corl(args.corl) if args.corl is not None else None  # its errors before the slow data loading
    env_id = args.env_id or speed.build_cached_dataset(1_000_000)
    try:
        data, _, _ = iql.load_data(iql.Args(env_id=env_id), "cpu")
    except iql.UserError as e:
        raise PeerError(f"--env-id {env_id}: {e}") from None
    arrays = {k: getattr(data, k).numpy() for k in FIELDS}
    results = {"date": time.strftime("%Y-%m-%d"), "env_id": env_id, "transitions": len(data.rewards),
               "obs_dim": data.observations.shape[1], "act_dim": data.actions.shape[1], "batch": BATCH,
               "hidden": [HIDDEN, HIDDEN], "expectile": EXPECTILE, "temperature": TEMPERATURE,
               "threads": args.threads, "rounds": args.rounds, "updates": args.updates, "warmup": args.warmup,
               "torch": torch.__version__, "cpu": speed.cpu_model(), "cpu_count": os.cpu_count(), "notes": notes,
               "sources": {"ours": str(ROOT / "iql_continuous.py")}}
    print(f"updates/s on {env_id} ({len(data.rewards):,} transitions, obs {results['obs_dim']}, act "
          f"{results['act_dim']}), batch {BATCH}, {HIDDEN}x{HIDDEN} MLPs, {args.threads} threads, {args.rounds} "
          f"rounds of {args.updates} updates")

    programs = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        programs["ours"] = InProcess(ours_step(iql, data))
        if args.compile:
            programs[COMPILED] = InProcess(ours_step(iql, data, "compile"))
        if corl is not None:
            try:  # built and stepped once here, so that a file that is not CORL's fails with one line
                step = corl_step(corl, arrays)
                step()
            except Exception as e:
                raise PeerError(f"CORL's classes in {args.corl} did not build or train as CORL's do ({first_line(e)});"
                                f" {CORL_HELP}") from None
            programs["CORL"] = InProcess(step)
            results["sources"]["CORL"] = str(Path(args.corl).resolve())
        if args.ik is not None:
            np.savez(Path(tmp) / "data.npz", **arrays)
            python = args.jax_python or sys.executable
            authors = AuthorsProcess(python, args.ik, str(Path(tmp) / "data.npz"), args.warmup, args.threads)
            stack.callback(authors.close)
            programs["authors"] = authors
            results["sources"]["authors"] = str(Path(args.ik).resolve())
            results["authors_process"] = {"python": python, **{k: v for k, v in authors.info.items() if k != "ready"}}
        for program in programs.values():
            program.warm_up(args.warmup)
        rates, results["order"] = alternate(programs, args.rounds, args.updates)
    results["updates_per_s"] = summarize(rates)

    compiled = f" | {COMPILED} / it" if args.compile else ""
    print(f"\n| program | updates/s (median of {args.rounds} rounds) | ours / it (median of the rounds' ratios)"
          f"{compiled} | rounds' ratios (ours / it) |")
    print("|---|---|---|" + ("---|" if args.compile else "") + "---|")
    for name, r in results["updates_per_s"].items():
        ratios = [f"{r[k]:.2f}" if k in r else "-" for k in ("ratio", "compiled_ratio")[:1 + args.compile]]
        each = ", ".join(f"{x:.2f}" for x in r.get("ratios", []))
        print(f"| {name} | {r['median']:.0f} | {' | '.join(ratios)} | {each} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")
    return results


def main(args: Args) -> dict:
    try:
        return run(args)
    except PeerError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--ik-worker"]:  # the authors' side, under --jax-python
        sys.exit(ik_worker(json.loads(sys.argv[2])))
    import tyro

    main(tyro.cli(Args))
