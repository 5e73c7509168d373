"""Runs survive interruption and bad input: exact resume, SIGTERM, NaN guards, unreadable data."""

import importlib
import os
import shlex
import shutil
import signal
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_one_line_error, rollout_buffers, run_main, run_script, scalars

import iql_continuous as cont


@pytest.fixture(scope="session")
def broken_root(minari_root):
    """`test/hopper/nan-v0` (one NaN reward), `test/hopper/truncated-v0` (its data file cut in half),
    `test/hopper/nospec-v0` (no env recorded: nothing to evaluate in) and `test/pendulum/wide-v0` (actions in
    [-3, 3])."""
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
        hopper = gym.make("Hopper-v5")
        minari.create_dataset_from_buffers("test/hopper/nospec-v0", episodes[:2], action_space=hopper.action_space,
                                           observation_space=hopper.observation_space, algorithm_name="x",
                                           author="tests", author_email="-", code_permalink="-", description="no env")
        hopper.close()
        pendulum = gym.make("InvertedPendulum-v5", max_episode_steps=20)
        minari.create_dataset_from_buffers("test/pendulum/wide-v0", rollout_buffers(pendulum, 2, seed=0), env=pendulum,
                                           algorithm_name="x", author="tests", author_email="-", code_permalink="-",
                                           description="actions in [-3, 3]")
        pendulum.close()
    return root, buffers


