"""benchmarks/peers.py with stand-in peers written here: a fake CORL file and a fake authors' folder (its Learner
does a numpy sum, so no JAX is needed; it runs in its own process under this python, as the real one would under
--jax-python). Both fakes import what the real files import at the top, so the module stand-ins are exercised."""

import json
import statistics
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, assert_one_line_error

sys.path.insert(0, str(ROOT / "benchmarks"))
import peers  # noqa: E402

DATASET = "test/hopper/random-v0"
ROUNDS, UPDATES, WARMUP = 3, 2, 1


def fake_corl(tmp_path, log, extra: str = ""):
    path = tmp_path / "iql.py"
    path.write_text(extra + textwrap.dedent(f"""
        import d4rl, gym, pyrallis, wandb  # the real file's imports: the harness stands in for them
        import numpy as np
        import torch

        def log(word):
            with open({str(log)!r}, "a") as f:
                f.write(word + "\\n")

        class ReplayBuffer:
            def __init__(self, state_dim, action_dim, buffer_size, device="cpu"):
                self.shapes = (state_dim, action_dim, buffer_size)

            def load_d4rl_dataset(self, data):
                keys = ("observations", "actions", "rewards", "next_observations", "terminals")
                self.columns = [torch.as_tensor(data[k]) for k in keys]
                assert self.columns[0].shape == (self.shapes[2], self.shapes[0])

            def sample(self, batch_size):
                idx = np.random.randint(0, len(self.columns[0]), size=batch_size)
                return [c[idx] for c in self.columns]

        class TwinQ(torch.nn.Linear):
            def __init__(self, state_dim, action_dim, hidden_dim=256):
                super().__init__(state_dim + action_dim, 1)

        class ValueFunction(torch.nn.Linear):
            def __init__(self, state_dim, hidden_dim=256):
                super().__init__(state_dim, 1)

        class GaussianPolicy(torch.nn.Linear):
            def __init__(self, state_dim, act_dim, max_action, hidden_dim=256):
                super().__init__(state_dim, act_dim)

        class ImplicitQLearning:
            def __init__(self, **settings):
                assert settings["iql_tau"] == 0.7 and settings["beta"] == 3.0
                self.settings = settings

            def train(self, batch):
                assert len(batch) == 5 and batch[0].shape[0] == 256
                log("corl")
                return {{}}

        def wrap_env(env: gym.Env) -> gym.Env:
            return env

        @pyrallis.wrap()
        def train(config):
            return d4rl.qlearning_dataset(config)
        """))
    return path


def fake_authors(tmp_path, log, learner_extra: str = ""):
    folder = tmp_path / "ik"
    folder.mkdir()
    (folder / "dataset_utils.py").write_text(textwrap.dedent("""
        import collections
        import d4rl, gym

        Batch = collections.namedtuple("Batch", "observations actions rewards masks next_observations")

        class Dataset:
            def __init__(self, observation_space: gym.spaces.Box):
                pass
        """))
    (folder / "learner.py").write_text(learner_extra + textwrap.dedent(f"""
        import numpy as np
        from dataset_utils import Batch

        class Learner:
            def __init__(self, seed, observations, actions, **config):
                assert config["expectile"] == 0.7 and config["temperature"] == 3.0
                self.total = np.zeros(actions.shape[-1])

            def update(self, batch):
                assert isinstance(batch, Batch) and batch.observations.shape[0] == 256
                self.total = self.total + batch.actions.sum(0)
                with open({str(log)!r}, "a") as f:
                    f.write("ik\\n")
                return {{"total": self.total}}
        """))
    return folder


def args(tmp_path, **kw):
    return peers.Args(env_id=DATASET, rounds=ROUNDS, updates=UPDATES, warmup=WARMUP, threads=1,
                      out=str(tmp_path / "peers.json"), **kw)


