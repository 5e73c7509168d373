"""Run a suite of experiments (IQL and BC = `--temperature 0`, several seeds), then tabulate and plot them.

    python benchmarks/make_datasets.py && python benchmarks/run.py --suite local  # 2-core CPU: 28 min + 45 min
    python benchmarks/run.py --suite paper --launcher slurm --max-parallel 32       # D4RL settings, GPU cluster

Each run is a separate process (`python iql_*.py ...`; with `--population`, one process trains all the seeds of a
dataset and setting as one population, `--num-seeds`) started through submitit: `--launcher local` runs at most
`--max-parallel` of them at once on this machine, `--launcher slurm` submits a job array to SLURM (at most
`--max-parallel` running). A run that finished is not run again, an unfinished one resumes from its newest checkpoint,
and a job warned of its time limit (SIGUSR2) saves and requeues itself (see `Execute`). The table and plot are rebuilt
from every finished run's TensorBoard log. Output: `benchmarks/results/{suite}.md` (table), `{suite}.png` (curves),
and one folder per run under `benchmarks/results/{suite}/` (its log, its TensorBoard events, a `done` marker).
"""

import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, Optional

import numpy as np
import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Args:
    suite: Literal["local", "paper"] = "local"
    """local: the three local datasets, short runs, 3 seeds; paper: D4RL locomotion and AntMaze, 1M updates, 5 seeds"""
    launcher: Literal["local", "slurm"] = "local"
    """where the runs go: this machine, or a SLURM cluster (both through submitit)"""
    max_parallel: int = 2
    """runs at a time (local: processes; slurm: the job array's parallelism)"""
    threads: int = 1
    """torch threads per run (OMP_NUM_THREADS): 1 when several runs share a small CPU"""
    out: str = str(ROOT / "benchmarks" / "results")
    """folder for the table, the plot and the runs"""
    report_only: bool = False
    """if toggled, only rebuild the table and the plot from the runs that finished"""
    population: bool = False
    """if toggled, one process per dataset and algorithm trains its seeds as one population (--num-seeds)"""
    slurm_partition: Optional[str] = None
    """SLURM partition (slurm launcher)"""
    slurm_gpus: int = 1
    """GPUs per run (slurm launcher)"""


class Run(NamedTuple):
    script: str  # iql_continuous, iql_antmaze or iql_finetune
    env_id: str
    algo: str  # "IQL" or "BC"
    seed: int
    flags: tuple  # the script's flags besides --env-id, --seed and --temperature for BC
    minutes: float  # a generous time budget for one run on the suite's intended hardware
    seeds: int = 1  # more than 1: a population of the seeds seed, seed+1, ... in one process

    @property
    def name(self) -> str:
        seeds = f"{self.seed}" if self.seeds == 1 else f"{self.seed}-{self.seed + self.seeds - 1}"
        return f"{self.env_id.replace('/', '-')}__{self.algo}__s{seeds}"

    def command(self) -> list[str]:
        bc = ["--temperature", "0"] if self.algo == "BC" else []
        population = ["--num-seeds", str(self.seeds)] if self.seeds > 1 else []
        return [sys.executable, str(ROOT / f"{self.script}.py"), "--env-id", self.env_id, "--seed", str(self.seed),
                *population, *self.flags, *bc]


def as_populations(runs: list[Run]) -> list[Run]:
    """One run per script, dataset, algorithm and flags, training its (consecutive) seeds as one population."""
    groups = {}
    for run in runs:
        groups.setdefault((run.script, run.env_id, run.algo, run.flags), []).append(run)
    return [Run(*key[:3], min(r.seed for r in group), key[3], sum(r.minutes for r in group), len(group))
            for key, group in groups.items()]


def local_suite() -> list[Run]:
    """The datasets that benchmarks/make_datasets.py builds (in MINARI_DATASETS_PATH), on a budget that two 1-thread
    runs at a time finish in about 45 minutes on a 2-core CPU: 15,000 updates each, 18 runs."""
    hopper = ("--total-steps", "15000", "--eval-freq", "3000", "--eval-episodes", "10")
    maze = ("--total-steps", "15000", "--eval-freq", "3000", "--eval-episodes", "20")
    plan = [("iql_continuous", "local/hopper/medium-replay-v1", hopper),
            ("iql_continuous", "local/hopper/medium-v1", hopper),
            ("iql_antmaze", "local/pointmaze/umaze-v1", maze)]
    return [Run(s, e, algo, seed, f, 30) for s, e, f in plan for algo in ("IQL", "BC") for seed in (1, 2, 3)]