HOPPER, MAZE = ["--env-id", "test/hopper/random-v0"], ["--env-id", "test/pointmaze/random-v0"]
NAN = "has NaN or infinite rewards (1 transitions, the first at index"
TRUNCATED = "truncated-v0/data (OSError: Unable to synchronously open file (truncated file"
BAD_INPUTS = [  # (script, flags, the message's telling part): every bad input a user met, over the three scripts
    ("iql_continuous", HOPPER + ["--expectile", "1.5"], "--expectile must be in (0, 1), got 1.5"),
    ("iql_antmaze", MAZE + ["--expectile", "0"], "--expectile must be in (0, 1), got 0.0"),
    ("iql_finetune", MAZE + ["--temperature", "-1"], "--temperature must be >= 0 (0 is behaviour cloning), got -1.0"),
    ("iql_antmaze", MAZE + ["--batch-size", "0"], "--batch-size must be positive, got 0"),
    ("iql_continuous", HOPPER + ["--num-seeds", "0"], "--num-seeds must be positive, got 0"),
    ("iql_continuous", HOPPER + ["--expectile", "0.7", "0.7"], "--expectile has a value twice: [0.7, 0.7]"),
    ("iql_antmaze", MAZE + ["--expectile"], "--expectile needs at least one value"),
    ("iql_finetune", MAZE + ["--temperature", "1", "1"], "--temperature has a value twice: [1.0, 1.0]"),
    ("iql_continuous", HOPPER + ["--batch-size", "100000"], "--batch-size 100000 is larger than the dataset (333"),
    ("iql_continuous", HOPPER + ["--total-steps", "0"], "--total-steps must be positive, got 0"),
    ("iql_finetune", MAZE + ["--offline-steps", "-5"], "--offline-steps must be >= 0, got -5"),
    ("iql_finetune", MAZE + ["--offline-steps", "0", "--online-steps", "0"], "are both 0: nothing to train"),
    ("iql_finetune", MAZE + ["--online-steps", "-1"], "--online-steps must be >= 0"),
    ("iql_antmaze", MAZE + ["--eval-episodes", "0"], "--eval-episodes must be positive, got 0"),
    ("iql_continuous", HOPPER + ["--dropout", "1.0"], "--dropout must be in [0, 1), got 1.0"),
    ("iql_continuous", ["--env-id", "cartpole"], "unknown env id 'cartpole'"),
    ("iql_continuous", ["--env-id", "hopper-random-v2"], "no Minari counterpart"),
    ("iql_finetune", ["--env-id", "hopper-random-v2"], "unknown env id"),
    ("iql_antmaze", ["--env-id", "antmaze-umaze-v1"], "no Minari counterpart"),
    ("iql_continuous", ["--env-id", "test/hopper/absent-v0"], "could not be downloaded"),
    ("iql_antmaze", ["--env-id", "test/pointmaze/absent-v0"], "could not be downloaded"),
    ("iql_finetune", ["--env-id", "test/pointmaze/absent-v0"], "could not be downloaded"),
    ("iql_continuous", ["--env-id", "test/hopper/nan-v0"], NAN),
    ("iql_finetune", ["--env-id", "test/hopper/nan-v0"], NAN),
    ("iql_continuous", ["--env-id", "test/hopper/truncated-v0"], TRUNCATED),
    ("iql_finetune", ["--env-id", "test/hopper/truncated-v0"], TRUNCATED),
    ("iql_continuous", ["--env-id", "test/hopper/nospec-v0", "--batch-size", "32"], "cannot make the evaluation env"),
    ("iql_continuous", ["--env-id", "test/pendulum/wide-v0"], "has actions Box(-3.0, 3.0, (1,), float32); the tanh"),
    ("iql_finetune", ["--env-id", "test/pendulum/wide-v0"], "the tanh policy here acts in Box(-1.0, 1.0)"),
    ("iql_continuous", MAZE, "is a maze dataset"),  # the wrong observation kind for the script
    ("iql_antmaze", HOPPER, "is a locomotion dataset: use iql_continuous.py"),
    ("iql_finetune", ["--env-id", "test/kitchen/random-v0"], "offline only, with iql_continuous.py"),
    ("iql_finetune", MAZE + ["--buffer-size", "100"], "smaller than the dataset (360 transitions)"),
    ("iql_finetune", ["--resume", "CHECKPOINT"], "was written by iql_continuous.py, not iql_finetune.py"),
    ("iql_antmaze", ["--resume", "CHECKPOINT"], "was written by iql_continuous.py, not iql_antmaze.py"),
    ("iql_continuous", ["--resume", "absent.pt"], "--resume absent.pt: no such file"),
    ("iql_continuous", ["--resume", "MODEL"], "is not a checkpoint_{step}.pt file of this script"),
    ("iql_finetune", MAZE + ["--checkpoint", "absent.pt"], "no such file"),
    ("iql_finetune", MAZE + ["--checkpoint", "CHECKPOINT"], "is not a --save-model file (a checkpoint_{step}.pt"),
    ("iql_finetune", MAZE + ["--checkpoint", "MODEL"], "another env, or --goal-input differs"),
    ("iql_finetune", HOPPER + ["--checkpoint", "MODEL"], "pass --hidden-dim 32"),
    ("iql_finetune", HOPPER + ["--checkpoint", "MODEL", "--hidden-dim", "32", "--no-normalize-reward"],
     "trained on rewards scaled by"),
]
# The real command line, once per script: the exit status, one line on stderr, no traceback.
ON_THE_COMMAND_LINE = [BAD_INPUTS[i] for i in (0, 18, 25)]


def with_files(flags, run_dir):
    """The table's flags with CHECKPOINT and MODEL replaced by the files of a real iql_continuous.py run."""
    files = {"CHECKPOINT": str(run_dir / "checkpoint_20.pt"), "MODEL": str(run_dir / "h.pt")}
    flags = [files.get(f, f) for f in flags]
    return flags + (["--seed", "1"] if "--eval-episodes" in flags else ["--eval-episodes", "1"])


@pytest.fixture
def bad_input_data(maze_root, robotics_root, broken_root, continuous_run):
    return continuous_run