def test_rounds_alternate_ours_corl_authors_and_ratios_are_medians_of_the_rounds(minari_root, tmp_path):
    log = tmp_path / "log"
    corl, ik = fake_corl(tmp_path, log), fake_authors(tmp_path, log)
    peers.main(args(tmp_path, corl=str(corl), ik=str(ik), jax_python=sys.executable))
    result = json.loads((tmp_path / "peers.json").read_text())

    order = result["order"]
    assert [(o["round"], o["program"]) for o in order] == [
        (r, p) for r in range(1, ROUNDS + 1) for p in ("ours", "CORL", "authors")]
    for a, b in zip(order, order[1:]):  # one at a time, the authors' process timed on the same clock
        assert a["start"] <= a["end"] <= b["start"]
    # The peers' own view: CORL stepped once when it was built, then each warmed up (the authors' process at its
    # start), then every round ran CORL's updates and then the authors'.
    lines = log.read_text().split()
    assert lines == ["corl", "ik", "corl"] + (["corl"] * UPDATES + ["ik"] * UPDATES) * ROUNDS
    assert result["authors_process"]["batch"] == "dataset_utils.Batch"  # their namedtuple, not ours

    rates = result["updates_per_s"]
    for peer in ("CORL", "authors"):
        ratios = [mine / theirs for mine, theirs in zip(rates["ours"]["rounds"], rates[peer]["rounds"])]
        assert rates[peer]["ratios"] == pytest.approx(ratios)
        assert rates[peer]["ratio"] == pytest.approx(statistics.median(ratios))
        assert rates[peer]["median"] == pytest.approx(statistics.median(rates[peer]["rounds"]))
    assert len(rates["ours"]["rounds"]) == ROUNDS and "ratio" not in rates["ours"]


def test_the_ratio_is_the_median_of_the_rounds_ratios_not_the_ratio_of_the_medians():
    summary = peers.summarize({"ours": [100, 200, 300], "CORL": [50, 50, 300], "authors": [400, 100, 150]})
    assert summary["ours"]["median"] == 200 and summary["CORL"]["median"] == 50
    assert summary["CORL"]["ratios"] == [2, 4, 1] and summary["CORL"]["ratio"] == 2  # 200 / 50 would be 4
    assert summary["authors"]["ratios"] == [0.25, 2, 2] and summary["authors"]["ratio"] == 2  # 200 / 150: 1.33
    summary = peers.summarize({"ours": [100, 200, 300], peers.COMPILED: [200, 200, 600], "authors": [400, 100, 150]})
    assert summary["authors"]["compiled_ratios"] == [0.5, 2, 4] and summary["authors"]["compiled_ratio"] == 2
    assert summary["authors"]["ratio"] == 2 and "ratio" not in summary[peers.COMPILED]


def test_peers_not_given_are_skipped_with_a_note(minari_root, tmp_path, capsys):
    result = peers.main(peers.Args(env_id=DATASET, rounds=1, updates=1, warmup=0, threads=1,
                                   out=str(tmp_path / "peers.json")))
    assert list(result["updates_per_s"]) == ["ours"] and [o["program"] for o in result["order"]] == ["ours"]
    out = capsys.readouterr().out
    assert "note: CORL skipped: pass --corl PATH" in out and "note: the authors' code skipped: pass --ik PATH" in out
    assert len(result["notes"]) == 2


@pytest.mark.parametrize("flag, value, message", [
    ("--corl", "missing.py", "--corl missing.py: no such file; pass --corl PATH"),
    ("--ik", ".", "--ik .: no learner.py there; pass --ik PATH"),
])
def test_a_bad_path_is_a_one_line_error(tmp_path, flag, value, message):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), flag, value], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert_one_line_error(out, message)


def test_a_python_that_is_not_there_is_a_one_line_error(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--ik",
                          str(fake_authors(tmp_path, tmp_path / "log")), "--jax-python", str(tmp_path / "nopython")],
                         capture_output=True, text=True, timeout=60)
    assert_one_line_error(out, "nopython: no such program; pass --jax-python PATH")


def test_unimportable_peers_are_one_line_errors(minari_root, tmp_path):
    log = tmp_path / "log"
    with pytest.raises(SystemExit) as e:
        peers.main(args(tmp_path, corl=str(fake_corl(tmp_path, log, extra="import no_such_module\n"))))
    message = str(e.value.code)
    assert message.startswith("error: --corl") and "\n" not in message
    assert "did not load (ModuleNotFoundError: No module named 'no_such_module')" in message

    with pytest.raises(SystemExit) as e:
        peers.main(args(tmp_path, ik=str(fake_authors(tmp_path, log, learner_extra="import not_installed_here\n"))))
    message = str(e.value.code)
    assert message.startswith("error: the authors' code in") and "\n" not in message
    assert "(ModuleNotFoundError: No module named 'not_installed_here')" in message and "pass --jax-python" in message