def paper_suite() -> list[Run]:
    """The paper's Table 1 datasets with its settings (1M updates, 5 seeds; each script's domain defaults)."""
    runs = []
    for task in ("halfcheetah", "hopper", "walker2d"):
        for kind in ("medium", "medium-replay", "medium-expert"):
            runs += [Run("iql_continuous", f"{task}-{kind}-v2", a, s, (), 600) for a in ("IQL", "BC") for s in range(5)]
    for maze in ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse"):
        runs += [Run("iql_antmaze", f"antmaze-{maze}-v2", a, s, (), 900) for a in ("IQL", "BC") for s in range(5)]
    return runs


def skip_reason(run: Run) -> Optional[str]:
    """Why a run cannot start (its D4RL name has no Minari counterpart, or a local dataset was not built), or None."""
    script = importlib.import_module(run.script)
    try:
        script.resolve_dataset_ids(run.env_id)
    except script.UserError as e:
        return str(e)
    root = Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")
    if run.env_id.startswith("local/") and not (root / run.env_id / "data").is_dir():
        return f"{run.env_id} is not in {root}: build it with python benchmarks/make_datasets.py"
    return None


def same_command(saved: str, command: list[str]) -> bool:
    """Whether a saved command (JSON list; older markers: words) is `command` wherever python and the repository
    were: same script, same flags."""
    try:
        words = json.loads(saved)
    except ValueError:
        words = saved.split()
    return len(words) > 1 and Path(words[1]).name == Path(command[1]).name and words[2:] == command[2:]


def finished(run: Run, folder: Path) -> bool:
    """A run counts as done when it finished with the same command (a suite whose flags changed runs again)."""
    done = folder / run.name / "done"
    return done.exists() and same_command(done.read_text(), run.command())


def newest_checkpoint(folder: Path) -> Optional[Path]:
    """The checkpoint_{step}.pt with the highest step that a run left in its folder, or None."""
    found = list(folder.glob("runs/*/checkpoint_*.pt"))
    return max(found, key=lambda p: int(p.stem.split("_")[1])) if found else None


STOPPED = 75  # the scripts' exit status after a signal made them save and stop (iql_*.py, STOPPED)


class Execute:
    """One run as a submitit job: `python iql_*.py ...` in the run's folder (the script writes runs/<run_name>/ there),
    its output appended to log.txt, a `done` or `failed` marker at the end (none when a signal stopped it).

    An unfinished earlier attempt with the same command is resumed from its newest checkpoint (`--resume`), not
    started over; one with another command is moved aside. On a cluster, submitit warns its worker with SIGUSR2
    before a time limit (and before a pre-emption where SLURM is set to send it) and calls checkpoint(): that asks
    the run to save (SIGTERM: the script checkpoints at the next step boundary and exits) and requeues this same
    call, which then resumes."""

    def __init__(self):
        self.proc = None  # the training process while it runs

    def __call__(self, command: list[str], folder: str, threads: int) -> int:
        folder, given = Path(folder), json.dumps(command) + "\n"  # JSON: paths with spaces compare right
        if (folder / "done").exists() and same_command((folder / "done").read_text(), command):
            return 0  # a requeue that came after the run had finished
        for marker in ("done", "failed"):
            (folder / marker).unlink(missing_ok=True)
        same = (folder / "command").exists() and same_command((folder / "command").read_text(), command)
        resume = newest_checkpoint(folder) if same else None
        if resume is None and (folder / "runs").exists():
            if same:  # our own attempt, stopped before its first checkpoint: nothing to keep
                shutil.rmtree(folder / "runs")
            else:  # another command's run: kept, out of the report's way
                (folder / "runs").rename(folder / f"runs.replaced.{time.time_ns()}")
        (folder / "command").write_text(given)
        # resuming, the script takes every setting from the checkpoint but the device flags, which stay as given
        started = command if resume is None else [*command, "--resume", str(resume.relative_to(folder))]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        with open(folder / "log.txt", "a") as log:
            log.write(f"$ {' '.join(started)}\n")
            log.flush()
            self.proc = subprocess.Popen(started, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                while (code := self.poll()) is None:  # not proc.wait(): it would block checkpoint()'s own wait
                    time.sleep(0.5)
            finally:  # the worker is being killed (no requeue): do not leave the training process behind
                if self.proc.poll() is None:
                    self.proc.kill()
        self.mark(folder, given, code)
        return code

    def poll(self):
        """proc.poll() with the warning signal held back: inside poll, Popen holds a lock that would make
        checkpoint()'s own polls report a finished process as running."""
        warning = {signal.SIGUSR1, signal.SIGUSR2}
        signal.pthread_sigmask(signal.SIG_BLOCK, warning)
        try:
            return self.proc.poll()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, warning)

    @staticmethod
    def mark(folder: Path, given: str, code: int):
        if code != STOPPED:  # a run stopped by a signal is neither: it resumes
            (folder / ("done" if code == 0 else "failed")).write_text(given)

    def checkpoint(self, command: list[str], folder: str, threads: int):
        """Called by submitit (in the signal handler) on a time limit or pre-emption; returns the call to requeue."""
        from submitit.helpers import DelayedSubmission

        def wait(seconds):
            deadline = time.time() + seconds
            while self.proc.poll() is None and time.time() < deadline:
                time.sleep(0.2)

        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)  # saves at the next step boundary, or after an evaluation
                wait(60)  # submitit's warning comes 90 s before the kill
                if self.proc.poll() is None:  # still busy (a long evaluation): the newest checkpoint will do
                    self.proc.kill()
                    wait(10)
                    return DelayedSubmission(Execute(), command, folder, threads)  # killed by us: no marker
            if self.proc.poll() is not None:  # finished meanwhile: the requeued call sees `done` and returns
                self.mark(Path(folder), json.dumps(command) + "\n", self.proc.poll())
        return DelayedSubmission(Execute(), command, folder, threads)


