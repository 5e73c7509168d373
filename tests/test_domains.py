"""Domains: hyperparameter defaults from the env spec, Adroit and Kitchen data, the D4RL-style Kitchen score."""

import mujoco
import numpy as np
import pytest
import torch
from conftest import KITCHEN_TASKS, run_main, scalars

import iql_antmaze as maze
import iql_continuous as cont


@pytest.mark.parametrize("env_name, domain", [
    ("Hopper", "locomotion"), ("HalfCheetah", "locomotion"), ("Walker2d", "locomotion"),
    ("AdroitHandPen", "adroit"), ("AdroitHandRelocate", "adroit"), ("FrankaKitchen", "kitchen"),
    ("AntMaze_UMaze", "maze"), ("PointMaze_Medium_Diverse_GR", "maze"), ("Swimmer", None), ("", None),
])
def test_domain_comes_from_the_env_name(env_name, domain):
    assert cont.env_domain(env_name) == domain


def test_flags_win_over_domain_defaults_and_the_table_shows_both():
    args, lines = cont.with_domain_defaults(cont.Args(temperature=[1.0, 2.0], dropout=0.0), "adroit")
    assert (args.expectile, args.temperature, args.dropout) == ([0.7], [1.0, 2.0], 0.0)  # one value, or a sweep
    assert lines[0].split() == ["expectile", "0.7", "adroit", "default"]
    assert "temperature  1.0 2.0" in lines[1] and "flag (the adroit default is 0.5)" in lines[1]
    assert "dropout      0.0" in lines[2] and "flag (the adroit default is 0.1)" in lines[2]
    args, _ = cont.with_domain_defaults(cont.Args(), "maze")
    assert (args.expectile, args.temperature, args.dropout) == ([0.9], [10.0], None)
    assert not any(isinstance(m, torch.nn.Dropout) for m in cont.Actor(3, 1, 8, args.dropout).net)
    args, _ = cont.with_domain_defaults(cont.Args(), "kitchen")
    dropouts = [m.p for m in cont.Actor(3, 1, 8, args.dropout).net if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.1, 0.1]  # after each hidden layer


def test_adroit_and_kitchen_data(robotics_root):
    _, buffers = robotics_root
    pen, pen_dataset, info = cont.load_data(cont.Args(env_id="test/pen/random-v0"), "cpu")
    assert info["domain"] == "adroit" and info["reward_scale"] == 1.0  # Adroit rewards as stored
    raw = np.concatenate([b.rewards for b in buffers["test/pen/random-v0"]])
    np.testing.assert_allclose(pen.rewards.numpy(), raw, rtol=1e-6)
    assert pen.observations.shape == (90, 45)
    kitchen, dataset, info = cont.load_data(cont.Args(env_id="test/kitchen/random-v0"), "cpu")
    assert info["domain"] == "kitchen" and kitchen.observations.shape == (60, 59)  # the observation array only
    first = buffers["test/kitchen/random-v0"][0]
    np.testing.assert_allclose(kitchen.observations[:20].numpy(), first.observations["observation"][:-1], rtol=1e-6)
    np.testing.assert_allclose(kitchen.next_observations[:20].numpy(), first.observations["observation"][1:], rtol=1e-6)
    # Kitchen scores on D4RL's 0-4 scale, whatever reference scores the dataset has; pen falls back to D4RL's.
    assert cont.reference_scores(dataset, "kitchen")[:2] == (0.0, 4.0)
    assert cont.reference_scores(pen_dataset, "pen")[:2] == (96.262799, 3076.8331017826877)  # no scores of its own


def test_scripts_point_to_each_other_by_domain(robotics_root, maze_root):
    with pytest.raises(cont.UserError, match="is a maze dataset .*use iql_antmaze.py"):
        cont.load_data(cont.Args(env_id="test/pointmaze/random-v0"), "cpu")
    with pytest.raises(maze.UserError, match="is a kitchen dataset: use iql_continuous.py"):
        maze.load_data(maze.Args(env_id="test/kitchen/random-v0"), "cpu")
    with pytest.raises(maze.UserError, match="is an adroit dataset: use iql_continuous.py"):
        maze.load_data(maze.Args(env_id="test/pen/random-v0"), "cpu")


class TaskCompleter:
    """Stands in for the actor: on its first call it puts the joints of `tasks` at their goal positions in the
    first env's MuJoCo data (as if the robot had done them), and it always returns zero actions."""

    def __init__(self, env, tasks):
        self.env, self.tasks, self.done = env, tasks, False

    def eval(self):
        pass

    def train(self):
        pass

    def act(self, obs):
        if not self.done:
            from gymnasium_robotics.envs.franka_kitchen.kitchen_env import OBS_ELEMENT_GOALS, OBS_ELEMENT_INDICES

            kitchen = self.env.unwrapped
            for task in self.tasks:
                kitchen.data.qpos[OBS_ELEMENT_INDICES[task]] = OBS_ELEMENT_GOALS[task]
            mujoco.mj_forward(kitchen.model, kitchen.data)
            self.done = True
        return torch.zeros(obs.shape[0], 9)