@pytest.mark.parametrize("script, flags, message", BAD_INPUTS, ids=[" ".join([c[0], *c[1][-2:]]) for c in BAD_INPUTS])
def test_bad_input_is_a_user_error(bad_input_data, tmp_path, script, flags, message):
    """main() stops with the script's UserError, whose one line says what is wrong, before any training."""
    with pytest.raises(importlib.import_module(script).UserError) as error:
        run_main(script, tmp_path, *with_files(flags, bad_input_data))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("script, flags, message", ON_THE_COMMAND_LINE, ids=[c[0] for c in ON_THE_COMMAND_LINE])
def test_bad_input_is_one_line_on_the_command_line(bad_input_data, tmp_path, script, flags, message):
    assert_one_line_error(run_script(script, tmp_path, *with_files(flags, bad_input_data), timeout=120), message)


def test_nan_index_is_the_transition(broken_root):
    """The NaN sits at step 3 of the second episode: its index counts the first episode's transitions."""
    _, buffers = broken_root
    first = len(buffers["test/hopper/noref-v0"][0].rewards)
    with pytest.raises(cont.UserError, match=f"first at index {first + 3}"):
        cont.load_data(cont.Args(env_id="test/hopper/nan-v0"), "cpu")


def test_divergence_stops_at_the_next_log_step(minari_root, tmp_path, capsys):
    """A real divergence (an absurd learning rate), caught where the losses are logged, with the step named."""
    with pytest.raises(cont.UserError, match="^step 50: .*nan.*the run diverged") as error:
        run_main("iql_continuous", tmp_path, "--env-id", "test/hopper/random-v0", "--learning-rate", "1e12",
                 "--total-steps", "300", "--log-freq", "50", "--eval-freq", "300", "--eval-episodes", "1",
                 "--hidden-dim", "32")
    assert "\n" not in str(error.value)
    assert "step 50/300" not in capsys.readouterr().out  # stopped before printing the progress line of that step


def test_progress_line():
    line = cont.progress_line(250, 1000, 50.0, "normalized 12.30")
    assert line == "step 250/1,000  50 updates/s  ETA 0h00m15s  last evaluation: normalized 12.30"
    assert "ETA 5h33m20s" in cont.progress_line(0, 1_000_000, 50.0, "none yet")


def final_state(run_dir):
    return torch.load(sorted(run_dir.glob("checkpoint_*.pt"), key=lambda p: int(p.stem.split("_")[1]))[-1],
                      weights_only=False)


def assert_same_training_state(a: dict, b: dict):
    assert a["step"] == b["step"]
    for name in ("actor", "critic", "target_critic", "value"):
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), (name, k)
    for opt_a, opt_b in zip(a["optimizers"], b["optimizers"]):
        for i in opt_a["state"]:
            for k in opt_a["state"][i]:
                assert torch.equal(opt_a["state"][i][k], opt_b["state"][i][k]), (i, k)


