"""Shared fixtures: tiny real Minari datasets, written once per session under a temporary MINARI_DATASETS_PATH.

The data come from the real Hopper-v5 environment (random actions), so loading, flattening and evaluation
run through the same code paths as on downloaded datasets. Nothing here reads the shared datasets folder.
"""

import importlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for the network from tests
os.environ.setdefault("MUJOCO_GL", "egl")

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("iql_continuous", "iql_antmaze", "iql_finetune")  # they share the losses, networks and update (copied)
HOPPER_REF = (-20.272305, 3234.3)
MAX_STEPS = 40  # short episodes: some end by termination (the hopper falls), the rest by truncation


def stack(observations: list):
    """Minari stores an episode's dict observations as (nested) dicts of arrays."""
    if isinstance(observations[0], dict):
        return {k: stack([o[k] for o in observations]) for k in observations[0]}
    return np.stack(observations)


def rollout_buffers(env, num_episodes: int, seed: int):
    from minari.data_collector import EpisodeBuffer

    rng = np.random.default_rng(seed)
    buffers = []
    for ep in range(num_episodes):
        obs, _ = env.reset(seed=seed + ep)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        done = False
        while not done:
            action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            terms.append(terminated)
            truncs.append(truncated)
            done = terminated or truncated
        buffers.append(EpisodeBuffer(observations=stack(observations), actions=actions, rewards=rewards,
                                     terminations=terms, truncations=truncs))
    return buffers


def make_hopper_dataset(dataset_id: str, num_episodes: int, seed: int, ref_scores=HOPPER_REF):
    import minari

    env = gym.make("Hopper-v5", max_episode_steps=MAX_STEPS)
    buffers = rollout_buffers(env, num_episodes, seed)
    kwargs = dict(ref_min_score=ref_scores[0], ref_max_score=ref_scores[1]) if ref_scores else {}
    minari.create_dataset_from_buffers(dataset_id, buffers, env=env, eval_env=env.spec,
                                       algorithm_name="random", author="tests",
                                       author_email="tests@example.org", code_permalink="tests/conftest.py",
                                       description="random Hopper-v5 episodes for tests", **kwargs)
    env.close()
    return buffers


@pytest.fixture(scope="session")
def minari_root(tmp_path_factory):
    """A MINARI_DATASETS_PATH holding `test/hopper/random-v0` (with reference scores), `test/hopper/noref-v0`
    (without), and `mujoco/hopper/{medium,expert}-v0` stand-ins for the D4RL name mapping."""
    root = tmp_path_factory.mktemp("minari")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    buffers = {
        "test/hopper/random-v0": make_hopper_dataset("test/hopper/random-v0", 12, seed=0),
        "test/hopper/noref-v0": make_hopper_dataset("test/hopper/noref-v0", 2, seed=100, ref_scores=None),
        "mujoco/hopper/medium-v0": make_hopper_dataset("mujoco/hopper/medium-v0", 3, seed=200),
        "mujoco/hopper/expert-v0": make_hopper_dataset("mujoco/hopper/expert-v0", 2, seed=300),
    }
    yield root, buffers
    if old is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = old


@pytest.fixture(params=SCRIPTS)
def iql(request):
    """Each script module in turn, for the tests of the code they share."""
    return importlib.import_module(request.param)


def sampler(iql, data, batch_size: int):
    """The script's own batch sampler over `data`, as its main() builds it: the fine-tuning script's replay
    buffer (twice the data's size), the offline scripts' sample_batch."""
    if hasattr(iql, "ReplayBuffer"):
        buffer = iql.ReplayBuffer(data, 2 * len(data.rewards), data.rewards.device)
        return lambda: buffer.sample(batch_size)
    return lambda: iql.sample_batch(data, batch_size, 1)


def make_pointmaze_dataset(dataset_id: str, num_episodes: int, seed: int, max_steps: int = 60, reward_type="sparse"):
    """Random-action episodes of the real PointMaze U-maze (a continuing task, as Minari records mazes)."""
    import gymnasium_robotics
    import minari

    gym.register_envs(gymnasium_robotics)
    env = gym.make("PointMaze_UMaze-v3", continuing_task=True, max_episode_steps=max_steps, reward_type=reward_type)
    buffers = rollout_buffers(env, num_episodes, seed)
    minari.create_dataset_from_buffers(dataset_id, buffers, env=env, eval_env=env.spec, algorithm_name="random",
                                       author="tests", author_email="tests@example.org",
                                       code_permalink="tests/conftest.py", description="random PointMaze episodes")
    env.close()
    return buffers