@pytest.mark.parametrize("tasks", [["microwave", "light switch"], KITCHEN_TASKS])
def test_kitchen_score_counts_completed_tasks(robotics_root, tasks):
    """The real FrankaKitchen env built as the script builds it: each completed task pays once, and the score is
    100 x completed / 4. The env the data were recorded in pays every step while a task stays done."""
    import minari

    dataset = minari.load_dataset("test/kitchen/random-v0")
    spec = dataset.recover_environment(eval_env=True).spec
    envs = cont.make_eval_envs(spec, 1, **cont.KITCHEN_EVAL)
    returns = cont.evaluate(TaskCompleter(envs.envs[0], tasks), envs, [0], "cpu")
    ref_min, ref_max, _ = cont.reference_scores(dataset, "kitchen")
    assert returns[0] == len(tasks)
    assert 100 * (returns[0] - ref_min) / (ref_max - ref_min) == 25.0 * len(tasks)
    envs.close()
    recorded = cont.make_eval_envs(spec, 1)  # tasks kept: the same episode pays on every step
    returns = cont.evaluate(TaskCompleter(recorded.envs[0], tasks), recorded, [0], "cpu")
    assert returns[0] > 5 * len(tasks)
    recorded.close()


def test_evaluation_is_deterministic_with_dropout(minari_root):
    import minari

    spec = minari.load_dataset("test/hopper/random-v0").recover_environment(eval_env=True).spec
    envs = cont.make_eval_envs(spec, 2)
    torch.manual_seed(0)
    actor = cont.Actor(11, 3, 32, dropout=0.5)
    first = cont.evaluate(actor, envs, [3, 4], "cpu")
    second = cont.evaluate(actor, envs, [3, 4], "cpu")
    np.testing.assert_array_equal(first, second)
    assert actor.training  # back in training mode, where dropout acts
    obs = torch.randn(4, 11)
    assert not torch.equal(actor.log_prob(obs, torch.zeros(4, 3)), actor.log_prob(obs, torch.zeros(4, 3)))
    envs.close()


@pytest.mark.parametrize("dataset_id, domain, defaults", [
    ("test/pen/random-v0", "adroit", ("0.7", "0.5", "0.1")),
    ("test/kitchen/random-v0", "kitchen", ("0.7", "0.5", "0.1")),
])
def test_end_to_end_adroit_and_kitchen(robotics_root, tmp_path, capsys, dataset_id, domain, defaults):
    run_main("iql_continuous", tmp_path, "--env-id", dataset_id, "--total-steps", "200", "--eval-freq", "100",
             "--eval-episodes", "2", "--hidden-dim", "32", "--log-freq", "100", "--batch-size", "32", "--no-cuda")
    stdout = capsys.readouterr().out
    for name, value in zip(("expectile", "temperature", "dropout"), defaults):
        assert f"{name:<12} {value:<6} {domain} default" in stdout
    logged = scalars(next((tmp_path / "runs").iterdir()))
    assert [s for s, _ in logged["charts/normalized_score"]] == [100, 200]


def test_kitchen_evaluation_env_is_built_the_d4rl_way(robotics_root, tmp_path, monkeypatch):
    """main() builds the Kitchen evaluation envs with KITCHEN_EVAL (tasks removed when done, episode ends when
    all are), which a random policy's score alone cannot show."""
    seen, real = [], cont.make_eval_envs

    def spy(spec, num_envs, render=False, **overrides):
        seen.append(overrides)
        return real(spec, num_envs, render, **overrides)

    monkeypatch.setattr(cont, "make_eval_envs", spy)
    run_main("iql_continuous", tmp_path, "--env-id", "test/kitchen/random-v0", "--total-steps", "2", "--eval-freq", "2",
             "--eval-episodes", "1", "--hidden-dim", "8", "--batch-size", "8", "--checkpoint-freq", "0", "--no-cuda")
    assert seen == [{"remove_task_when_completed": True, "terminate_on_tasks_completed": True}]


def test_finetune_on_adroit(robotics_root, tmp_path, capsys):
    run_main("iql_finetune", tmp_path, "--env-id", "test/pen/random-v0", "--offline-steps", "50",
             "--online-steps", "40", "--eval-freq", "1000", "--eval-episodes", "1", "--hidden-dim", "32",
             "--log-freq", "10", "--batch-size", "32", "--no-cuda")
    stdout = capsys.readouterr().out
    assert "dropout      0.1    adroit default" in stdout and "D4RL's pen constants" in stdout
    logged = scalars(next((tmp_path / "runs").iterdir()))
    assert [s for s, _ in logged["charts/online_return"]] == [80]  # one 30-step episode in 40 online steps
    assert [s for s, _ in logged["charts/normalized_score"]] == [50, 90]


def test_adroit_and_kitchen_names():
    assert cont.resolve_dataset_ids("pen-human-v1") == ["D4RL/pen/human-v2"]
    assert cont.resolve_dataset_ids("relocate-cloned-v0") == ["D4RL/relocate/cloned-v2"]
    assert cont.resolve_dataset_ids("kitchen-mixed-v0") == ["D4RL/kitchen/mixed-v2"]
    with pytest.raises(cont.UserError, match="use iql_antmaze.py"):
        cont.resolve_dataset_ids("antmaze-umaze-v2")
    with pytest.raises(cont.UserError, match="unknown env id"):
        cont.resolve_dataset_ids("kitchen-full-v0")

