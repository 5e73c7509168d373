"""Populations: many runs in one process, on a leading member axis. Members must never hear each other."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import run_main, scalars

import iql_antmaze as maze
import iql_continuous as cont

HOPPER = ["--env-id", "test/hopper/random-v0", "--total-steps", "30", "--eval-freq", "30", "--eval-episodes", "2",
          "--log-freq", "10", "--hidden-dim", "16", "--batch-size", "16", "--dropout", "0.1", "--checkpoint-freq",
          "0", "--save-model", "--no-cuda"]


def hyperparameters(run_dir) -> dict:
    """The `hyperparameters` table a TensorBoard run logged, as {name: value text}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0}).Reload()
    (event,) = acc.Tensors("hyperparameters/text_summary")
    rows = event.tensor_proto.string_val[0].decode().splitlines()[2:]
    return dict(row.strip("|").split("|") for row in rows)


def test_member_0_is_the_same_whatever_member_1_trains_with(minari_root, tmp_path):
    """Two populations of 2 that differ only in member 1's temperature: member 0 ends bit-identical (its weights,
    and its evaluation), member 1 does not."""
    saved = {}
    for temperature in ("1.0", "5.0"):
        (tmp_path / temperature).mkdir()
        run_main("iql_continuous", tmp_path / temperature, *HOPPER, "--temperature", "3.0", temperature)
        (run_dir,) = (tmp_path / temperature / "runs").iterdir()
        saved[temperature] = {m: torch.load(run_dir / m / "iql_continuous.pt", weights_only=False)
                              for m in ("seed1-temperature3.0", f"seed1-temperature{temperature}")}
        saved[temperature]["return"] = scalars(run_dir / "seed1-temperature3.0")["charts/episodic_return"]
    a, b = saved["1.0"], saved["5.0"]
    for name in ("actor", "critic", "target_critic", "value"):
        for k, v in a["seed1-temperature3.0"][name].items():
            assert torch.equal(v, b["seed1-temperature3.0"][name][k]), (name, k)
    assert a["return"] == b["return"]
    assert not torch.equal(a["seed1-temperature1.0"]["actor"]["net.0.weight"],
                           b["seed1-temperature5.0"]["actor"]["net.0.weight"])


def test_each_member_starts_from_its_own_seed():
    """Member 0's start and its first updates do not depend on member 1's seed; each member's initial weights are
    those of a single run with its seed."""
    args = cont.Args(hidden_dim=16, batch_size=8)
    data = cont.Batch(torch.randn(50, 3), torch.rand(50, 2) * 2 - 1, torch.randn(50), torch.randn(50, 3),
                      torch.ones(50))
    final = {}
    for seed_1 in (2, 7):
        members = [cont.Member("a", 1, 0.7, 3.0), cont.Member("b", seed_1, 0.7, 3.0)]
        single = cont.make_networks(3, 2, args, "cpu", 100, [members[1]])
        nets = cont.make_networks(3, 2, args, "cpu", 100, members)  # it seeds the batches' stream: last
        for name in cont.NETS:  # member 1 starts where a run of its own seed starts
            for k, v in cont.member_state(getattr(single, name), 0).items():
                assert torch.equal(v, cont.member_state(getattr(nets, name), 1)[k]), (name, k)
        step = cont.make_train_step(lambda: cont.sample_batch(data, args.batch_size, 2), nets, args)
        for _ in range(5):
            step()
        final[seed_1] = [{name: cont.member_state(getattr(nets, name), i) for name in cont.NETS} for i in (0, 1)]
    for name in cont.NETS:
        for k, v in final[2][0][name].items():
            assert torch.equal(v, final[7][0][name][k]), (name, k)
    assert not torch.equal(final[2][1]["value"]["net.0.weight"], final[7][1]["value"]["net.0.weight"])