@pytest.fixture(scope="session")
def maze_root(minari_root):
    """Adds `test/pointmaze/random-v0` (sparse rewards) and `test/pointmaze/dense-v0` to MINARI_DATASETS_PATH."""
    root, buffers = minari_root
    buffers["test/pointmaze/random-v0"] = make_pointmaze_dataset("test/pointmaze/random-v0", 6, seed=7)
    buffers["test/pointmaze/dense-v0"] = make_pointmaze_dataset("test/pointmaze/dense-v0", 1, seed=8,
                                                                reward_type="dense")
    return root, buffers


def run_script(script: str, cwd, *flags, timeout=300) -> subprocess.CompletedProcess:
    """Run `python <script>.py FLAGS` as a user would, in `cwd`, on one torch thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / f"{script}.py"), *flags], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def run_main(script: str, cwd, *flags):
    """Run `python <script>.py FLAGS` in this process, as the command line would (tyro parses the flags into Args,
    then main(args)), in `cwd` and on one torch thread. A user error is raised as the script's UserError. The
    working directory, the thread count and the signal handlers that main() takes over are given back after."""
    import torch
    import tyro

    module = importlib.import_module(script)
    handlers, threads, old_cwd = {s: signal.getsignal(s) for s in STOP_SIGNALS}, torch.get_num_threads(), os.getcwd()
    try:
        os.chdir(cwd)
        torch.set_num_threads(1)
        return module.main(tyro.cli(module.Args, args=[str(f) for f in flags]))
    finally:
        os.chdir(old_cwd)
        torch.set_num_threads(threads)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def assert_one_line_error(out: subprocess.CompletedProcess, message: str):
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def scalars(run_dir) -> dict:
    """Every scalar in a run's TensorBoard event files: {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir)).Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


KITCHEN_TASKS = ["microwave", "kettle", "light switch", "slide cabinet"]  # D4RL's kitchen-complete tasks


def make_robotics_dataset(dataset_id: str, env, num_episodes: int, seed: int, **ref_scores):
    import minari

    buffers = rollout_buffers(env, num_episodes, seed)
    minari.create_dataset_from_buffers(dataset_id, buffers, env=env, eval_env=env.spec, algorithm_name="random",
                                       author="tests", author_email="tests@example.org",
                                       code_permalink="tests/conftest.py", description="random episodes", **ref_scores)
    env.close()
    return buffers


@pytest.fixture(scope="session")
def robotics_root(minari_root):
    """Adds `test/pen/random-v0` (AdroitHandPen-v1, no reference scores: D4RL's pen constants apply) and
    `test/kitchen/random-v0` (FrankaKitchen-v1 recorded as Minari records it: tasks kept, rewards repeating; with
    reference scores on another scale, which the kitchen score must not use)."""
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        import gymnasium_robotics
    gym.register_envs(gymnasium_robotics)
    root, buffers = minari_root
    buffers["test/pen/random-v0"] = make_robotics_dataset(
        "test/pen/random-v0", gym.make("AdroitHandPen-v1", max_episode_steps=30), 3, seed=11)
    kitchen = gym.make("FrankaKitchen-v1", tasks_to_complete=KITCHEN_TASKS, remove_task_when_completed=False,
                       terminate_on_tasks_completed=False, max_episode_steps=20)
    buffers["test/kitchen/random-v0"] = make_robotics_dataset("test/kitchen/random-v0", kitchen, 3, seed=12,
                                                              ref_min_score=0.0, ref_max_score=80.0)
    return root, buffers


@pytest.fixture(scope="session")
def continuous_run(minari_root, tmp_path_factory):
    """A real 20-update iql_continuous.py run on `test/hopper/random-v0` (hidden 32): its folder, holding
    `checkpoint_20.pt` and the `--save-model` file `h.pt`, for the tests that load or must refuse them."""
    cwd = tmp_path_factory.mktemp("continuous_run")
    run_main("iql_continuous", cwd, "--env-id", "test/hopper/random-v0", "--total-steps", "20", "--eval-episodes", "1",
             "--hidden-dim", "32", "--save-model", "--exp-name", "h", "--no-cuda")
    (run_dir,) = (cwd / "runs").iterdir()
    return run_dir
