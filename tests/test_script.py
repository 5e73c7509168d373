"""End to end: the script as a user runs it, on a tiny real dataset, plus its one-line errors."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import run_main, scalars

import iql_continuous as iql


def test_end_to_end_run_logs_and_saves(minari_root, tmp_path, capsys):
    run_main("iql_continuous", tmp_path, "--env-id", "test/hopper/random-v0", "--total-steps", "300",
             "--eval-freq", "150", "--log-freq", "100", "--eval-episodes", "3", "--hidden-dim", "64", "--save-model",
                     "--exp-name", "e2e", "--no-cuda")
    stdout = capsys.readouterr().out
    assert "step      300" in stdout and "normalized" in stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("test-hopper-random-v0__e2e__1__")  # "/" made safe
    logged = scalars(run_dir)
    assert [s for s, _ in logged["charts/normalized_score"]] == [150, 300]
    for tag in ("charts/episodic_return", "losses/value_loss", "losses/q_loss", "losses/actor_loss",
                "charts/advantage_mean", "charts/weight_mean", "charts/actor_lr", "charts/SPS"):
        assert tag in logged, tag
    assert [s for s, _ in logged["losses/q_loss"]] == [100, 200, 300]
    # The normalised score is 100 * (return - min) / (max - min) with the dataset's reference scores.
    (_, ret), (_, score) = logged["charts/episodic_return"][-1], logged["charts/normalized_score"][-1]
    assert score == pytest.approx(100 * (ret + 20.272305) / (3234.3 + 20.272305), rel=1e-4)
    # The actor's learning rate (of the update just done) follows the cosine to ~0 at the last step.
    assert [v for _, v in logged["charts/actor_lr"]] == pytest.approx(
        [3e-4 * iql.cosine_decay(s - 1, 300) for s in (100, 200, 300)], rel=1e-5, abs=1e-12)
    assert logged["charts/actor_lr"][-1][1] < 1e-8

    # The saved model reloads and acts.
    ckpt = torch.load(run_dir / "e2e.pt", weights_only=False)
    assert ckpt["args"]["env_id"] == "test/hopper/random-v0"
    actor = iql.Actor(ckpt["obs_dim"], ckpt["act_dim"], ckpt["args"]["hidden_dim"], ckpt["args"]["dropout"])
    actor.load_state_dict(ckpt["actor"])
    env = gym.make("Hopper-v5")
    obs, _ = env.reset(seed=0)
    action = actor.act(torch.as_tensor(obs, dtype=torch.float32)).numpy()
    assert action.shape == (3,) and np.all(np.abs(action) <= 1)
    env.step(action)
    for name in ("critic", "target_critic", "value"):
        assert name in ckpt


def test_evaluate_counts_first_episode_only():
    """Vector evaluation counts each env's first episode only: envs with horizons 3, 8 and 20 finish at different
    steps, and the early ones keep stepping through new episodes that must not be added."""
    horizons = (3, 8, 20)
    envs = gym.vector.SyncVectorEnv([lambda h=h: gym.make("Hopper-v5", max_episode_steps=h) for h in horizons])
    torch.manual_seed(0)
    actor = iql.Actor(11, 3, 16)
    returns = iql.evaluate(actor, envs, [1, 2, 3], "cpu")
    lengths = []
    for i, (seed, h) in enumerate(zip([1, 2, 3], horizons)):  # replay each env alone with the same actions
        env = gym.make("Hopper-v5", max_episode_steps=h)
        obs, _ = env.reset(seed=seed)
        total, done, n = 0.0, False, 0
        while not done:
            obs, r, term, trunc, _ = env.step(actor.act(torch.as_tensor(obs, dtype=torch.float32)).numpy())
            total, done, n = total + r, term or trunc, n + 1
        lengths.append(n)
        assert returns[i] == pytest.approx(total, rel=1e-5)
    assert lengths[-1] - lengths[0] >= 3, lengths  # env 0 ran real steps of a second episode
    envs.close()


def test_evaluate_renders_first_env():
    envs = iql.make_eval_envs(gym.make("Hopper-v5", max_episode_steps=15).spec, 2, render=True)
    frames = []
    try:
        iql.evaluate(iql.Actor(11, 3, 16), envs, [1, 2], "cpu", frames)
    except Exception as e:  # no OpenGL context on this machine (set MUJOCO_GL=egl or osmesa)
        pytest.skip(f"no MuJoCo renderer here: {e}")
    assert 0 < len(frames) <= 15 and frames[0].ndim == 3 and frames[0].shape[-1] == 3
    envs.close()


TINY = ["--env-id", "test/hopper/random-v0", "--total-steps", "2", "--eval-freq", "2", "--eval-episodes", "1",
        "--hidden-dim", "8", "--batch-size", "8", "--checkpoint-freq", "0", "--no-cuda"]


def test_capture_video_writes_the_evaluation_episode(minari_root, tmp_path):
    try:
        run_main("iql_continuous", tmp_path, *TINY, "--capture-video")
    except iql.UserError as e:  # no OpenGL context on this machine (set MUJOCO_GL=egl)
        pytest.skip(str(e))
    (video,) = tmp_path.glob("videos/*/eval-step-2*.mp4")
    assert video.stat().st_size > 1000


def test_track_starts_one_wandb_run_synced_with_tensorboard(minari_root, tmp_path, monkeypatch):
    """W&B is not installed here: a stand-in module records what the script asks of it."""
    import sys
    import types

    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed: one line that says what to install
    with pytest.raises(iql.UserError, match="--track needs Weights & Biases: pip install wandb"):
        run_main("iql_continuous", tmp_path, *TINY, "--track")
    calls = []
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kwargs: calls.append(kwargs)))
    run_main("iql_continuous", tmp_path, *TINY, "--track", "--wandb-project-name", "p")
    (run_dir,) = (tmp_path / "runs").iterdir()
    (init,) = calls
    assert init["project"] == "p" and init["sync_tensorboard"] and init["name"] == run_dir.name
    assert init["config"]["env_id"] == "test/hopper/random-v0" and init["config"]["expectile"] == [0.7]


@pytest.mark.parametrize("script", ["iql_continuous", "iql_antmaze", "iql_finetune"])
def test_help_says_what_the_script_does(script, capsys):
    import importlib

    import tyro

    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as status:
        tyro.cli(module.Args, args=["--help"])
    assert status.value.code == 0
    assert module.Args.__doc__.split("(")[0].strip() in " ".join(capsys.readouterr().out.split())
