"""The deliberate copies: code that several scripts hold, so that each script reads alone, must stay identical."""

import difflib
import importlib
import inspect

import pytest

ALL = ("iql_continuous", "iql_antmaze", "iql_finetune")
COPIES = {  # the scripts that hold a copy: the names they hold
    ALL: ["UserError", "check_track", "env_domain", "with_domain_defaults", "first_line", "load_minari_dataset",
          "read_episodes", "check_actions", "check_data", "check_video", "eval_env_spec", "run_folder", "make_writers",
          "Batch", "expectile_loss", "awr_loss", "td_target", "q_loss", "gaussian_log_prob", "cosine_decay", "mlp",
          "TwinQ", "Value", "Actor", "optimizer_step", "update", "Networks", "make_networks", "make_train_step",
          "cuda_graph", "progress_line", "check_finite", "save_state", "restore_state", "StopSignal",
          "make_eval_envs", "Linear", "stack_members", "member_state", "Member", "population"],
    ("iql_continuous", "iql_antmaze"): ["check_args", "sample_batch"],
    ("iql_continuous", "iql_finetune"): ["flat_observations", "flatten_episodes", "reward_scale",
                                         "reference_scores"],
    ("iql_antmaze", "iql_finetune"): ["maze_observations", "maze_rewards_and_terminals", "flatten_maze_episodes",
                                      "record_success", "evaluate"],
}
TABLES = {ALL: ["DOMAIN_DEFAULTS", "SWEEPABLE", "MINARI_ID", "STOPPED", "NETS"],
          ("iql_continuous", "iql_finetune"): ["D4RL_REF_SCORES", "ENV_TO_TASK"]}


def assert_same_copies(what: str, scripts: tuple, sources: list):
    """Each script's copy against the first one's; a drift names every file that holds the copy, with a diff."""
    for script, source in zip(scripts[1:], sources[1:]):
        if source != sources[0]:
            diff = "".join(difflib.unified_diff(sources[0].splitlines(True), source.splitlines(True),
                                                f"{scripts[0]}.py", f"{script}.py"))
            pytest.fail(f"{what} in {script}.py differs from {scripts[0]}.py. It is a deliberate copy, held in "
                        f"{', '.join(s + '.py' for s in scripts)}: make the same change in each of them.\n{diff}",
                        pytrace=False)


@pytest.mark.parametrize("scripts, name", [(s, n) for s, names in COPIES.items() for n in names],
                         ids=[n for names in COPIES.values() for n in names])
def test_copies_are_identical(scripts, name):
    modules = [importlib.import_module(s) for s in scripts]
    assert_same_copies(f"`{name}`", scripts, [inspect.getsource(getattr(m, name)) for m in modules])


@pytest.mark.parametrize("scripts, name", [(s, n) for s, names in TABLES.items() for n in names],
                         ids=[n for names in TABLES.values() for n in names])
def test_tables_are_identical(scripts, name):
    modules = [importlib.import_module(s) for s in scripts]
    assert_same_copies(f"`{name}`", scripts, [repr(getattr(m, name)) for m in modules])


def test_stop_status_is_the_runners():
    assert importlib.import_module("iql_continuous").STOPPED == 75  # benchmarks/run.py tells a signal stop by it