def test_a_sweep_is_the_grid_times_the_seeds(maze_root, tmp_path, capsys):
    """--expectile 0.7 0.9 --num-seeds 2: four members, each logging its own values and its own scores; each saved
    member loads into a plain Actor as the README's snippet does, and acts."""
    run_main("iql_antmaze", tmp_path, "--env-id", "test/pointmaze/random-v0", "--total-steps", "20", "--eval-freq",
             "10", "--eval-episodes", "2", "--log-freq", "10", "--hidden-dim", "16", "--batch-size", "16",
             "--expectile", "0.7", "0.9", "--num-seeds", "2", "--save-model", "--exp-name", "sweep", "--no-cuda")
    stdout = capsys.readouterr().out
    (run_dir,) = (tmp_path / "runs").iterdir()
    names = ["seed1-expectile0.7", "seed2-expectile0.7", "seed1-expectile0.9", "seed2-expectile0.9"]
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(["checkpoint_20.pt", *names])
    assert "4 members" in stdout and "member-updates/s" in stdout and "success best member" in stdout
    for name in names:
        table = hyperparameters(run_dir / name)
        assert (table["seed"], table["expectile"], table["temperature"]) == (name[4], name[-3:], "10.0")
        logged = scalars(run_dir / name)
        assert [s for s, _ in logged["losses/value_loss"]] == [10, 20]
        assert [s for s, _ in logged["charts/success_rate"]] == [10, 20]
        assert f"{name}: final (step 20): success rate" in stdout
        ckpt = torch.load(run_dir / name / "sweep.pt", weights_only=False)
        assert ckpt["args"]["seed"] == int(name[4]) and ckpt["args"]["expectile"] == [float(name[-3:])]
        actor = maze.Actor(ckpt["obs_dim"], ckpt["act_dim"], ckpt["args"]["hidden_dim"], ckpt["args"]["dropout"])
        actor.load_state_dict(ckpt["actor"])
        action = actor.act(torch.zeros(ckpt["obs_dim"]))
        assert action.shape == (2,) and bool((action.abs() <= 1).all())
    value_losses = {name: scalars(run_dir / name)["losses/value_loss"][-1][1] for name in names}
    assert len(set(value_losses.values())) == 4  # four different runs


def test_the_divergence_guard_names_the_member():
    members = [cont.Member("seed1", 1, 0.7, 3.0), cont.Member("seed2", 2, 0.7, 3.0)]
    with pytest.raises(cont.UserError, match=r"^step 50: losses/q_loss = nan \(member seed2\); the run diverged"):
        cont.check_finite({"losses/value_loss": [0.1, 0.2], "losses/q_loss": [1.0, math.nan]}, 50, members)
    cont.check_finite({"losses/q_loss": [1.0, 2.0]}, 50, members)


def test_population_evaluation_gives_each_member_its_own_envs():
    """A population's actor in one vector env: each member acts in its own envs (member 0's first), as that
    member's network alone would."""
    torch.manual_seed(0)
    members = [cont.Actor(11, 3, 16) for _ in range(2)]
    population = cont.stack_members(members)
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("Hopper-v5", max_episode_steps=5) for _ in range(4)])
    returns = cont.evaluate(population, envs, [1, 2, 3, 4], "cpu")
    alone = [cont.evaluate(actor, gym.vector.SyncVectorEnv([lambda: gym.make("Hopper-v5", max_episode_steps=5)] * 2),
                           seeds, "cpu") for actor, seeds in zip(members, ([1, 2], [3, 4]))]
    np.testing.assert_allclose(returns, np.concatenate(alone), rtol=1e-6)
    assert not np.allclose(alone[0], alone[1])


def test_each_member_trains_with_its_own_expectile_and_temperature():
    """Two members of one seed on the same batch, with different values: each ends where a single run with its
    values ends after the same update."""
    args = cont.Args(hidden_dim=16)
    g = torch.Generator().manual_seed(0)
    batch = cont.Batch(torch.randn(1, 32, 3, generator=g), torch.rand(1, 32, 2, generator=g) * 2 - 1,
                       torch.randn(1, 32, generator=g), torch.randn(1, 32, 3, generator=g), torch.ones(1, 32))
    members = [cont.Member("a", 1, 0.7, 3.0), cont.Member("b", 1, 0.9, 0.5)]
    nets = cont.make_networks(3, 2, args, "cpu", 100, members)
    metrics = cont.update(cont.Batch(*(x.expand(2, *x.shape[1:]) for x in batch)), nets, args)
    assert metrics["losses/value_loss"][0] != metrics["losses/value_loss"][1]
    for i, member in enumerate(members):
        single = cont.make_networks(3, 2, args, "cpu", 100, [member])
        cont.update(batch, single, args)
        for name in cont.NETS:
            for k, v in cont.member_state(getattr(single, name), 0).items():
                torch.testing.assert_close(cont.member_state(getattr(nets, name), i)[k], v, rtol=1e-6, atol=1e-7)


