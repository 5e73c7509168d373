"""The GPU path, checked in one command: the fast modes against eager, whole short runs, and the updates/s.

    python benchmarks/gpu_check.py                 # on a CUDA machine; not yet run on one (5 to 7 minutes, estimated)
    python benchmarks/gpu_check.py --parts 1,3     # without the whole runs
    python benchmarks/gpu_check.py --device cpu    # the same checks on the CPU, `compile` standing in for the graphs

It needs torch and numpy only: where gymnasium, gymnasium_robotics or tyro are missing, empty stand-ins let the
scripts import (their update code never calls them), and the whole runs (part 2) are skipped with a message.
Each result is printed as it completes, and all of them go to `--out` (JSON). A failing case is reported and the
next one runs.

1. Equivalence. 200 updates from the same seed, batch 256, 2x256 networks, obs 17, act 6, on data built in memory,
   TF32 off; every parameter and Adam moment of each fast mode against eager's (torch.allclose, rtol 1e-4, atol 1e-4
   times the tensor's largest value):
   - iql_continuous.py, one run and a population of 4 (each member its own expectile);
   - the actor's cosine schedule over those 200 updates, so the learning-rate tensor the graph reads changes;
   - iql_finetune.py with one transition added to its replay buffer before every update (the buffer's size is a
     device tensor the captured graph reads);
   - a resume: 100 updates, a checkpoint, then 100 more in fresh networks, against 200 eager updates.
   --cudagraphs replays eager's kernels: judged after 200 updates. Compiled code sums floats in other orders, and
   Adam, dividing by the root of tiny second moments early on, grows those roundings: judged after EARLY updates,
   the 200-update figure shown beside it. The compiled randint is told to draw what eager draws (fallback_random).
   iql_antmaze.py's update is the same code (tests/test_copies.py).
2. Whole runs: iql_continuous.py's main on a small random Hopper dataset built here (needs gymnasium[mujoco],
   minari and tensorboard), 2,000 updates with evaluations, a population of 3 seeds: eager, --cudagraphs, and
   --compile --cudagraphs (its own randomness: other batches than eager's). Reported: each member's parameters
   against eager's (rtol 1e-3) and its final score against the eager seeds' spread.
3. Speed. updates/s of eager, --cudagraphs and --compile --cudagraphs for one run and for a population of 10.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OBS, ACT, ROWS, BATCH, SEED = 17, 6, 10_000, 256, 1
EARLY = 20  # a second comparison point: a difference already large here is a bug, not rounding grown over time
STAND_INS = []  # the modules replaced by empty stand-ins


NETS = ("actor", "critic", "target_critic", "value")


def first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


class StandIn(types.ModuleType):
    """A module whose every attribute is another stand-in and that does nothing when called."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return StandIn(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        return None


def import_scripts():
    for name in ("gymnasium", "gymnasium_robotics", "tyro"):
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = StandIn(name)
            STAND_INS.append(name)
    sys.path.insert(0, str(ROOT))
    import iql_continuous
    import iql_finetune

    return iql_continuous, iql_finetune


def in_memory_data(iql, device):
    g = torch.Generator().manual_seed(0)
    return iql.Batch(*(x.to(device) for x in (
        torch.randn(ROWS, OBS, generator=g), torch.rand(ROWS, ACT, generator=g) * 2 - 1, torch.randn(ROWS, generator=g),
        torch.randn(ROWS, OBS, generator=g), (torch.rand(ROWS, generator=g) > 0.01).float())))


def build(iql, members: int, device, decay_steps: int, mode, sample=None, data=None):
    """The script's networks and train step for a population of `members` (expectiles 0.7, 0.71, ...: each member's
    own value reaches its loss)."""
    args = iql.Args(batch_size=BATCH)
    population = [iql.Member(f"m{i}", SEED + i, round(0.7 + 0.01 * i, 2), 3.0) for i in range(members)]
    nets = iql.make_networks(OBS, ACT, args, device, decay_steps, population)
    sample = sample or (lambda: iql.sample_batch(data, BATCH, members))
    return args, nets, lambda: iql.make_train_step(sample, nets, args, mode)