@pytest.mark.parametrize("script, dataset_id, flags, middle", [
    ("iql_continuous", "test/hopper/random-v0", ["--total-steps", "200", "--checkpoint-freq", "100"], 100),
    # a population of 4: two seeds, two temperatures
    ("iql_antmaze", "test/pointmaze/random-v0", ["--total-steps", "200", "--checkpoint-freq", "100", "--num-seeds", "2",
                                                 "--temperature", "1", "3"], 100),
    # fine-tuning: resumed from the checkpoint at the offline/online boundary, then 100 online steps
    ("iql_finetune", "test/pointmaze/random-v0", ["--offline-steps", "100", "--online-steps", "100",
                                                  "--checkpoint-freq", "1000"], 100),
    ("iql_finetune", "test/pointmaze/random-v0", ["--offline-steps", "100", "--online-steps", "60",
                                                  "--checkpoint-freq", "1000", "--num-seeds", "2"], 100),  # population
])
def test_resumed_run_ends_bit_identical(maze_root, tmp_path, capsys, script, dataset_id, flags, middle):
    common = ["--env-id", dataset_id, "--eval-freq", "100", "--eval-episodes", "2", "--hidden-dim", "32",
              "--dropout", "0.1", "--log-freq", "50", "--batch-size", "64", "--no-cuda"]
    straight = tmp_path / "straight"
    straight.mkdir()
    run_main(script, straight, *common, *flags)
    (run_dir,) = (straight / "runs").iterdir()
    resumed_dir = tmp_path / "elsewhere" / run_dir.name
    resumed_dir.mkdir(parents=True)
    # A run saved with --cudagraphs resumes on this CPU: the device flags come from the resuming command.
    state = torch.load(run_dir / f"checkpoint_{middle}.pt", weights_only=False)
    state["args"]["cudagraphs"] = True
    torch.save(state, resumed_dir / f"checkpoint_{middle}.pt")
    # Resumed from another working directory: the run continues in the checkpoint's folder, not in ./runs.
    capsys.readouterr()
    run_main(script, tmp_path, "--resume", resumed_dir / f"checkpoint_{middle}.pt")
    assert not (tmp_path / "runs").exists()
    stdout = capsys.readouterr().out
    assert f"resuming {run_dir.name} from step {middle}" in stdout
    assert "last evaluation: none yet" not in stdout  # the evaluation saved at the checkpoint's step is shown
    a, b = final_state(run_dir), final_state(resumed_dir)
    assert_same_training_state(a, b)
    assert a["evaluations"] == b["evaluations"]
    if script == "iql_finetune":
        for k in a["buffer"]["rows"]:
            assert torch.equal(a["buffer"]["rows"][k], b["buffer"]["rows"][k])
    # TensorBoard continues without repeating steps: the resumed folder's log starts after the checkpoint.
    logged = scalars(resumed_dir / ("seed2" if script == "iql_finetune" else "seed2-temperature3.0")
                     if "--num-seeds" in flags else resumed_dir)
    assert min(s for s, _ in logged["losses/q_loss"]) > middle


def test_sigterm_saves_a_checkpoint_that_finishes_the_run(minari_root, tmp_path, capsys):
    command = [sys.executable, str(ROOT / "iql_continuous.py"), "--env-id", "test/hopper/random-v0", "--total-steps",
               "1500", "--log-freq", "50", "--eval-freq", "1500", "--eval-episodes", "1", "--hidden-dim", "16",
               "--batch-size", "32", "--checkpoint-freq", "0", "--no-cuda"]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in proc.stdout:  # wait until training runs
        if line.startswith("step 50/1,500"):
            break
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == cont.STOPPED
    (message,) = stderr.strip().splitlines()
    assert message.startswith("SIGTERM at step ")
    words = shlex.split(message.split("continue with: ")[1])  # run in the same folder, in a fresh shell:
    assert words[:2] == [f"MINARI_DATASETS_PATH={minari_root[0].resolve()}", "python"]  # the data folder carried
    assert (tmp_path / words[2]).resolve() == ROOT / "iql_continuous.py" and words[3] == "--resume"
    assert words[-1] == "--no-cuda"  # the device flags of the stopped run come with the command
    path = words[4]
    stopped_at = torch.load(tmp_path / path, weights_only=False)["step"]
    assert 50 <= stopped_at < 1500
    run_main("iql_continuous", tmp_path, "--resume", path)
    stdout = capsys.readouterr().out
    assert "step    1,500" in stdout and f"from step {stopped_at:,}" in stdout