def make_executor(args: Args, folder: Path, minutes: float):
    import cloudpickle
    import submitit

    if __name__ != "__main__":  # imported (as the tests do): send Execute by value, the worker cannot import us
        cloudpickle.register_pickle_by_value(sys.modules[__name__])

    if args.launcher == "local":
        executor = submitit.LocalExecutor(folder=str(folder / "submitit"))
        # It kills a job after timeout_min (a few minutes by default): give it the run's budget. SIGUSR2 comes
        # signal_delay_s before that: room for Execute.checkpoint() to wait for the run to save.
        executor.update_parameters(timeout_min=max(math.ceil(minutes), 3), signal_delay_s=90)  # > the delay
    else:  # submitit asks SLURM for SIGUSR2 90 s before the time limit (its default signal_delay_s)
        executor = submitit.AutoExecutor(folder=str(folder / "submitit"), cluster="slurm")
        executor.update_parameters(timeout_min=max(math.ceil(minutes), 3), slurm_array_parallelism=args.max_parallel,
                                   gpus_per_node=args.slurm_gpus, cpus_per_task=max(args.threads, 1),
                                   slurm_partition=args.slurm_partition)
    return executor


def run_suite(runs: list[Run], args: Args, folder: Path) -> dict:
    """Start every run that has not finished (at most max_parallel at once) and wait for them; returns
    {run name: "done" | "skipped: reason" | "failed (exit N), see log"}."""
    status, todo = {}, []
    for run in runs:
        reason = skip_reason(run)
        if reason:
            status[run.name] = f"skipped: {reason}"
        elif finished(run, folder):
            status[run.name] = "done (earlier)"
        else:
            todo.append(run)
    print(f"{len(runs)} runs: {len(todo)} to run, {sum(s.startswith('done') for s in status.values())} done earlier, "
          f"{sum(s.startswith('skipped') for s in status.values())} skipped", flush=True)
    if not todo:
        return status
    for run in todo:
        (folder / run.name).mkdir(parents=True, exist_ok=True)
    executor = make_executor(args, folder, max(r.minutes for r in todo))
    start, pending, running = time.time(), list(todo), {}
    if args.launcher == "slurm":  # one job array; SLURM keeps max_parallel of it running
        with executor.batch():
            jobs = [executor.submit(Execute(), r.command(), str(folder / r.name), args.threads) for r in todo]
        running, pending = dict(zip(jobs, todo)), []
    while pending or running:
        while pending and len(running) < args.max_parallel:  # LocalExecutor would start them all at once
            run = pending.pop(0)
            running[executor.submit(Execute(), run.command(), str(folder / run.name), args.threads)] = run
        time.sleep(2)
        for job in [j for j in running if j.done()]:
            run = running.pop(job)
            try:
                code = job.result()
            except Exception as e:  # killed by the time limit, or the worker failed
                code = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
            log = folder / run.name / "log.txt"
            stopped = f"stopped by a signal: run the suite again to resume it ({log})"
            status[run.name] = "done" if code == 0 else stopped if code == STOPPED else f"failed ({code}), see {log}"
            count = sum(1 for r in todo if r.name in status)
            print(f"[{count}/{len(todo)}, {len(running)} running, {time.time() - start:.0f}s] {run.name}: "
                  f"{status[run.name]}", flush=True)
    return status