def tensors(nets) -> dict:
    out = {}
    for name in NETS:
        state = getattr(nets, name).state_dict()
        out.update({f"{name}.{k}": v.detach().float().cpu().clone() for k, v in state.items()})
    for i, opt in enumerate(nets.optimizers):
        for j, state in enumerate(opt.state.values()):
            out.update({f"adam{i}.{j}.{k}": v.float().cpu().clone() for k, v in state.items() if k != "step"})
    return out


def compare(a: dict, b: dict, rtol: float) -> tuple[bool, str]:
    """(every tensor of a close to b's to rtol, with an atol of rtol times the tensor's largest value; the largest
    max|a - b| / max|b| over the tensors, with the tensor's name)."""
    scale = {k: b[k].abs().max().clamp_min(1e-12).item() for k in b}
    diff = {k: (a[k] - b[k]).abs().max().item() / scale[k] for k in b}
    worst = max(diff, key=diff.get)
    ok = all(torch.allclose(a[k], b[k], rtol=rtol, atol=rtol * scale[k]) for k in b)
    return ok, f"{diff[worst]:.1e} ({worst})"


def offline(iql, data, mode, members: int, steps: int, device, resume_at=None) -> dict:
    """Every tensor after 20 updates and after `steps`: {20: ..., steps: ...}."""
    torch.manual_seed(SEED)
    args, nets, make_step = build(iql, members, device, steps, mode, data=data)
    step, snapshots = make_step(), {}
    for t in range(steps):
        if t == resume_at:  # a checkpoint, then fresh networks that continue from it
            with tempfile.TemporaryDirectory() as folder:
                rngs = [np.random.default_rng(SEED)]
                path = iql.save_state(os.path.join(folder, "c.pt"), t, nets, args, rngs, [[]])
                args, nets, make_step = build(iql, members, device, steps, mode, data=data)
                iql.restore_state(torch.load(path, map_location="cpu", weights_only=False), nets, rngs)
            step = make_step()
        step()
        snapshots.update({t + 1: tensors(nets)} if t + 1 in (EARLY, steps) else {})
    return snapshots


