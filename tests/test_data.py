"""Dataset mapping, flattening and reward normalisation, on hand-built arrays and tiny real Minari datasets."""

import numpy as np
import pytest
import torch

import iql_continuous as iql


# --- D4RL names -> Minari ids ---------------------------------------------------------------------
@pytest.mark.parametrize("name, ids", [
    ("halfcheetah-medium-v2", ["mujoco/halfcheetah/medium-v0"]),
    ("walker2d-expert-v2", ["mujoco/walker2d/expert-v0"]),
    ("hopper-medium-expert-v2", ["mujoco/hopper/medium-v0", "mujoco/hopper/expert-v0"]),
    ("local/hopper/medium-replay-v0", ["local/hopper/medium-replay-v0"]),
    ("mujoco/hopper/simple-v0", ["mujoco/hopper/simple-v0"]),
])
def test_resolve_dataset_ids(name, ids):
    assert iql.resolve_dataset_ids(name) == ids


@pytest.mark.parametrize("name", ["hopper-medium-replay-v2", "walker2d-random-v2"])
def test_d4rl_names_without_minari_counterpart(name):
    with pytest.raises(iql.UserError, match="no Minari counterpart.*Available: .*-medium-v2"):
        iql.resolve_dataset_ids(name)


@pytest.mark.parametrize("name", ["hopper-medium", "ant-medium-v2", "cartpole", "hopper-medium-v0"])
def test_unknown_names(name):
    with pytest.raises(iql.UserError, match="unknown env id"):
        iql.resolve_dataset_ids(name)


# --- reward normalisation --------------------------------------------------------------------------
def test_reward_normalisation_three_trajectories():
    # Three episodes (their last rows marked): returns 3, 30, -3, so scale = 1000 / (30 - (-3))
    ends = np.array([0, 1, 0, 1, 0, 0, 1], dtype=bool)
    rewards = np.array([1.0, 2.0, 10.0, 20.0, -1.0, -1.0, -1.0])
    assert iql.reward_scale(rewards, ends) == pytest.approx(1000 / 33)


def test_reward_normalisation_refuses_zero_span():
    with pytest.raises(iql.UserError, match="different returns"):
        iql.reward_scale(np.array([1.0, 2.0, 3.0]), np.array([0, 0, 1], bool))  # a single trajectory


# --- flattening real Minari episodes ---------------------------------------------------------------
def test_flatten_matches_raw_episodes(minari_root):
    import minari

    root, buffers = minari_root
    raw = buffers["test/hopper/random-v0"]
    data = iql.flatten_episodes(minari.load_dataset("test/hopper/random-v0").iterate_episodes())
    lengths = [len(b.rewards) for b in raw]
    assert len(data["rewards"]) == sum(lengths)
    start = 0
    for b, n in zip(raw, lengths):
        obs = np.asarray(b.observations, dtype=np.float32)
        np.testing.assert_allclose(data["observations"][start:start + n], obs[:-1])
        np.testing.assert_allclose(data["next_observations"][start:start + n], obs[1:])  # s' of row t is s of t+1
        np.testing.assert_allclose(data["actions"][start:start + n], np.clip(b.actions, -1 + 1e-5, 1 - 1e-5))
        np.testing.assert_array_equal(data["terminals"][start:start + n], b.terminations)
        assert data["episode_ends"][start + n - 1] and not data["episode_ends"][start:start + n - 1].any()
        start += n
    # Both kinds of episode end exist, and only terminations are terminal.
    assert any(b.terminations[-1] for b in raw) and any(b.truncations[-1] for b in raw)
    assert data["terminals"].sum() == sum(b.terminations[-1] for b in raw)
    assert np.abs(data["actions"]).max() <= 1 - 1e-5


def test_load_data_masks_scale_and_device(minari_root):
    args = iql.Args(env_id="test/hopper/random-v0")
    data, dataset, info = iql.load_data(args, torch.device("cpu"))
    raw = iql.flatten_episodes(dataset.iterate_episodes())
    torch.testing.assert_close(data.masks, torch.from_numpy(1.0 - raw["terminals"].astype(np.float32)))
    assert info["task"] == "hopper"  # from the env spec Hopper-v5, not from the dataset id
    # IK's jump rule (a trajectory ends where the next row's observation is not this row's next one) finds exactly
    # Minari's episode ends, which the scale uses instead.
    jumps = np.append(np.linalg.norm(raw["observations"][1:] - raw["next_observations"][:-1], axis=-1) > 1e-6, True)
    np.testing.assert_array_equal(jumps, raw["episode_ends"])
    assert info["reward_scale"] == pytest.approx(iql.reward_scale(raw["rewards"], raw["episode_ends"]))
    torch.testing.assert_close(data.rewards, torch.from_numpy(raw["rewards"] * np.float32(info["reward_scale"])))
    assert all(x.dtype == torch.float32 for x in data)

    unscaled, _, info = iql.load_data(iql.Args(env_id="test/hopper/random-v0", normalize_reward=False), "cpu")
    assert info["reward_scale"] == 1.0
    torch.testing.assert_close(unscaled.rewards, torch.from_numpy(raw["rewards"]))


def test_medium_expert_is_concatenation(minari_root):
    _, buffers = minari_root
    medium = iql.load_data(iql.Args(env_id="hopper-medium-v2", normalize_reward=False), "cpu")[0]
    expert = iql.load_data(iql.Args(env_id="hopper-expert-v2", normalize_reward=False), "cpu")[0]
    both = iql.load_data(iql.Args(env_id="hopper-medium-expert-v2", normalize_reward=False), "cpu")[0]
    n_medium = sum(len(b.rewards) for b in buffers["mujoco/hopper/medium-v0"])
    assert len(medium.rewards) == n_medium
    for x, m, e in zip(both, medium, expert):
        torch.testing.assert_close(x, torch.cat([m, e]))


def test_sample_batch_draws_on_data_device():
    data = iql.Batch(*(torch.arange(10.0).reshape(10, 1).repeat(1, k) for k in (3, 2)),
                     torch.arange(10.0), torch.arange(10.0).reshape(10, 1).repeat(1, 3) + 1, torch.ones(10))
    torch.manual_seed(0)
    b = iql.sample_batch(data, 64, 2)  # two members' batches
    assert b.observations.shape == (2, 64, 3) and b.masks.shape == (2, 64)
    assert not torch.equal(b.rewards[0], b.rewards[1])  # each member draws its own indices
    torch.testing.assert_close(b.observations[..., 0], b.rewards)  # one index per row, shared by all fields
    torch.testing.assert_close(b.next_observations[..., 0], b.rewards + 1)


def test_reference_scores(minari_root):
    import minari

    lo, hi, source = iql.reference_scores(minari.load_dataset("test/hopper/random-v0"), "hopper")
    assert (lo, hi) == (-20.272305, 3234.3) and "dataset" in source
    lo, hi, source = iql.reference_scores(minari.load_dataset("test/hopper/noref-v0"), "hopper")
    assert (lo, hi) == iql.D4RL_REF_SCORES["hopper"] and "D4RL" in source
    lo, hi, source = iql.reference_scores(minari.load_dataset("test/hopper/noref-v0"), None)
    assert lo is None and "no reference scores" in source


def test_missing_dataset_is_a_user_error(minari_root, monkeypatch):
    root, _ = minari_root
    with pytest.raises(iql.UserError, match=f"'test/hopper/absent-v0' is not in {root}.*MINARI_DATASETS_PATH"):
        iql.load_minari_dataset("test/hopper/absent-v0")