def test_the_resume_command_can_be_pasted_back(monkeypatch, capsys):
    """A path with a space is quoted; the dataset folder and the device flags come with the command."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", "/data/my datasets")
    stop = cont.StopSignal.__new__(cont.StopSignal)  # no handlers installed
    stop.name = "SIGUSR1"
    with pytest.raises(SystemExit) as exit_status:
        stop.exit(7, "my runs/r1/checkpoint_7.pt", cont.Args(compile=True))
    assert exit_status.value.code == cont.STOPPED
    message = capsys.readouterr().err
    assert message.startswith("SIGUSR1 at step 7: saved my runs/r1/checkpoint_7.pt; continue with: ")
    words = shlex.split(message.split("continue with: ")[1])
    assert words[:2] + words[3:] == ["MINARI_DATASETS_PATH=/data/my datasets", "python", "--resume",
                                     "my runs/r1/checkpoint_7.pt", "--compile"]
    assert Path(words[2]).resolve() == ROOT / "iql_continuous.py"  # the script, from this working directory


def test_resume_refuses_settings_it_does_not_know(continuous_run, tmp_path):
    state = torch.load(continuous_run / "checkpoint_20.pt", weights_only=False)
    state["args"]["bogus_flag"] = 1  # as another version of the script would write it
    torch.save(state, tmp_path / "checkpoint_20.pt")
    with pytest.raises(cont.UserError, match=r"another version of iql_continuous.py.*unknown here: \[.bogus_flag.\]"):
        run_main("iql_continuous", tmp_path, "--resume", tmp_path / "checkpoint_20.pt")


@pytest.mark.parametrize("older", ["no member axis", "three optimisers"])
def test_resume_refuses_a_checkpoint_of_an_older_version(continuous_run, tmp_path, older):
    state = torch.load(continuous_run / "checkpoint_20.pt", weights_only=False)
    if older == "no member axis":
        del state["args"]["num_seeds"]  # as the scripts wrote it before the member axis
    else:
        state["optimizers"].append(state["optimizers"][-1])  # as before the actor and critics shared one Adam
    torch.save(state, tmp_path / "checkpoint_20.pt")
    reason = r"\(settings missing: \['num_seeds'\]\)" if older == "no member axis" else r"\(3 optimisers, not 2\)"
    with pytest.raises(cont.UserError, match=r"written by another version of iql_continuous.py, which this one cannot "
                                             r"resume " + reason + "$"):
        run_main("iql_continuous", tmp_path, "--resume", tmp_path / "checkpoint_20.pt")


def test_checkpoint_freq_zero_writes_no_checkpoint(minari_root, tmp_path):
    run_main("iql_continuous", tmp_path, "--env-id", "test/hopper/random-v0", "--total-steps", "20", "--eval-episodes",
             "1", "--hidden-dim", "16", "--batch-size", "32", "--save-model", "--exp-name", "m",
             "--checkpoint-freq", "0")
    assert [p.name for p in tmp_path.glob("runs/*/*.pt")] == ["m.pt"]


def test_stop_signals_set_the_flag_instead_of_killing():
    """SIGUSR1/SIGUSR2 (SLURM's `--signal` warning) would kill a python process by default: here they set the flag
    that makes the loop save and stop, like SIGINT and SIGTERM."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
    handlers = {s: signal.getsignal(s) for s in signals}
    try:
        for sig in signals:
            stop = cont.StopSignal()
            assert stop.name is None
            os.kill(os.getpid(), sig)
            assert stop.name == sig.name
            assert signal.getsignal(sig) == signal.SIG_DFL  # a second one stops the run at once
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("total_steps", [1, 2])
def test_a_signal_at_the_last_step_lets_the_run_finish(minari_root, tmp_path, monkeypatch, capsys, total_steps):
    """A signal that is already pending: with updates left, the run saves at step 1 and exits with STOPPED; at the
    last step it finishes (final report, final checkpoint) instead of asking to be resumed."""

    class Pending(cont.StopSignal):
        def __init__(self):  # no handlers: the signal has already arrived
            self.name = "SIGTERM"

    monkeypatch.setattr(cont, "StopSignal", Pending)
    monkeypatch.chdir(tmp_path)
    args = cont.Args(env_id="test/hopper/random-v0", total_steps=total_steps, eval_freq=1, eval_episodes=1,
                     hidden_dim=8, batch_size=8, cuda=False)
    if total_steps == 1:
        cont.main(args)
        assert "final (step 1)" in capsys.readouterr().out
    else:
        with pytest.raises(SystemExit) as stop:
            cont.main(args)
        assert stop.value.code == cont.STOPPED
        assert "SIGTERM at step 1: saved runs/" in capsys.readouterr().err
    assert [p.name for p in tmp_path.glob("runs/*/checkpoint_*.pt")] == ["checkpoint_1.pt"]


@pytest.mark.parametrize("flatten", ["iql_continuous.flatten_episodes", "iql_finetune.flatten_episodes",
                                     "iql_antmaze.flatten_maze_episodes", "iql_finetune.flatten_maze_episodes"])
def test_infinite_dataset_action_is_refused_not_clipped(flatten):
    """Finite actions are clipped into (-1, 1) as IK does; an infinite one reaches check_data and is refused."""
    import importlib
    from types import SimpleNamespace

    module, name = flatten.split(".")
    module = importlib.import_module(module)
    obs = np.zeros((4, 2))
    if "maze" in name:
        obs = {"observation": obs, "achieved_goal": obs, "desired_goal": np.ones((4, 2))}
    episode = SimpleNamespace(observations=obs, actions=np.array([[2.0, 0.5], [-np.inf, 0.0], [0.1, -3.0]]),
                              rewards=np.zeros(3), terminations=np.zeros(3, bool),
                              truncations=np.eye(3, dtype=bool)[-1])
    data = getattr(module, name)([episode], goal_input=True) if "maze" in name else getattr(module, name)([episode])
    np.testing.assert_array_equal(data["actions"], np.float32([[1 - 1e-5, 0.5], [-np.inf, 0.0], [0.1, -1 + 1e-5]]))
    with pytest.raises(module.UserError, match="infinite actions \\(1 transitions, the first at index 1\\)"):
        module.check_data(data, "test/x-v0")


def test_restore_keeps_the_learning_rate_tensors_the_schedule_and_a_cuda_graph_use(tmp_path):
    """Optimizer.load_state_dict would swap in the checkpoint's CPU learning-rate tensors; a CUDA graph captured
    after a resume would then never see the schedule move. restore_state keeps this run's tensors, with the saved
    values, and the schedule keeps updating them."""
    args = cont.Args(hidden_dim=8, total_steps=100)
    members = [cont.Member("", 1, 0.7, 3.0)]
    saved = cont.make_networks(3, 2, args, "cpu", 100, members)
    for _ in range(30):
        saved.actor_schedule.step()
    path = cont.save_state(str(tmp_path / "checkpoint_30.pt"), 30, saved, args, [np.random.default_rng(0)], [[]])
    fresh = cont.make_networks(3, 2, args, "cpu", 100, members)
    groups = [group for opt in fresh.optimizers for group in opt.param_groups]  # the actor's, the critics', V's
    tensors = [group["lr"] for group in groups]
    assert len(tensors) == len({id(t) for t in tensors}) == 3  # a tensor each: the schedule fills the actor's only
    state = torch.load(path, weights_only=False)
    for saved_opt in state["optimizers"]:  # as saved on a GPU, where Adam is capturable
        for group in saved_opt["param_groups"]:
            group["capturable"] = True
    cont.restore_state(state, fresh, [np.random.default_rng(0)])
    groups = [group for opt in fresh.optimizers for group in opt.param_groups]
    for group, lr in zip(groups, tensors, strict=True):
        assert group["lr"] is lr and group["capturable"] is False  # this run's
    assert tensors[0].item() == pytest.approx(args.learning_rate * cont.cosine_decay(30, 100))
    assert [t.item() for t in tensors[1:]] == pytest.approx([args.learning_rate] * 2)  # the critics' and V's: constant
    fresh.actor_schedule.step()
    assert tensors[0].item() == pytest.approx(args.learning_rate * cont.cosine_decay(31, 100))
    assert [t.item() for t in tensors[1:]] == pytest.approx([args.learning_rate] * 2)
