"""Golden runs: one seeded CPU run of 50 updates per script, on the tiny datasets of conftest.py, against numbers
stored here: the losses logged at the last update and the parameter sums of every network saved by --save-model.

They guard refactors: a change that alters what a script computes fails here, even where every other test still
passes. A deliberate change of the numbers updates GOLDEN in a commit of its own that says why;
`IQL_PRINT_GOLDEN=1 pytest tests/test_golden.py -s` prints the new values. CPUs round differently (AVX2, AVX-512),
so values are compared at a relative tolerance of 1e-5, not bit for bit (torch's unvectorised kernels,
ATEN_CPU_CAPABILITY=default, moved them by at most 3.6e-6 here, on the advantage mean). The runs read only the
command line, the TensorBoard log and the --save-model file, so they hold through any rewrite that keeps the
behaviour.
"""

import os

import pytest
import torch
from conftest import run_main, scalars

COMMON = ["--hidden-dim", "32", "--batch-size", "32", "--log-freq", "50", "--eval-freq", "50", "--eval-episodes", "2",
          "--checkpoint-freq", "0", "--save-model", "--exp-name", "golden", "--no-cuda"]
RUNS = {  # script: (its flags, the --save-model file with the final networks)
    "iql_continuous": (["--env-id", "test/hopper/random-v0", "--total-steps", "50", "--dropout", "0.1"], "golden.pt"),
    "iql_antmaze": (["--env-id", "test/pointmaze/random-v0", "--total-steps", "50"], "golden.pt"),
    "iql_finetune": (["--env-id", "test/pointmaze/random-v0", "--offline-steps", "25", "--online-steps", "25"],
                     "golden_online.pt"),
}
METRICS = ("losses/value_loss", "losses/actor_loss", "losses/q_loss", "charts/advantage_mean", "charts/weight_mean")
NETWORKS = ("actor", "critic", "target_critic", "value")

GOLDEN = {  # IQL_PRINT_GOLDEN=1 prints these; AMD EPYC (AVX2), torch 2.13.0 CPU, one thread
    "iql_continuous": {
        "losses/value_loss": 0.10847119241952896,
        "losses/actor_loss": 7.566484451293945,
        "losses/q_loss": 780.21142578125,
        "charts/advantage_mean": -0.08345223218202591,
        "charts/weight_mean": 2.112360954284668,
        "actor.sum": 1.2820931907190243,
        "actor.abs_sum": 297.368299882728,
        "critic.sum": 16.54747162052081,
        "critic.abs_sum": 604.164106844808,
        "target_critic.sum": 13.96980454650084,
        "target_critic.abs_sum": 600.5995551092744,
        "value.sum": -3.261431169870775,
        "value.abs_sum": 282.1404199623503,
    },
    "iql_antmaze": {
        "losses/value_loss": 0.10716415196657181,
        "losses/actor_loss": 0.4580841362476349,
        "losses/q_loss": 0.48579350113868713,
        "charts/advantage_mean": -0.9093291759490967,
        "charts/weight_mean": 0.2316807359457016,
        "actor.sum": -10.332228888717509,
        "actor.abs_sum": 269.1360774098248,
        "critic.sum": -9.976308876110124,
        "critic.abs_sum": 554.0036428425083,
        "target_critic.sum": -12.233323968155673,
        "target_critic.abs_sum": 553.1327589448974,
        "value.sum": 4.689620681281667,
        "value.abs_sum": 262.08108274650294,
    },
    "iql_finetune": {
        "losses/value_loss": 0.08977562189102173,
        "losses/actor_loss": 0.13423724472522736,
        "losses/q_loss": 0.3721802234649658,
        "charts/advantage_mean": -0.838218092918396,
        "charts/weight_mean": 0.06447182595729828,
        "actor.sum": -10.691452406332246,
        "actor.abs_sum": 269.43154611937643,
        "critic.sum": -9.992915097565856,
        "critic.abs_sum": 553.8994794912869,
        "target_critic.sum": -12.252821962627422,
        "target_critic.abs_sum": 553.1206025743795,
        "value.sum": 4.700687555858167,
        "value.abs_sum": 262.0689247531991,
    },
}


def golden_numbers(script: str, tmp_path) -> dict:
    flags, model_file = RUNS[script]
    run_main(script, tmp_path, *flags, *COMMON)
    (run_dir,) = (tmp_path / "runs").iterdir()
    logged = scalars(run_dir)
    numbers = {}
    for tag in METRICS:
        step, value = logged[tag][-1]
        assert step == 50, (tag, step)
        numbers[tag] = value
    model = torch.load(run_dir / model_file, weights_only=False)
    for name in NETWORKS:
        tensors = [t.double() for t in model[name].values()]
        numbers[f"{name}.sum"] = sum(t.sum().item() for t in tensors)
        numbers[f"{name}.abs_sum"] = sum(t.abs().sum().item() for t in tensors)
    return numbers


@pytest.mark.parametrize("script", RUNS)
def test_golden_run(maze_root, tmp_path, script):
    got = golden_numbers(script, tmp_path)
    if os.environ.get("IQL_PRINT_GOLDEN"):
        print(f'\n    "{script}": {{' + "".join(f'\n        "{k}": {v!r},' for k, v in got.items()) + "\n    },")
    want = GOLDEN[script]
    assert got.keys() == want.keys()
    wrong = []
    for key, value in want.items():
        # A plain sum can cancel to near 0: it is held to the tolerance of its network's sum of |parameters|.
        scale = want[key.replace(".sum", ".abs_sum")] if key.endswith(".sum") else abs(value)
        if not abs(got[key] - value) <= 1e-5 * scale + (1e-6 if key in METRICS else 0.0):  # a mean can be near 0
            wrong.append(f"{key}: got {got[key]!r}, golden {value!r}")
    if wrong:
        pytest.fail(f"{script} no longer computes its golden run:\n  " + "\n  ".join(wrong), pytrace=False)
