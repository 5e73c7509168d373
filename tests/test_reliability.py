"""Bad data and diverging runs stop with one line, in every script that takes the data."""

import shutil

import numpy as np
import pytest
from conftest import assert_one_line_error, run_script

import iql_continuous as cont


@pytest.fixture(scope="module")
def broken_root(minari_root):
    """`test/hopper/nan-v0` (one NaN reward) and `test/hopper/truncated-v0` (its data file cut in half)."""
    import minari
    from minari.data_collector import EpisodeBuffer

    root, buffers = minari_root
    if not (root / "test/hopper/nan-v0").exists():
        import gymnasium as gym

        episodes = buffers["test/hopper/noref-v0"]
        rewards = np.array(episodes[1].rewards, dtype=np.float64)
        rewards[3] = np.nan
        broken = EpisodeBuffer(observations=episodes[1].observations, actions=episodes[1].actions, rewards=rewards,
                               terminations=episodes[1].terminations, truncations=episodes[1].truncations)
        env = gym.make("Hopper-v5", max_episode_steps=40)
        minari.create_dataset_from_buffers("test/hopper/nan-v0", [episodes[0], broken], env=env, algorithm_name="x",
                                           author="tests", author_email="-", code_permalink="-", description="NaN")
        env.close()
        shutil.copytree(root / "test/hopper/random-v0", root / "test/hopper/truncated-v0")
        data_file = next((root / "test/hopper/truncated-v0/data").glob("*.hdf5"))
        data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    return root, buffers


@pytest.mark.parametrize("script", ["iql_continuous", "iql_finetune"])
@pytest.mark.parametrize("env_id, message", [
    ("test/hopper/nan-v0", "has NaN or infinite rewards (1 transitions, the first at index"),
    ("test/hopper/truncated-v0", "truncated-v0/data (OSError"),
])
def test_bad_data_is_one_line(broken_root, tmp_path, script, env_id, message):
    out = run_script(script, tmp_path, "--env-id", env_id, "--eval-episodes", "1", timeout=120)
    assert_one_line_error(out, message)


def test_nan_index_is_the_transition(broken_root):
    """The NaN sits at step 3 of the second episode: its index counts the first episode's transitions."""
    _, buffers = broken_root
    first = len(buffers["test/hopper/noref-v0"][0].rewards)
    with pytest.raises(cont.UserError, match=f"first at index {first + 3}"):
        cont.load_data(cont.Args(env_id="test/hopper/nan-v0"), "cpu")


def test_divergence_stops_at_the_next_log_step(minari_root, tmp_path):
    """A real divergence (an absurd learning rate), caught where the losses are logged, with the step named."""
    out = run_script("iql_continuous", tmp_path, "--env-id", "test/hopper/random-v0", "--learning-rate", "1e12",
                     "--total-steps", "300", "--log-freq", "50", "--eval-freq", "300", "--eval-episodes", "1",
                     "--hidden-dim", "32")
    assert_one_line_error(out, "the run diverged")
    assert "error: step 50: " in out.stderr and "nan" in out.stderr
    assert "step 50/300" not in out.stdout  # stopped before printing the progress line of that step


def test_progress_line():
    line = cont.progress_line(250, 1000, 50.0, "normalized 12.30")
    assert line == "step 250/1,000  50 updates/s  ETA 0h00m15s  last evaluation: normalized 12.30"
    assert "ETA 5h33m20s" in cont.progress_line(0, 1_000_000, 50.0, "none yet")
