"""benchmarks/update_ideas.py: the ideas that keep the arithmetic compute exactly the shipped update."""

import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.mark.parametrize("name", ["written-out", "three-adams", "bare-adam"])
def test_an_idea_that_keeps_the_arithmetic_trains_the_same_parameters(name):
    import iql_continuous as iql
    import speed
    import update_ideas

    data = [x[:2000] for x in speed.make_data("cpu")]
    shipped = iql.make_networks(speed.OBS, speed.ACT, iql.Args(), "cpu", 1_000_000, [iql.Member("", 1, 0.7, 3.0)])
    step = iql.make_train_step(lambda: iql.sample_batch(iql.Batch(*data), 256, 1), shipped, iql.Args())
    idea = update_ideas.Idea(name, data)
    for train in (step, idea.train):
        torch.manual_seed(0)
        for _ in range(3):
            train()
    for net in ("actor", "critic", "target_critic", "value"):
        for a, b in zip(getattr(idea.nets, net).parameters(), getattr(shipped, net).parameters(), strict=True):
            assert torch.equal(a, b), (name, net)
    assert idea.opts[0].param_groups[0]["lr"].item() == shipped.optimizers[0].param_groups[0]["lr"].item()