def test_track_makes_one_wandb_run_with_the_members_under_their_names(minari_root, tmp_path, monkeypatch):
    """With --track a population is one W&B run whose TensorBoard sync is rooted at the run folder, so that each
    member's scalars sit under its folder's name."""
    import sys
    import types

    calls = []
    fake = types.SimpleNamespace(init=lambda **kwargs: calls.append(("init", kwargs)),
                                 tensorboard=types.SimpleNamespace(patch=lambda **kw: calls.append(("patch", kw))))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run_main("iql_continuous", tmp_path, *HOPPER, "--num-seeds", "2", "--track")
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert [c[0] for c in calls] == ["patch", "init"]
    assert calls[0][1]["root_logdir"] == str(run_dir.relative_to(tmp_path)) and not calls[1][1]["sync_tensorboard"]
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == ["seed1", "seed2"]


def test_finetune_population_members_act_and_store_apart(maze_root, tmp_path):
    """iql_finetune.py with two members that differ only in member 1's temperature, twice with another value for it:
    member 0's online episodes and its saved networks are the same in both runs; each member logs its own online
    episodes and saves its own files, which load into a plain Actor."""
    import iql_finetune as ft

    saved = {}
    for t in ("1.0", "5.0"):
        (tmp_path / t).mkdir()
        run_main("iql_finetune", tmp_path / t, "--env-id", "test/pointmaze/random-v0", "--offline-steps", "20",
                 "--online-steps", "70", "--eval-freq", "1000", "--eval-episodes", "1", "--hidden-dim", "16",
                 "--batch-size", "16", "--log-freq", "10", "--temperature", "10.0", t, "--save-model",
                 "--exp-name", "ft", "--checkpoint-freq", "0", "--no-cuda")
        (run_dir,) = (tmp_path / t / "runs").iterdir()
        names = sorted(p.name for p in run_dir.iterdir())
        assert names == sorted(["seed1-temperature10.0", f"seed1-temperature{t}"])
        for name in names:
            logged = scalars(run_dir / name)
            assert [v for _, v in logged["charts/online_episodes"]] == [1.0]  # the 60-step eval horizon
            assert sorted(p.name for p in (run_dir / name).glob("*.pt")) == ["ft_offline.pt", "ft_online.pt"]
        saved[t] = {name: torch.load(run_dir / name / "ft_online.pt", weights_only=False) for name in names}
        saved[t]["online_return"] = scalars(run_dir / "seed1-temperature10.0")["charts/online_return"]
    a, b = saved["1.0"]["seed1-temperature10.0"], saved["5.0"]["seed1-temperature10.0"]
    for name in ("actor", "critic", "target_critic", "value"):
        for k, v in a[name].items():
            assert torch.equal(v, b[name][k]), (name, k)
    assert saved["1.0"]["online_return"] == saved["5.0"]["online_return"]
    assert not torch.equal(saved["1.0"]["seed1-temperature1.0"]["actor"]["log_std"],
                           saved["5.0"]["seed1-temperature5.0"]["actor"]["log_std"])
    for state in a["optimizers"][0].values():  # the member's own Adam moments, not the population's whole storage
        assert state["exp_avg"].untyped_storage().nbytes() == 4 * state["exp_avg"].numel()
    actor = ft.Actor(a["obs_dim"], a["act_dim"], a["args"]["hidden_dim"], a["args"]["dropout"])
    actor.load_state_dict(a["actor"])
    assert a["args"]["temperature"] == [10.0] and actor.act(torch.zeros(a["obs_dim"])).shape == (2,)