def finetune(iql, data, mode, steps: int, device) -> dict:
    """As offline(), the replay buffer growing by one (random) transition before every update."""
    torch.manual_seed(SEED)
    buffer = iql.ReplayBuffer(iql.Batch(*(x[:ROWS // 2] for x in data)), ROWS, device, members=1, online_steps=steps)
    _, nets, make_step = build(iql, 1, device, steps, mode, sample=lambda: buffer.sample(BATCH))
    step, rng, snapshots = make_step(), np.random.default_rng(SEED), {}
    for t in range(steps):
        buffer.add(rng.normal(size=OBS), rng.uniform(-1, 1, ACT), rng.normal(), rng.normal(size=OBS), 1.0)
        step()
        snapshots.update({t + 1: tensors(nets)} if t + 1 in (EARLY, steps) else {})
    assert buffer.count == ROWS // 2 + steps
    return snapshots


def equivalence(scripts, device, fast_modes, report):
    import torch._inductor.config as inductor_config

    iql, iql_ft = scripts
    data = in_memory_data(iql, device)
    cases = {
        "one run": lambda mode: offline(iql, data, mode, 1, 200, device),
        "population of 4": lambda mode: offline(iql, data, mode, 4, 200, device),
        "fine-tuning, buffer growing": lambda mode: finetune(iql_ft, data, mode, 200, device),
        "resume at 100 of 200": lambda mode: offline(iql, data, mode, 1, 200, device, resume_at=100),
    }
    for case, run in cases.items():
        eager = offline(iql, data, None, 1, 200, device) if case.startswith("resume") else run(None)
        for mode in ((None,) if case.startswith("resume") else ()) + fast_modes:
            t = time.time()
            torch._dynamo.reset()  # each case compiles afresh, as a run would
            try:
                with inductor_config.patch(fallback_random=True):  # compiled randint draws what eager draws
                    fast = run(mode)
                ok, late = compare(fast[200], eager[200], 1e-4)
                ok_early, early = compare(fast[EARLY], eager[EARLY], 1e-4)
                # A graph of eager's kernels is judged after 200 updates; compiled code (other float sums, whose
                # rounding Adam grows) after EARLY, its 200-update figure shown beside.
                ok = ok_early if "compile" in (mode or "") else ok
                line = (f"{'PASS' if ok else 'FAIL'}  max|difference| / max|eager| after 200: {late}; "
                        f"after {EARLY}: {early}")
            except Exception as e:  # a capture that fails is a result too
                ok, late, early, line = False, None, None, f"FAIL  {type(e).__name__}: {first_line(e)}"
            report("equivalence", {"case": case, "mode": mode or "eager", "ok": ok, "after_200": late,
                                   f"after_{EARLY}": early, "seconds": round(time.time() - t, 1)},
                   f"{case:<28} {mode or 'eager':<18} {line}")


def hopper_dataset(root: Path, dataset_id: str, episodes: int = 40):
    """Random Hopper-v5 episodes (at most 200 steps) as a Minari dataset, with D4RL's Hopper reference scores."""
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    os.environ["MINARI_DATASETS_PATH"] = str(root)
    env, rng, buffers = gym.make("Hopper-v5", max_episode_steps=200), np.random.default_rng(0), []
    for ep in range(episodes):
        obs, _ = env.reset(seed=ep)
        steps, done = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}, 0
        while not done:
            action = rng.uniform(-1, 1, 3).astype(np.float32)
            obs, reward, terminated, truncated, _ = env.step(action)
            for key, x in zip(steps, (obs, action, reward, terminated, truncated)):
                steps[key].append(x)
            done = terminated or truncated
        buffers.append(EpisodeBuffer(**{k: np.stack(v) if k == "observations" else v for k, v in steps.items()}))
    minari.create_dataset_from_buffers(dataset_id, buffers, env=env, eval_env=env.spec, algorithm_name="random",
                                       ref_min_score=-20.272305, ref_max_score=3234.3)
    env.close()


def whole_run(device, fast_flags: dict, report):
    missing = STAND_INS + [m for m in ("minari", "mujoco", "tensorboard") if importlib.util.find_spec(m) is None]
    if missing:
        report("whole_run", {"skipped": f"{', '.join(missing)} not installed"},
               f"skipped: {', '.join(missing)} not installed (pip install -r requirements.txt)")
        return
    try:
        whole_runs(device, fast_flags, report)
    except Exception as e:
        report("whole_run", {"error": first_line(e)}, f"FAIL  {first_line(e)}")


def whole_runs(device, fast_flags: dict, report):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        hopper_dataset(folder / "datasets", "gpucheck/hopper/random-v0")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
        runs = {}
        for name, flags in {"eager": [], **fast_flags}.items():
            t = time.time()
            cmd = [sys.executable, str(ROOT / "iql_continuous.py"), "--env-id", "gpucheck/hopper/random-v0",
                   "--total-steps", "2000", "--eval-freq", "1000", "--eval-episodes", "5", "--num-seeds", "3",
                   "--checkpoint-freq", "0", "--save-model", "--exp-name", name, *flags]
            cmd += [] if device == "cuda" else ["--no-cuda"]
            out = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
            if out.returncode:
                report("whole_run", {"run": name, "exit": out.returncode}, f"FAIL  the {name} run exited "
                       f"{out.returncode}:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
                return
            finals = [line.split("normalized")[-1].split(";")[0].strip(" :") for line in out.stdout.splitlines()
                      if ": final (step" in line]
            models = sorted((folder / "runs").glob(f"*__{name}__*/seed*/{name}.pt"))
            runs[name] = {"finals": [float(x) for x in finals], "models": models, "seconds": time.time() - t}
        eager = runs.pop("eager")
        spread = float(np.std(eager["finals"]))
        for name, fast in runs.items():
            for m_eager, m_fast, r_eager, r_fast in zip(eager["models"], fast["models"], eager["finals"],
                                                        fast["finals"]):
                a, b = (torch.load(m, map_location="cpu") for m in (m_fast, m_eager))
                ok, worst = compare(*({f"{n}.{k}": v.float() for n in NETS for k, v in x[n].items()} for x in (a, b)),
                                    1e-3)
                within = abs(r_fast - r_eager) <= 2 * spread
                report("whole_run", {"run": name, "member": m_eager.parent.name, "params_ok": ok, "worst": worst,
                                     "score_eager": r_eager, "score": r_fast, "seeds_std": spread},
                       f"{name:<18} {m_eager.parent.name}: parameters {'agree' if ok else 'DIFFER'} to rtol 1e-3 "
                       f"(max|difference| / max|eager| {worst}); final score {r_fast:.2f} against eager's "
                       f"{r_eager:.2f} (the seeds' std {spread:.2f}: {'within' if within else 'OUTSIDE'} 2 std)")
        print("   seconds: " + ", ".join(f"{n} {r['seconds']:.0f}" for n, r in {"eager": eager, **runs}.items()))


def speed(scripts, device, fast_modes, report, updates: int):
    iql = scripts[0]
    data = in_memory_data(iql, device)
    for members in (1, 10):
        for mode in (None, *fast_modes):
            torch.manual_seed(SEED)
            torch._dynamo.reset()  # compiled for these shapes alone, as a run would be
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
            try:
                _, _, make_step = build(iql, members, device, 1_000_000, mode, data=data)
                step = make_step()
                for _ in range(20):  # warm-up, capture and compilation
                    step()
                sync()
                t = time.perf_counter()
                for _ in range(updates):
                    step()
                sync()
            except Exception as e:
                report("speed", {"members": members, "mode": mode or "eager", "error": first_line(e)},
                       f"{members:>2} member(s)  {mode or 'eager':<18} FAIL  {first_line(e)}")
                continue
            rate = updates / (time.perf_counter() - t)
            report("speed", {"members": members, "mode": mode or "eager", "updates_per_s": rate,
                             "member_updates_per_s": rate * members},
                   f"{members:>2} member(s)  {mode or 'eager':<18} {rate:8.0f} updates/s  "
                   f"{rate * members:8.0f} member-updates/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--parts", default="1,2,3", help="which parts to run, e.g. 1,3")
    parser.add_argument("--updates", type=int, default=2000, help="timed updates per speed row")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu_check.json"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA device: run it on a GPU machine, or pass --device cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    scripts = import_scripts()
    cuda = args.device == "cuda"
    fast_modes = ("cudagraphs", "compile+cudagraphs") if cuda else ("compile",)
    results = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name() if cuda else "cpu",
               "torch": torch.__version__, "stand_ins": STAND_INS}

    def report(part, row, line):
        results.setdefault(part, []).append(row)
        print("   " + line, flush=True)
        Path(args.out).write_text(json.dumps(results, indent=1))

    start = time.time()
    print(f"{results['device']}, torch {torch.__version__}" + (f"; stand-ins for {', '.join(STAND_INS)}"
                                                                if STAND_INS else ""), flush=True)
    parts = args.parts.split(",")
    if "1" in parts:
        print("1. equivalence after 200 updates (rtol 1e-4, TF32 off)", flush=True)
        equivalence(scripts, args.device, fast_modes, report)
    if "2" in parts:
        print("2. whole runs, 2,000 updates, 3 seeds each", flush=True)
        fast_flags = {"cudagraphs": ["--cudagraphs"], "compile+cudagraphs": ["--compile", "--cudagraphs"]}
        whole_run(args.device, fast_flags if cuda else {"compile": ["--compile"]}, report)
    if "3" in parts:
        print("3. speed (batch 256, 2x256, obs 17, act 6)", flush=True)
        speed(scripts, args.device, fast_modes, report, args.updates)
    print(f"done in {time.time() - start:.0f}s; results in {args.out}")


if __name__ == "__main__":
    main()
