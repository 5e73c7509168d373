"""benchmarks/make_datasets.py --quick: small real datasets built from the environments, as the scripts read them."""

import sys

import minari
import numpy as np
from conftest import HOPPER_REF, ROOT

import iql_antmaze as maze
import iql_continuous as cont

sys.path.insert(0, str(ROOT / "benchmarks"))
import make_datasets  # noqa: E402


def test_quick_build_loads_like_a_downloaded_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))  # main() points minari there; monkeypatch restores it
    make_datasets.main(make_datasets.Args(quick=True, out=str(tmp_path)))
    replay, medium = minari.load_dataset("quick/hopper/medium-replay-v1"), minari.load_dataset("quick/hopper/medium-v1")
    assert (replay.total_steps, medium.total_steps) == (1000, 2000)  # every SAC step; the rollouts
    for dataset in (replay, medium):
        meta = dataset.storage.metadata
        assert (meta["ref_min_score"], meta["ref_max_score"]) == HOPPER_REF
        assert dataset.recover_environment(eval_env=True).spec.id == "Hopper-v5"
    # The replay holds the random steps first: uniform actions, then the policy's.
    actions = np.concatenate([e.actions for e in replay.iterate_episodes()])
    assert abs(actions[:500].mean()) < 0.1 and np.abs(actions).max() <= 1

    walks = minari.load_dataset("quick/pointmaze/umaze-v1")
    assert walks.total_steps == 5 * 300 and walks.storage.metadata["ref_max_score"] == 1.0
    eval_env = walks.recover_environment(eval_env=True)
    assert eval_env.unwrapped.continuing_task is False and eval_env.spec.kwargs["maze_map"][3][3] == "r"
    # The walk leans to the decoy end of the U: more steps there, in the bottom-left cell, than at the goal (1, 1).
    xy = np.concatenate([e.observations["achieved_goal"] for e in walks.iterate_episodes()])
    cell_of = walks.recover_environment().unwrapped.maze.cell_xy_to_rowcol
    cells = [tuple(cell_of(p)) for p in xy]
    assert cells.count((3, 1)) > cells.count((1, 1))

    # The scripts read them as they read downloaded data.
    data, _, info = cont.load_data(cont.Args(env_id="quick/hopper/medium-replay-v1"), "cpu")
    assert info["task"] == "hopper" and len(data.rewards) == 1000 and info["reward_scale"] > 0
    data, _, info = maze.load_data(maze.Args(env_id="quick/pointmaze/umaze-v1"), "cpu")
    assert data.observations.shape == (1500, 8)

    capsys.readouterr()
    make_datasets.main(make_datasets.Args(quick=True, out=str(tmp_path)))  # built already: skipped
    assert capsys.readouterr().out.count("exists, skipped (--force rebuilds it)") == 3
    stamp = (tmp_path / "quick/hopper/medium-v1/data/main_data.hdf5").stat().st_mtime_ns
    make_datasets.main(make_datasets.Args(quick=True, out=str(tmp_path), only="pointmaze", force=True))
    out = capsys.readouterr().out
    assert "quick/pointmaze/umaze-v1: building" in out and "hopper" not in out.split("done in")[0]
    assert (tmp_path / "quick/hopper/medium-v1/data/main_data.hdf5").stat().st_mtime_ns == stamp


def test_sac_run_ends_at_the_target_or_at_the_step_limit(capsys):
    args = make_datasets.Args()
    _, _, score, steps, reached = make_datasets.hopper_sac(args, 100, 100, 1000, target=-1e9)  # any return reaches it
    assert (steps, reached) == (100, True) and score > -1e9
    episodes, _, score, steps, reached = make_datasets.hopper_sac(args, 100, 100, 150, target=1e9)
    assert (steps, reached) == (150, False) and "SAC step 150: evaluation return" in capsys.readouterr().out
    assert sum(len(b.rewards) for b in episodes.buffers()) == 150
