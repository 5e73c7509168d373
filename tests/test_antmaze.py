"""iql_antmaze.py: maze observations, the reward and terminal rule, success rates, the script end to end."""

from functools import partial

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import run_main, scalars

import iql_antmaze as maze


def test_maze_observations_with_and_without_goal():
    obs = {"observation": np.array([[1.0, 2.0, 3.0]]), "achieved_goal": np.array([[10.0, 20.0]]),
           "desired_goal": np.array([[-1.0, -2.0]])}
    np.testing.assert_array_equal(maze.maze_observations(obs, goal_input=True), [[10, 20, 1, 2, 3, -1, -2]])
    np.testing.assert_array_equal(maze.maze_observations(obs, goal_input=False), [[10, 20, 1, 2, 3]])
    assert maze.maze_observations(obs, True).dtype == np.float32


def test_rewards_shift_and_terminal_on_goal():
    rewards, terminals = maze.maze_rewards_and_terminals(np.array([0.0, 0.0, 1.0, 1.0, 0.0]))
    np.testing.assert_array_equal(rewards, [-1, -1, 0, 0, -1])
    np.testing.assert_array_equal(terminals, [False, False, True, True, False])


class Episode:  # the attributes of a Minari EpisodeData that flatten_maze_episodes reads
    def __init__(self, obs, actions, rewards):
        self.observations, self.actions, self.rewards = obs, actions, rewards


def test_flatten_hand_built_episode_truncation_bootstraps():
    xy = np.arange(8.0).reshape(4, 2)  # 3 transitions, 4 observations
    obs = {"observation": xy, "achieved_goal": xy, "desired_goal": np.ones((4, 2))}
    ep = Episode(obs, np.array([[2.0, -2.0], [0.1, 0.2], [0.3, 0.4]]), np.array([0.0, 1.0, 0.0]))
    data = maze.flatten_maze_episodes([ep], goal_input=False)
    np.testing.assert_array_equal(data["observations"][:, :2], xy[:-1])
    np.testing.assert_array_equal(data["next_observations"][:, :2], xy[1:])
    np.testing.assert_array_equal(data["rewards"], [-1, 0, -1])
    # the goal step is terminal; the last step, where the episode was truncated, is not: it bootstraps
    np.testing.assert_array_equal(data["terminals"], [False, True, False])
    assert np.abs(data["actions"]).max() <= 1 - 1e-5


def test_record_success_counts_first_episodes_only():
    reached = np.zeros(4, dtype=bool)
    done = np.zeros(4, dtype=bool)
    # step 1: env 0 reaches the goal; env 3's info has no success entry (mask False)
    reached = maze.record_success(reached, done, {"success": np.array([1, 0, 0, 1], bool),
                                                  "_success": np.array([1, 1, 1, 0], bool)})
    done |= np.array([True, False, False, False])
    # step 2: env 0 is done (a new episode's success must not count again); env 1 succeeds
    reached = maze.record_success(reached, done, {"success": np.array([1, 1, 0, 0], bool),
                                                  "_success": np.ones(4, bool)})
    reached = maze.record_success(reached, done, {})  # a step with no success info at all
    np.testing.assert_array_equal(reached, [True, True, False, False])
    assert reached.mean() == 0.5  # env 2 and env 3 never succeeded


@pytest.mark.parametrize("name, ids", [
    ("antmaze-umaze-v2", ["D4RL/antmaze/umaze-v1"]),
    ("antmaze-large-diverse-v0", ["D4RL/antmaze/large-diverse-v1"]),
    ("maze2d-medium-v1", ["D4RL/pointmaze/medium-v2"]),
    ("local/pointmaze/umaze-v0", ["local/pointmaze/umaze-v0"]),
])
def test_resolve_maze_names(name, ids):
    assert maze.resolve_dataset_ids(name) == ids


@pytest.mark.parametrize("name, message", [
    ("antmaze-umaze-v1", "no Minari counterpart"),
    ("maze2d-umaze-v0", "no Minari counterpart"),
    ("maze2d-umaze-dense-v1", "no Minari counterpart"),
    ("antmaze-open-v2", "unknown env id"),
    ("hopper-medium-v2", "use iql_continuous.py"),
])
def test_maze_names_refused(name, message):
    with pytest.raises(maze.UserError, match=message):
        maze.resolve_dataset_ids(name)


