"""benchmarks/run.py: the suite runner (submitit's local launcher), skipping, aggregation, the table and the plot."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import run as runner  # noqa: E402


def write_run(folder, run, scores, done=True):
    """A finished run as the runner leaves it: TensorBoard events with charts/normalized_score, and `done`."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder / run.name / "runs" / "x"))
    for step, score in scores:
        writer.add_scalar("charts/normalized_score", score, step)
    writer.close()
    if done:
        (folder / run.name / "done").write_text(" ".join(run.command()))


def test_aggregation_of_known_values_gives_the_known_table(tmp_path):
    runs = [runner.Run("iql_continuous", "d/x-v0", algo, seed, (), 1) for algo in ("IQL", "BC") for seed in (1, 2, 3)]
    curves = {("IQL", 1): [10, 20], ("IQL", 2): [30, 40], ("BC", 1): [5, 1], ("BC", 2): [7, 3]}
    for run in runs:
        if (run.algo, run.seed) in curves:
            write_run(tmp_path, run, list(zip((500, 1000), curves[run.algo, run.seed])))
    write_run(tmp_path, runs[2], [(500, 99.0), (1000, 99.0)], done=False)  # unfinished: left out
    groups = runner.aggregate(runs, tmp_path)
    assert groups[("d/x-v0", "IQL")]["final"] == [20, 40] and groups[("d/x-v0", "BC")]["best"] == [5, 7]
    lines = runner.table(groups).splitlines()
    assert lines[0] == "| dataset | updates | seeds | IQL final | BC final | IQL best | BC best |"
    # IQL final 20, 40 -> 30 ± 10; BC final 1, 3 -> 2 ± 1; IQL best = final; BC best 5, 7 -> 6 ± 1 (std over seeds)
    assert lines[2] == "| d/x-v0 | 1,000 | 2/2 | 30.0 ± 10.0 | 2.0 ± 1.0 | 30.0 ± 10.0 | 6.0 ± 1.0 |"
    runner.plot(groups, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_population_per_setting_gives_the_same_table(tmp_path):
    """--population: one run per dataset and algorithm with --num-seeds; its members' logs make the same table as
    one run per seed."""
    runs = [runner.Run("iql_continuous", "d/x-v0", algo, seed, ("--total-steps", "9"), 1) for algo in ("IQL", "BC")
            for seed in (1, 2, 3)]
    populations = runner.as_populations(runs)
    assert [(p.algo, p.seed, p.seeds, p.minutes) for p in populations] == [("IQL", 1, 3, 3), ("BC", 1, 3, 3)]
    assert populations[1].command()[2:] == ["--env-id", "d/x-v0", "--seed", "1", "--num-seeds", "3", "--total-steps",
                                            "9", "--temperature", "0"]
    assert populations[0].name == "d-x-v0__IQL__s1-3"
    from torch.utils.tensorboard import SummaryWriter

    for run in runs:
        write_run(tmp_path / "single", run, [(500, run.seed * (1 if run.algo == "IQL" else -1))])
    for population in populations:
        for seed in (1, 2, 3):
            writer = SummaryWriter(str(tmp_path / "pop" / population.name / "runs" / "x" / f"seed{seed}"))
            writer.add_scalar("charts/normalized_score", seed * (1 if population.algo == "IQL" else -1), 500)
            writer.close()
        (tmp_path / "pop" / population.name / "done").write_text(json.dumps(population.command()))
    single, pop = runner.table(runner.aggregate(runs, tmp_path / "single")), runner.aggregate(populations,
                                                                                               tmp_path / "pop")
    assert runner.table(pop) == single and "| d/x-v0 | 500 | 3/3 | 2.0 ± 0.8 |" in single


def test_datasets_without_minari_counterpart_are_skipped():
    runs = runner.paper_suite()
    reasons = {r.env_id: runner.skip_reason(r) for r in runs}
    assert "no Minari counterpart" in reasons["hopper-medium-replay-v2"]
    assert reasons["hopper-medium-v2"] is None and reasons["antmaze-large-play-v2"] is None
    assert len(runs) == 15 * 2 * 5 and {r.seed for r in runs} == set(range(5))


def test_report_only_with_no_runs_leaves_the_table(tmp_path):
    (tmp_path / "local.md").write_text("the committed table\n")
    with pytest.raises(SystemExit, match="no finished runs"):
        runner.main(runner.Args(out=str(tmp_path), report_only=True))
    assert (tmp_path / "local.md").read_text() == "the committed table\n"


def test_local_datasets_not_built_are_skipped_with_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    (tmp_path / "local/pointmaze/umaze-v1/data").mkdir(parents=True)
    reasons = {r.env_id: runner.skip_reason(r) for r in runner.local_suite()}
    assert reasons["local/pointmaze/umaze-v1"] is None
    assert reasons["local/hopper/medium-v1"].endswith("build it with python benchmarks/make_datasets.py")


def test_local_launcher_runs_a_suite_and_skips_what_finished(minari_root, tmp_path, capsys, monkeypatch):
    # A relative MINARI_DATASETS_PATH, as the README's command gives it: each run works in its own folder.
    monkeypatch.setenv("MINARI_DATASETS_PATH", os.path.relpath(minari_root[0]))
    flags = ("--total-steps", "40", "--eval-freq", "20", "--eval-episodes", "1", "--hidden-dim", "16",
             "--batch-size", "32")
    runs = [runner.Run("iql_continuous", "test/hopper/random-v0", algo, 1, flags, 5) for algo in ("IQL", "BC")]
    runs.append(runner.Run("iql_continuous", "walker2d-medium-replay-v2", "IQL", 1, (), 5))
    args = runner.Args(out=str(tmp_path), suite="local")
    status = runner.main(args, runs)
    assert status[runs[0].name] == status[runs[1].name] == "done", status
    assert status[runs[2].name].startswith("skipped: ") and "no Minari counterpart" in status[runs[2].name]
    report = (tmp_path / "local.md").read_text()
    assert "| test/hopper/random-v0 | 40 | 1/1 |" in report and "Skipped:\n- walker2d-medium-replay-v2" in report
    assert (tmp_path / "local.png").exists()
    assert json.loads((tmp_path / "local" / runs[1].name / "done").read_text())[-2:] == ["--temperature", "0"]  # BC
    jobs = sorted((tmp_path / "local" / "submitit").iterdir())

    status = runner.main(args, runs)  # everything finished: nothing is started again
    assert status[runs[0].name] == status[runs[1].name] == "done (earlier)"
    assert sorted((tmp_path / "local" / "submitit").iterdir()) == jobs
    assert "2 done earlier, 1 skipped" in capsys.readouterr().out

    changed = [runs[0]._replace(flags=flags[:-2] + ("--batch-size", "16"))]  # other flags: not the same run
    assert runner.finished(runs[0], tmp_path / "local") and not runner.finished(changed[0], tmp_path / "local")


def test_bad_runner_arguments_are_one_line():
    with pytest.raises(SystemExit, match="error: --max-parallel and --threads must be >= 1"):
        runner.main(runner.Args(max_parallel=0), [])


@pytest.mark.parametrize("suite", [runner.local_suite, runner.paper_suite])
def test_suites_use_real_scripts_and_both_algorithms(suite):
    runs = suite()
    assert {r.algo for r in runs} == {"IQL", "BC"} and all((ROOT / f"{r.script}.py").exists() for r in runs)
    assert len({r.name for r in runs}) == len(runs)


def test_an_unfinished_run_resumes_from_its_newest_checkpoint(tmp_path):
    """Execute's choices, with a stand-in script that prints its arguments and exits with the status it is given."""
    (tmp_path / "my repo").mkdir()
    script = tmp_path / "my repo" / "echo.py"  # a space in the path: commands are kept as JSON, not as words
    script.write_text("import sys\nprint('args:', *sys.argv[1:])\nsys.exit(int(sys.argv[sys.argv.index('--exit') + 1]) "
                      "if '--exit' in sys.argv else 0)\n")
    folder = tmp_path / "run"
    folder.mkdir()

    def attempt(flags, old_command=None):
        (folder / "runs" / "r").mkdir(parents=True, exist_ok=True)
        for step in (5, 20):
            (folder / "runs" / "r" / f"checkpoint_{step}.pt").write_bytes(b"")
        if old_command:
            (folder / "command").write_text(" ".join(old_command) + "\n")
        code = runner.Execute()([sys.executable, str(script), *flags], str(folder), 1)
        return code, (folder / "log.txt").read_text().splitlines()[-1]

    # The same script and flags (python and the repository elsewhere): resume from step 20, not 5 (numbers, not text).
    assert attempt(["--seed", "1"], ["/other/python", "/other/repo/echo.py", "--seed", "1"]) == \
        (0, "args: --seed 1 --resume runs/r/checkpoint_20.pt")
    assert json.loads((folder / "done").read_text())[2:] == ["--seed", "1"]  # the suite's command, not the resume one
    assert attempt(["--seed", "1"]) == (0, "args: --seed 1 --resume runs/r/checkpoint_20.pt")  # done: not run again ...
    assert (folder / "log.txt").read_text().count("$ ") == 1  # ... the log shows one attempt only
    # Another command starts over; the other command's run is kept aside, out of the report's glob (runs/*).
    assert attempt(["--seed", "2"]) == (0, "args: --seed 2")
    assert not (folder / "runs").exists() and len(list(folder.glob("runs.replaced.*/r/checkpoint_20.pt"))) == 1
    # A run stopped by a signal (STOPPED) is neither done nor failed; a failing one is failed.
    assert attempt(["--exit", str(runner.STOPPED)])[0] == runner.STOPPED
    assert not (folder / "done").exists() and not (folder / "failed").exists()
    assert attempt(["--exit", "3"])[0] == 3 and (folder / "failed").exists()

    # submitit's warning arrives after the run ended well: checkpoint() marks it done, the requeued call returns.
    job, command = runner.Execute(), [sys.executable, str(script), "--seed", "3"]
    job.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    job.proc.wait()
    requeued = job.checkpoint(command, str(folder), 1)
    assert runner.same_command((folder / "done").read_text(), command)
    lines = (folder / "log.txt").read_text().count("$ ")
    assert requeued.result() == 0 and (folder / "log.txt").read_text().count("$ ") == lines  # nothing ran again


def test_runner_knows_the_scripts_stop_status():
    import iql_continuous

    assert runner.STOPPED == iql_continuous.STOPPED


def worker_pid(controller_pid: int) -> int:
    """The worker that submitit's local controller started (its only child)."""
    children = Path(f"/proc/{controller_pid}/task/{controller_pid}/children")
    for _ in range(200):
        pids = children.read_text().split()
        if pids:
            return int(pids[0])
        time.sleep(0.1)
    raise AssertionError("submitit's worker did not start")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds submitit's worker through /proc (Linux)")
def test_preempted_job_saves_requeues_and_resumes(minari_root, tmp_path, monkeypatch):
    """submitit's real path on a cluster, run locally: the worker gets SIGUSR2 (SLURM's warning before a pre-emption),
    checkpoint() has the run save and requeues the job, and the requeued job resumes from that checkpoint."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root[0]))
    run = runner.Run("iql_continuous", "test/hopper/random-v0", "IQL", 1,
                     ("--total-steps", "3000", "--log-freq", "100", "--checkpoint-freq", "100", "--eval-freq", "3000",
                      "--eval-episodes", "1", "--hidden-dim", "16", "--batch-size", "32", "--no-cuda"), 5)
    folder = tmp_path / run.name
    folder.mkdir()
    executor = runner.make_executor(runner.Args(out=str(tmp_path)), tmp_path, run.minutes)
    job = executor.submit(runner.Execute(), run.command(), str(folder), 1)
    for _ in range(600):  # training has started once the first checkpoint is written
        if runner.newest_checkpoint(folder):
            break
        time.sleep(0.1)
    os.kill(worker_pid(job._process.pid), signal.SIGUSR2)
    assert job.result() == 0
    log = (folder / "log.txt").read_text()
    first, second = [line for line in log.splitlines() if line.startswith("$ ")]
    assert "--resume" not in first and " --resume runs/" in second
    stopped = int(second.rsplit("checkpoint_", 1)[1].removesuffix(".pt"))
    assert "SIGTERM at step " in log and f"from step {stopped:,}" in log and 0 < stopped < 3000
    assert "step    3,000" in log and runner.finished(run, tmp_path)
    assert len(list(folder.glob("runs/*"))) == 1  # resumed in the same run folder