def read_scores(run_folder: Path) -> list[list[tuple[int, float]]]:
    """The (step, normalised score) evaluations in a run folder's TensorBoard logs: one list per member of a
    population (its runs/<run_name>/<member>/ log), or one for a single run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves = []
    for events in sorted({f.parent for f in run_folder.glob("runs/**/events.out.tfevents.*")}):
        acc = EventAccumulator(str(events)).Reload()
        if "charts/normalized_score" in acc.Tags()["scalars"]:
            curves.append(sorted((e.step, e.value) for e in acc.Scalars("charts/normalized_score")))
    return curves


def aggregate(runs: list[Run], folder: Path) -> dict:
    """{(env_id, algo): {"steps": [...], "curves": seeds x evaluations, "final": [...], "best": [...]}} over the
    runs that finished (a population gives one curve per member)."""
    groups = {}
    for run in runs:
        if not finished(run, folder):
            continue
        for scores in read_scores(folder / run.name):
            g = groups.setdefault((run.env_id, run.algo), {"steps": [s for s, _ in scores], "curves": []})
            if [s for s, _ in scores] != g["steps"]:
                sys.exit(f"error: {run.name} was evaluated at other steps than the other seeds of {run.env_id} "
                         f"{run.algo}; remove {folder / run.name} and run the suite again")
            g["curves"].append([v for _, v in scores])
    for g in groups.values():
        g["final"] = [c[-1] for c in g["curves"]]
        g["best"] = [max(c) for c in g["curves"]]
    return groups


def table(groups: dict) -> str:
    """Markdown: final and best normalised score, mean ± std over seeds, IQL beside BC."""
    fmt = lambda xs: f"{np.mean(xs):.1f} ± {np.std(xs):.1f}"  # noqa: E731
    lines = ["| dataset | updates | seeds | IQL final | BC final | IQL best | BC best |",
             "|---|---|---|---|---|---|---|"]
    for env_id in dict.fromkeys(e for e, _ in groups):
        iql, bc = groups.get((env_id, "IQL")), groups.get((env_id, "BC"))
        some = iql or bc
        cells = [fmt(g[k]) if g else "-" for k in ("final", "best") for g in (iql, bc)]
        seeds = "/".join(str(len(g["final"])) if g else "0" for g in (iql, bc))
        lines.append(f"| {env_id} | {some['steps'][-1]:,} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(groups: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(dict.fromkeys(e for e, _ in groups))
    fig, axes = plt.subplots(1, len(envs), figsize=(3.6 * len(envs), 2.8), squeeze=False)
    for ax, env_id in zip(axes[0], envs):
        for algo, color in (("IQL", "tab:blue"), ("BC", "tab:orange")):
            g = groups.get((env_id, algo))
            if g is None:
                continue
            curves = np.array(g["curves"])
            mean, std = curves.mean(0), curves.std(0)
            ax.plot(g["steps"], mean, color=color, label=f"{algo} ({len(curves)} seeds)")
            ax.fill_between(g["steps"], mean - std, mean + std, color=color, alpha=0.2)
        ax.set_title(env_id, fontsize=9)
        ax.set_xlabel("updates", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("normalised score", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main(args: Args, runs: Optional[list[Run]] = None) -> dict:
    if args.max_parallel < 1 or args.threads < 1:
        sys.exit(f"error: --max-parallel and --threads must be >= 1, got {args.max_parallel} and {args.threads}")
    if "MINARI_DATASETS_PATH" in os.environ:  # each run works in its own folder: a relative path would break there
        os.environ["MINARI_DATASETS_PATH"] = str(Path(os.environ["MINARI_DATASETS_PATH"]).resolve())
    runs = runs if runs is not None else {"local": local_suite, "paper": paper_suite}[args.suite]()
    runs = as_populations(runs) if args.population else runs
    out = Path(args.out)
    folder = out / args.suite
    folder.mkdir(parents=True, exist_ok=True)
    status = {r.name: "not run (--report-only)" for r in runs} if args.report_only else run_suite(runs, args, folder)
    groups = aggregate(runs, folder)
    if args.report_only and not groups:  # e.g. a fresh clone: the runs' folders are not in git, the table is
        sys.exit(f"error: no finished runs in {folder}: the table in {out} was left as it is")
    skipped = sorted({f"- {r.env_id}: {status[r.name][len('skipped: '):]}" for r in runs
                      if status.get(r.name, "").startswith("skipped")})
    report = table(groups) if groups else "(no finished runs)"
    failed = [f"- {r.name}: see {folder / r.name / 'log.txt'}" for r in runs if not finished(r, folder) and (
              (folder / r.name / "command").exists() or status.get(r.name, "").startswith(("failed", "stopped")))]
    # started and not finished: failed, stopped, or died without a marker
    if skipped:
        report += "\n\nSkipped:\n" + "\n".join(skipped)
    if failed:  # listed, not hidden: leaving them out of the table would favour the seeds that survived
        report += ("\n\nStarted, not finished (failed, stopped or still running; not in the table):\n"
                   + "\n".join(failed))
    name = args.suite + ("-population" if args.population else "")  # beside the one-process-per-seed table
    (out / f"{name}.md").write_text(report + "\n")
    if groups:
        plot(groups, out / f"{name}.png")
    print(report)
    print(f"wrote {out / f'{name}.md'}" + (f" and {out / f'{name}.png'}" if groups else ""))
    return status


if __name__ == "__main__":
    main(tyro.cli(Args))