def test_load_data_rules_on_real_maze_data(maze_root):
    data, dataset, info = maze.load_data(maze.Args(env_id="test/pointmaze/random-v0"), "cpu")
    assert data.observations.shape[1] == 8 and data.actions.shape[1] == 2
    # random walks never reach the goal: every reward is -1 and every transition, truncated ends included, bootstraps
    assert torch.equal(data.rewards, -torch.ones_like(data.rewards))
    assert torch.equal(data.masks, torch.ones_like(data.masks))
    with pytest.raises(maze.UserError, match="dense rewards"):
        maze.load_data(maze.Args(env_id="test/pointmaze/dense-v0"), "cpu")


def test_eval_envs_are_episodic_with_the_eval_horizon(maze_root):
    import minari

    dataset = minari.load_dataset("test/pointmaze/random-v0")
    assert dataset.recover_environment(eval_env=True).unwrapped.continuing_task  # recorded as a continuing task
    envs = maze.make_maze_eval_envs(dataset, 2)
    assert envs.envs[0].unwrapped.continuing_task is False and envs.envs[0].spec.max_episode_steps == 60
    envs.close()
    ant = maze.make_eval_envs(gym.spec("AntMaze_UMaze-v4"), 1, continuing_task=False)  # the override reaches AntMaze
    assert ant.envs[0].unwrapped.continuing_task is False
    ant.close()


class GoalSeeker:
    """Acts like the actor: heads straight for desired_goal (input layout: achieved_goal, observation, goal)."""

    def eval(self):
        pass

    def train(self):
        pass

    def act(self, obs):
        return (5 * (obs[:, -2:] - obs[:, :2])).clamp(-1, 1)


def test_evaluate_on_real_maze_ends_at_goal(maze_root):
    """With continuing_task=False an episode ends at the goal, and info["success"] marks it."""
    import minari

    spec = minari.load_dataset("test/pointmaze/random-v0").recover_environment(eval_env=True).spec
    corridor = [[1, 1, 1, 1], [1, "g", "r", 1], [1, 1, 1, 1]]  # reset one cell from the goal
    envs = maze.make_eval_envs(spec, 3, continuing_task=False, maze_map=corridor)
    observe = partial(maze.maze_observations, goal_input=True)
    returns, reached = maze.evaluate(GoalSeeker(), envs, [0, 1, 2], "cpu", observe)
    assert reached.all() and reached.dtype == bool
    np.testing.assert_array_equal(returns, [1.0, 1.0, 1.0])  # the episode ends on its first goal reward
    actor = maze.Actor(8, 2, 16)
    with torch.no_grad():
        actor.net[-1].weight.zero_()  # a policy that stands still never succeeds
    returns, reached = maze.evaluate(actor, envs, [0, 1, 2], "cpu", observe)
    assert not reached.any() and returns.sum() == 0
    envs.close()


def test_end_to_end_on_tiny_pointmaze(maze_root, tmp_path, capsys):
    run_main("iql_antmaze", tmp_path, "--env-id", "test/pointmaze/random-v0", "--total-steps", "200",
             "--eval-freq", "100", "--eval-episodes", "3", "--log-freq", "100", "--hidden-dim", "64", "--save-model",
                     "--exp-name", "e2e", "--no-cuda")
    stdout = capsys.readouterr().out
    assert "continuing_task=False" in stdout and "final (step 200): success rate" in stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    logged = scalars(run_dir)
    rates = [v for _, v in logged["charts/success_rate"]]
    scores = [v for _, v in logged["charts/normalized_score"]]
    assert len(rates) == 2 and scores == pytest.approx([100 * r for r in rates])
    ckpt = torch.load(run_dir / "e2e.pt", weights_only=False)
    assert ckpt["args"]["goal_input"] is True and ckpt["obs_dim"] == 8  # xy + (x, y, vx, vy) + goal xy
    actor = maze.Actor(ckpt["obs_dim"], ckpt["act_dim"], ckpt["args"]["hidden_dim"])
    actor.load_state_dict(ckpt["actor"])
    actor.eval()
    env = gym.make("PointMaze_UMaze-v3")
    obs, _ = env.reset(seed=0)
    action = actor.act(torch.as_tensor(maze.maze_observations(obs, goal_input=True))).numpy()
    assert action.shape == (2,) and np.all(np.abs(action) <= 1)
    env.step(action)
