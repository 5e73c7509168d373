"""iql_finetune.py: the replay buffer, online transitions (masks, rewards), checkpoints, the script end to end."""

from functools import partial

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import run_main, scalars

import iql_antmaze as maze
import iql_finetune as ft

def indexed_data(n: int) -> ft.Batch:
    """Transitions whose reward is their index, so a sampled batch tells which rows it came from."""
    ids = torch.arange(n, dtype=torch.float32)
    return ft.Batch(ids[:, None].repeat(1, 3), torch.zeros(n, 2), ids, ids[:, None].repeat(1, 3), torch.ones(n))


def test_buffer_prefill_append_and_wrap_around():
    buffer = ft.ReplayBuffer(indexed_data(5), capacity=7, device="cpu")
    assert buffer.count == 5 and buffer.size.item() == 5
    np.testing.assert_array_equal(buffer.data.rewards.numpy(), [0, 1, 2, 3, 4, 0, 0])  # the dataset, in order
    for r in (5, 6):
        buffer.add(np.full(3, r), np.zeros(2), float(r), np.full(3, r + 0.5), 0.0)
    np.testing.assert_array_equal(buffer.data.rewards.numpy(), [0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(buffer.data.next_observations[6].numpy(), [6.5, 6.5, 6.5])
    assert buffer.data.masks[6].item() == 0.0 and buffer.count == 7
    for r in (7, 8):  # full: the oldest online transitions are overwritten; the dataset stays
        buffer.add(np.full(3, r), np.zeros(2), float(r), np.full(3, r), 1.0)
    np.testing.assert_array_equal(buffer.data.rewards.numpy(), [0, 1, 2, 3, 4, 7, 8])
    assert buffer.count == 7 and buffer.size.item() == 7 and buffer.next == 0


def test_buffer_members_share_the_dataset_and_keep_their_own_online_rows(tmp_path):
    """Two members: one copy of the dataset, then each member's online part; a member's batches come from the
    dataset and its own online rows only."""
    torch.manual_seed(0)
    buffer = ft.ReplayBuffer(indexed_data(5), capacity=8, device="cpu", members=2)
    assert len(buffer.data.rewards) == 5 + 2 * 3
    for r in (10, 11):  # member 0 stores 10, 11; member 1 stores 20, 21
        buffer.add(np.stack([np.full(3, r), np.full(3, r + 10)]), np.zeros((2, 2)), [r, r + 10],
                   np.zeros((2, 3)), [1.0, 1.0])
    np.testing.assert_array_equal(buffer.data.rewards.numpy(), [0, 1, 2, 3, 4, 10, 11, 0, 20, 21, 0])
    batch = buffer.sample(4000).rewards
    assert set(batch[0].tolist()) == {0, 1, 2, 3, 4, 10, 11} and set(batch[1].tolist()) == {0, 1, 2, 3, 4, 20, 21}
    torch.save(buffer.state_dict(), tmp_path / "buffer.pt")
    fresh = ft.ReplayBuffer(indexed_data(5), capacity=8, device="cpu", members=2)
    fresh.load_state_dict(torch.load(tmp_path / "buffer.pt"))
    assert torch.equal(fresh.data.rewards, buffer.data.rewards) and fresh.count == 7 and fresh.next == 2


def test_buffer_checkpoint_size_follows_the_online_rows(tmp_path):
    """The checkpoint holds the rows added online, not the buffer's whole storage (4 MB here)."""
    buffer = ft.ReplayBuffer(indexed_data(10), capacity=100_000, device="cpu")
    for r in (10, 11, 12):
        buffer.add(np.full(3, r), np.zeros(2), float(r), np.full(3, r), 1.0)
    torch.save(buffer.state_dict(), tmp_path / "buffer.pt")
    assert (tmp_path / "buffer.pt").stat().st_size < 10_000
    fresh = ft.ReplayBuffer(indexed_data(10), capacity=100_000, device="cpu")
    fresh.load_state_dict(torch.load(tmp_path / "buffer.pt"))
    assert fresh.count == 13 and torch.equal(fresh.data.rewards[:14], torch.arange(14.0) * (torch.arange(14) < 13))


def test_buffer_refuses_less_room_than_the_dataset():
    with pytest.raises(ft.UserError, match="smaller than the dataset"):
        ft.ReplayBuffer(indexed_data(10), capacity=9, device="cpu")


def test_buffer_samples_uniformly_over_dataset_and_online_part():
    torch.manual_seed(0)
    buffer = ft.ReplayBuffer(indexed_data(60), capacity=100, device="cpu")
    assert buffer.sample(4096).rewards.shape == (1, 4096)  # one member's batch
    assert buffer.sample(4096).rewards.max() < 60  # empty slots are never drawn
    for r in range(60, 90):
        buffer.add(np.full(3, r), np.zeros(2), float(r), np.full(3, r), 1.0)
    ids = torch.cat([buffer.sample(1000).rewards[0] for _ in range(90)]).long()
    counts = torch.bincount(ids, minlength=100).numpy()
    assert counts[90:].sum() == 0  # stored rows only
    assert counts[:90].min() > 0.75 * 1000 and counts[:90].max() < 1.25 * 1000  # 1000 expected per row
    assert abs(counts[60:90].sum() / len(ids) - 30 / 90) < 0.01  # the online third


def test_online_transition_masks_termination_not_truncation(maze_root):
    """Real PointMaze, episodic: reaching the goal terminates (mask 0, reward 1 -> 0, as the offline rule);
    a time-limit truncation keeps mask 1 and reward 0 -> -1."""
    import minari

    spec = minari.load_dataset("test/pointmaze/random-v0").recover_environment(eval_env=True).spec
    corridor = [[1, 1, 1, 1], [1, "g", "r", 1], [1, 1, 1, 1]]  # reset one cell from the goal
    env = gym.make(spec, continuing_task=False, maze_map=corridor, max_episode_steps=40)
    info = {"maze": True, "reward_scale": 1.0}
    obs, _ = env.reset(seed=0)
    terminated = truncated = False
    while not (terminated or truncated):  # head for the goal
        action = np.clip(5 * (obs["desired_goal"] - obs["achieved_goal"]), -1, 1)
        obs, reward, terminated, truncated, env_info = env.step(action)
    assert terminated and env_info["success"] and reward == 1.0
    *_, r, _, mask = ft.online_transition(None, action, reward, None, terminated, info)
    assert (r, mask) == (0.0, 0.0)
    offline_r, offline_terminal = ft.maze_rewards_and_terminals(np.array([reward], dtype=np.float32))
    assert (r, mask) == (offline_r[0], 1.0 - offline_terminal[0])  # the dataset's transform, step for step

    env.reset(seed=1)
    for _ in range(40):  # stand still until the time limit
        _, reward, terminated, truncated, _ = env.step(np.zeros(2))
    assert truncated and not terminated and reward == 0.0
    *_, r, _, mask = ft.online_transition(None, None, reward, None, terminated, info)
    assert (r, mask) == (-1.0, 1.0)
    env.close()


def test_online_rewards_get_the_dataset_scale(minari_root):
    """Locomotion: the dataset's rewards are raw rewards times the scale; online rewards get the same factor.
    A hopper that falls terminates (mask 0)."""
    _, buffers = minari_root
    data, _, info = ft.load_data(ft.Args(env_id="test/hopper/random-v0"))
    raw = np.concatenate([b.rewards for b in buffers["test/hopper/random-v0"]])
    assert info["reward_scale"] != 1.0 and not info["maze"]
    online = [ft.online_transition(None, None, r, None, False, info)[2] for r in raw]
    np.testing.assert_allclose(data.rewards.numpy(), online, rtol=1e-6)
    terminations = np.concatenate([b.terminations for b in buffers["test/hopper/random-v0"]])
    assert terminations.any()
    np.testing.assert_array_equal(data.masks.numpy(), 1.0 - terminations)
    env = gym.make("Hopper-v5")
    env.reset(seed=0)
    terminated = False
    while not terminated:
        _, reward, terminated, truncated, _ = env.step(np.ones(3))
        assert not truncated
    assert ft.online_transition(None, None, reward, None, terminated, info)[4] == 0.0
    env.close()


def test_online_step_stores_mask_0_on_a_fall_and_1_on_a_time_limit():
    """The online step as main() runs it, on the real Hopper-v5: a fall terminates (mask 0); a time-limit
    truncation bootstraps (mask 1). Rewards are stored on the dataset's scale."""
    torch.manual_seed(0)
    info = {"maze": False, "reward_scale": 2.0}
    observe = partial(ft.network_input, goal_input=True)
    for max_steps, expect_mask in ((1000, 0.0), (3, 1.0)):
        buffer = ft.ReplayBuffer(ft.Batch(torch.zeros(1, 11), torch.zeros(1, 3), torch.zeros(1), torch.zeros(1, 11),
                                          torch.ones(1)), capacity=1001, device="cpu")
        actor = ft.Actor(11, 3, 16)
        with torch.no_grad():
            actor.log_std.fill_(0.5)  # wild actions: the hopper falls within a few dozen steps
        env = gym.make("Hopper-v5", max_episode_steps=max_steps)
        obs, _ = env.reset(seed=0)
        rewards, terminated, truncated = [], False, False
        while not (terminated or truncated):
            ((obs, reward, terminated, truncated, _),) = ft.online_step([env], [obs], actor, buffer, observe, info,
                                                                        "cpu")
            rewards.append(reward)
        n = len(rewards)
        assert terminated == (expect_mask == 0.0) and buffer.count == 1 + n
        masks = buffer.data.masks[1:1 + n].numpy()
        assert masks[-1] == expect_mask and masks[:-1].all()
        np.testing.assert_allclose(buffer.data.rewards[1:1 + n].numpy(), 2.0 * np.array(rewards), rtol=1e-6)
        np.testing.assert_allclose(buffer.data.observations[n].numpy(), buffer.data.next_observations[n - 1].numpy())
        env.close()


def test_maze_data_and_observations_as_the_offline_scripts(maze_root):
    data, _, info = ft.load_data(ft.Args(env_id="test/pointmaze/random-v0"))
    offline, _, _ = maze.load_data(maze.Args(env_id="test/pointmaze/random-v0"), "cpu")
    for a, b in zip(data, offline):
        torch.testing.assert_close(a, b)
    assert info["maze"] and info["reward_scale"] == 1.0
    obs = {"achieved_goal": np.array([1.0, 2.0]), "observation": np.array([1.0, 2.0, 0.0, 0.0]),
           "desired_goal": np.array([3.0, 4.0])}
    assert ft.network_input(obs, goal_input=True).tolist() == [1, 2, 1, 2, 0, 0, 3, 4]
    assert ft.network_input(np.arange(3.0), goal_input=True).dtype == np.float32


def test_explore_samples_around_the_mean_within_bounds():
    torch.manual_seed(0)
    actor = ft.Actor(4, 2, 16)
    with torch.no_grad():
        actor.log_std.fill_(np.log(0.3))
    obs = torch.zeros(20000, 4)
    actions = ft.explore(actor, obs)
    mean = actor.act(obs[:1])
    assert actions.abs().max() <= 1
    torch.testing.assert_close(actions.mean(0), mean[0], atol=0.02, rtol=0)  # the mean is small: no clipping bias
    assert 0.28 < actions.std(0).min() < 0.32


def test_end_to_end_offline_then_online_and_checkpoint(maze_root, tmp_path, capsys):
    common = ["--env-id", "test/pointmaze/random-v0", "--eval-episodes", "2", "--hidden-dim", "32", "--log-freq", "50",
              "--no-cuda"]
    run_main("iql_finetune", tmp_path, *common, "--offline-steps", "100", "--online-steps", "150",
             "--eval-freq", "100", "--save-model", "--exp-name", "ft")
    stdout = capsys.readouterr().out
    assert "offline phase done after 100 updates" in stdout and "online end (step 250)" in stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    logged = scalars(run_dir)
    assert [s for s, _ in logged["losses/q_loss"]] == [50, 100, 150, 200, 250]
    assert [s for s, _ in logged["charts/success_rate"]] == [100, 200, 250]  # both phases, the change, the end
    assert logged["charts/online_start_step"] == [(100, 100.0)]
    # The eval horizon is 60 steps: 150 online steps make two whole episodes (after 60 and 120 online steps).
    assert [s for s, _ in logged["charts/online_return"]] == [160, 220]
    assert [v for _, v in logged["charts/online_episodes"]] == [1, 2]
    assert len(logged["charts/online_success"]) == 2
    assert [v for _, v in logged["charts/buffer_size"]] == [360, 360, 410, 460, 510]  # 6 x 60 data, then +1 a step
    for phase in ("offline", "online"):
        ckpt = torch.load(run_dir / f"ft_{phase}.pt", weights_only=True)
        assert ckpt["step"] == (100 if phase == "offline" else 250) and ckpt["phase"] == phase
    # load_checkpoint restores every network and Adam's moments, by value.
    args = ft.Args(env_id="test/pointmaze/random-v0", hidden_dim=32)
    nets = ft.make_networks(8, 2, args, "cpu", None, [ft.Member("", 1, 0.9, 10.0)])
    assert ft.load_checkpoint(str(run_dir / "ft_offline.pt"), nets, args, 8, 2, {"reward_scale": 1.0}) == 100
    saved = torch.load(run_dir / "ft_offline.pt", weights_only=True)
    for name in ("actor", "critic", "target_critic", "value"):  # the file holds one network each: no member axis
        for k, v in getattr(nets, name).state_dict().items():
            torch.testing.assert_close(v, saved[name][k][None])
    for opt, state in zip(nets.optimizers, saved["optimizers"]):
        assert len(opt.state) == len(state) > 0
        for p_state, p_saved in zip(opt.state.values(), state.values()):
            torch.testing.assert_close(p_state["exp_avg"], p_saved["exp_avg"][None])
            torch.testing.assert_close(p_state["exp_avg_sq"], p_saved["exp_avg_sq"][None])

    # Starting from the offline checkpoint skips pre-training: the online phase begins at its step.
    resume = tmp_path / "resume"
    resume.mkdir()
    run_main("iql_finetune", resume, *common, "--checkpoint", str(run_dir / "ft_offline.pt"),
             "--online-steps", "100", "--eval-freq", "1000")
    stdout = capsys.readouterr().out
    assert "pre-training skipped" in stdout and "offline phase done after 100 updates (0 in this run" in stdout
    (run_dir,) = (resume / "runs").iterdir()
    logged = scalars(run_dir)
    assert [s for s, _ in logged["losses/q_loss"]] == [150, 200]
    assert [s for s, _ in logged["charts/success_rate"]] == [100, 200]  # the loaded policy, then the end
    assert [s for s, _ in logged["charts/online_return"]] == [160]
    assert logged["charts/online_start_step"] == [(100, 100.0)]


def test_online_phase_from_the_start(maze_root, tmp_path, capsys):
    """--offline-steps 0: the starting policy is evaluated, and the phase change is logged at update 0."""
    run_main("iql_finetune", tmp_path, "--env-id", "test/pointmaze/random-v0", "--offline-steps", "0",
             "--online-steps", "20", "--eval-freq", "1000", "--eval-episodes", "1", "--hidden-dim", "16",
             "--log-freq", "10", "--no-cuda", "--save-model")
    assert "offline phase done after 0 updates" in capsys.readouterr().out
    logged = scalars(next((tmp_path / "runs").iterdir()))
    assert logged["charts/online_start_step"] == [(0, 0.0)]
    assert [s for s, _ in logged["charts/success_rate"]] == [0, 20]
    assert sorted(p.name for p in (tmp_path / "runs").glob("*/*.pt")) == ["checkpoint_20.pt", "iql_finetune_online.pt"]


def test_end_to_end_flat_observations(minari_root, tmp_path, capsys):
    """Locomotion data: the online env is Hopper-v5, whose episodes end early when the hopper falls."""
    run_main("iql_finetune", tmp_path, "--env-id", "test/hopper/random-v0", "--offline-steps", "50",
             "--online-steps", "100", "--eval-freq", "100", "--eval-episodes", "2", "--hidden-dim", "32",
             "--log-freq", "50", "--no-cuda", "--temperature", "1")
    stdout = capsys.readouterr().out
    assert "reward scale" in stdout and "normalized" in stdout
    assert "expectile    0.7    locomotion default" in stdout
    assert "temperature  1.0    flag (the locomotion default is 3.0)" in stdout
    logged = scalars(next((tmp_path / "runs").iterdir()))
    assert len(logged["charts/online_return"]) >= 3 and "charts/online_success" not in logged
    assert [s for s, _ in logged["charts/normalized_score"]] == [50, 100, 150]


def test_offline_checkpoint_loads_with_fresh_optimisers(continuous_run, capsys):
    hopper_checkpoint = str(continuous_run / "h.pt")
    args = ft.Args(env_id="test/hopper/random-v0", hidden_dim=32)
    nets = ft.make_networks(11, 3, args, "cpu", None, [ft.Member("", 1, 0.7, 3.0)])
    step = ft.load_checkpoint(hopper_checkpoint, nets, args, 11, 3, ft.load_data(args)[2])
    assert step == 20  # iql_continuous.py's --total-steps
    ckpt = torch.load(hopper_checkpoint, weights_only=True)
    torch.testing.assert_close(nets.actor.state_dict()["log_std"], ckpt["actor"]["log_std"][None])
    assert "Adam starts afresh" in capsys.readouterr().out


def test_buffer_room_is_what_the_online_steps_need():
    """Room for the online steps a run makes, no more (the same samples, less memory); none for an offline run; a
    buffer the size of the dataset cannot take online steps and says so before training."""
    assert ft.ReplayBuffer(indexed_data(5), capacity=100, device="cpu", members=3, online_steps=4).room == 4
    offline = ft.ReplayBuffer(indexed_data(5), capacity=100, device="cpu", members=3, online_steps=0)
    assert offline.room == 0 and len(offline.data.rewards) == 5 and offline.state_dict()["rows"]["rewards"].numel() == 0
    with pytest.raises(ft.UserError, match="leaves no room beside the dataset"):
        ft.ReplayBuffer(indexed_data(5), capacity=5, device="cpu", online_steps=1)
