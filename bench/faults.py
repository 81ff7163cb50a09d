"""Faults injected into real searches, and what each costs (docs/reliability.md).

Each scenario runs `python -m nas.search --smoke` on digits (4 trials, 2 epochs, no pruning, two
trials at a time), injects one fault, continues with `--resume` until the search ends, then
counts from trials.csv and the study:

    lost     finished trials seen before the fault that the end state lacks or shows changed
    re-run   finished trials trained again after the fault (checkpoint rewritten, or their
             architecture started again as a new trial)
    never    architectures the search started (interrupted trials included) that no finished
             trial evaluated

and checks that trials.csv and the study agree on every trial, that none is left RUNNING and
that exactly `--trials` architectures finished.

    python -m bench.faults                      # every scenario (about 15 minutes on 2 cores)
    python -m bench.faults --only kill-9-mid ctrl-c
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna

from nas.experiment import ExperimentDir, TrialRecord, open_storage, read_trials_csv
from nas.search.recovery import is_interrupted

TRIALS = 4
SEARCH = ["--smoke", "--trials", str(TRIALS), "--epochs", "2", "--pruner", "none",
          "--concurrency", "2", "--time-budget", "10m"]
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
OPTUNA_STATE = {"COMPLETE": "COMPLETE", "PRUNED": "PRUNED", "FAIL": "FAIL",
                "INFEASIBLE": "COMPLETE"}


@dataclass
class Outcome:
    scenario: str
    fault: str
    lost: int = 0
    rerun: int = 0
    never: int = 0
    finished: int = 0
    interrupted: int = 0  # trials cut short by the fault, run again by design
    agree: bool = False
    notes: list[str] = field(default_factory=list)


class Run:
    """One experiment under test: its driver processes and what was seen before each fault."""

    def __init__(self, root: Path, name: str) -> None:
        self.out, self.name = root, name
        self.exp = root / name
        self.seen: dict[str, TrialRecord] = {}  # every record observed, by trial id
        self.before: dict[str, tuple[TrialRecord, int]] = {}  # finished at a fault, ckpt stamp
        self.driver: subprocess.Popen | None = None  # the driver started last
        self.logs = 0

    def command(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "nas.search", *SEARCH, "--out", str(self.out),
                "--name", self.name, *extra]

    def start(self, *extra: str) -> subprocess.Popen:
        """Start a driver in its own session; its output goes to OUT/NAME-N.log."""
        self.logs += 1
        log = (self.out / f"{self.name}-{self.logs}.log").open("w")
        self.driver = subprocess.Popen(self.command(*extra), stdout=log, stderr=subprocess.STDOUT,
                                       text=True, start_new_session=True)
        return self.driver

    def log(self) -> str:
        return (self.out / f"{self.name}-{self.logs}.log").read_text()

    def finish(self, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*extra), capture_output=True, text=True, timeout=900)

    def records(self) -> list[TrialRecord]:
        try:
            records = read_trials_csv(self.exp)
        except Exception:  # mid-rename or spoiled on purpose: look again later
            return []
        self.seen.update({r.trial_id: r for r in records})
        return records

    def wait_for(self, what: Callable[[list[TrialRecord]], bool], timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if what(self.records()):
                return
            if self.driver is not None and self.driver.poll() is not None:
                raise RuntimeError(f"the driver ended first ({self.driver.returncode}): "
                                   + " / ".join(self.log().strip().splitlines()[-3:]))
            time.sleep(0.2)
        raise TimeoutError(f"{self.name}: the awaited state never came")

    def mark(self) -> None:
        """Remember the finished trials (and their checkpoints' times) at a fault."""
        for r in self.records():
            if r.state in FINISHED and not is_interrupted(r) and r.trial_id not in self.before:
                checkpoint = ExperimentDir(self.exp).trial(r.trial_id).checkpoint
                stamp = checkpoint.stat().st_mtime_ns if checkpoint.exists() else 0
                self.before[r.trial_id] = (r, stamp)

    def count(self, outcome: Outcome) -> Outcome:
        final = {r.trial_id: r for r in self.records()}
        outcome.lost = sum(final.get(t) != r for t, (r, _) in self.before.items())
        stamps = sum(_stamp(self.exp, t) != s for t, (_, s) in self.before.items() if s)
        last = max((r.number for r, _ in self.before.values()), default=-1)
        again = sum(any(f.spec == r.spec and f.number > last for f in final.values())
                    for r, _ in self.before.values())
        outcome.rerun = stamps + again
        evaluated = {r.spec for r in final.values() if r.state in FINISHED
                     and not is_interrupted(r)}
        outcome.never = len({r.spec for r in self.seen.values()} - evaluated)
        outcome.finished = len([r for r in final.values() if r.state in FINISHED
                                and not is_interrupted(r)])
        outcome.interrupted = sum(is_interrupted(r) for r in final.values())
        outcome.agree = _agree(self.exp, list(final.values()))
        errors = list(ExperimentDir(self.exp).ray.glob("*/error.txt"))
        if errors:  # Ray's record of trials that raised (a lost worker or node), then retried
            outcome.notes.append(f"Ray error.txt of {len(errors)} trial(s): " + "; ".join(
                sorted({e.read_text().strip().splitlines()[-1][:80] for e in errors})))
        return outcome


def _stamp(exp: Path, trial_id: str) -> int:
    checkpoint = ExperimentDir(exp).trial(trial_id).checkpoint
    return checkpoint.stat().st_mtime_ns if checkpoint.exists() else 0


def _agree(exp: Path, records: list[TrialRecord]) -> bool:
    """trials.csv and the study hold the same trials in the same states, none RUNNING."""
    study = optuna.load_study(study_name=exp.name, storage=open_storage(exp))
    by_number = {t.number: t for t in study.trials}
    spec_less = [t for t in study.trials if "spec" not in t.user_attrs]  # asked, never proposed
    return (all(r.state != "RUNNING" and r.number in by_number
                and by_number[r.number].state.name == OPTUNA_STATE[r.state] for r in records)
            and len(by_number) == len(records) + len(spec_less)
            and all(t.state.name == "FAIL" for t in spec_less))


def _running(records: list[TrialRecord]) -> bool:
    return any(r.state == "RUNNING" for r in records)


def _done(n: int) -> Callable[[list[TrialRecord]], bool]:
    return lambda records: sum(r.state in FINISHED and not is_interrupted(r)
                               for r in records) >= n


def _all_started(records: list[TrialRecord]) -> bool:
    return len([r for r in records if not is_interrupted(r)]) >= TRIALS and _running(records)


def _kill(driver: subprocess.Popen, sig: int = signal.SIGKILL) -> int:
    """Signal the driver alone, wait for it, then end what it left (Ray's processes)."""
    driver.send_signal(sig)
    try:
        code = driver.wait(timeout=120)
    except subprocess.TimeoutExpired:
        driver.kill()
        code = driver.wait()
    time.sleep(3)
    try:
        os.killpg(driver.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return code


def _resume_to_end(run: Run, outcome: Outcome) -> None:
    done = run.finish("--resume")
    if done.returncode != 0:
        outcome.notes.append(f"resume exit {done.returncode}: {done.stderr.strip()[-300:]}")


# Scenarios: each returns its Outcome ------------------------------------------------------------
def kill_9_when(moment: Callable[[list[TrialRecord]], bool], label: str) -> Callable[[Run],
                                                                                    Outcome]:
    def scenario(run: Run) -> Outcome:
        outcome = Outcome("", f"kill -9 of the driver {label}")
        driver = run.start()
        run.wait_for(moment)
        run.mark()
        _kill(driver)
        _resume_to_end(run, outcome)
        return outcome
    return scenario


def kill_9_twice(run: Run) -> Outcome:
    outcome = Outcome("", "kill -9 with trials running, then again with their re-runs running")
    driver = run.start()
    run.wait_for(_running)
    run.mark()
    _kill(driver)
    driver = run.start("--resume")
    run.wait_for(lambda rs: any(r.state == "RUNNING" and r.number >= TRIALS - 2 for r in rs)
                 or _done(TRIALS)(rs))
    run.mark()
    _kill(driver)
    _resume_to_end(run, outcome)
    return outcome


def ctrl_c(run: Run) -> Outcome:
    outcome = Outcome("", "Ctrl-C (SIGINT) of the driver after the first finished trial")
    driver = run.start()
    run.wait_for(_done(1))
    run.mark()
    code = _kill(driver, signal.SIGINT)
    outcome.notes.append(f"the driver exited {code}")
    _resume_to_end(run, outcome)
    return outcome


def second_driver(run: Run) -> Outcome:
    outcome = Outcome("", "a second driver on the experiment while the first runs")
    driver = run.start()
    run.wait_for(_running)
    for extra in (("--resume",), ()):
        other = run.finish(*extra)
        lines = other.stderr.strip().splitlines()
        named = f"pid {driver.pid} on host" in other.stderr
        outcome.notes.append(f"second driver{' with --resume' if extra else ''}: exit "
                             f"{other.returncode}, {len(lines)} line(s), names the first: {named}")
    driver.wait(timeout=900)
    outcome.notes.append(f"the first driver exited {driver.returncode}")
    return outcome


def worker_killed(run: Run) -> Outcome:
    outcome = Outcome("", "kill -9 of a Ray worker process training a trial")
    driver = run.start()
    run.wait_for(lambda rs: any(r.state == "RUNNING" and ExperimentDir(run.exp).trial(
        r.trial_id).metrics.exists() for r in rs))
    run.mark()
    workers = _ray_trial_processes()
    if workers:
        os.kill(workers[0], signal.SIGKILL)
    outcome.notes.append(f"killed worker pid {workers[0] if workers else None}")
    driver.wait(timeout=900)
    outcome.notes.append(f"the driver exited {driver.returncode}")
    return outcome


def _ray_trial_processes() -> list[int]:
    """Ray worker processes running a function trainable (their title names the actor)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if title.startswith("ray::ImplicitFunc") or "ray::_Inner" in title:
                pids.append(int(entry.name))
    return pids


def node_removed(run: Run) -> Outcome:
    outcome = Outcome("", "a Ray node removed while its trial trains (two-node cluster)")
    done = subprocess.run([sys.executable, "-m", "bench.faults", "--cluster-run", str(run.exp)],
                          capture_output=True, text=True, timeout=900)
    outcome.notes.append(f"the driver exited {done.returncode}")
    if done.returncode:
        outcome.notes.append(done.stderr.strip()[-300:])
    run.records()
    return outcome


def _cluster_run(exp: Path) -> int:
    """The search on a local two-node Ray cluster whose second node is removed mid-trial."""
    import ray
    from ray.cluster_utils import Cluster

    from nas.search.cli import main

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()

    def remove_when_both_train() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if sum(1 for m in exp.glob("trials/*/metrics.jsonl") if m.read_text().strip()) >= 2:
                break
            time.sleep(0.2)
        cluster.remove_node(worker)

    remover = threading.Thread(target=remove_when_both_train, daemon=True)
    remover.start()
    try:
        return main([*SEARCH, "--out", str(exp.parent), "--name", exp.name, "--address",
                     cluster.address, "--max-failures", "3"])
    finally:
        remover.join(timeout=60)
        ray.shutdown()
        cluster.shutdown()


def storage_unwritable(run: Run) -> Outcome:
    outcome = Outcome("", "the study made unwritable mid-run (its path swapped for a directory)")
    driver = run.start()
    run.wait_for(_done(1))
    journal = ExperimentDir(run.exp).study
    saved = run.exp.parent / f"{run.name}.journal.saved"
    journal.rename(saved)
    journal.mkdir()
    run.mark()
    driver.wait(timeout=900)
    errors = [line for line in run.log().splitlines() if line.startswith("error: ")]
    outcome.notes.append(f"the driver exited {driver.returncode} with {len(errors)} error "
                         f"line(s) naming the journal: {any(str(journal) in e for e in errors)}")
    journal.rmdir()
    saved.rename(journal)
    _resume_to_end(run, outcome)
    return outcome


def file_deleted(which: str) -> Callable[[Run], Outcome]:
    def scenario(run: Run) -> Outcome:
        outcome = Outcome("", f"kill -9, then {which} deleted before --resume")
        driver = run.start()
        run.wait_for(_done(1))
        run.mark()
        _kill(driver)
        path = getattr(ExperimentDir(run.exp), which)
        saved = run.exp.parent / f"{run.name}.{path.name}.saved"
        path.rename(saved)
        refused = run.finish("--resume")
        outcome.notes.append(f"resume without {path.name}: exit {refused.returncode}; "
                             + (refused.stderr.strip().splitlines() or [""])[-1][:160])
        if refused.returncode != 0:
            saved.rename(path)  # refused: restore it, as a user would, and resume
            _resume_to_end(run, outcome)
        return outcome
    return scenario


SCENARIOS: dict[str, Callable[[Run], Outcome]] = {
    "kill-9-first": kill_9_when(_running, "as the first trial starts"),
    "kill-9-mid": kill_9_when(_done(2), "after two trials finished"),
    "kill-9-late": kill_9_when(_all_started, "with every architecture started"),
    "kill-9-twice": kill_9_twice,
    "ctrl-c": ctrl_c,
    "second-driver": second_driver,
    "worker-killed": worker_killed,
    "node-removed": node_removed,
    "storage-unwritable": storage_unwritable,
    "trials-csv-deleted": file_deleted("trials_csv"),
    "study-deleted": file_deleted("study"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    p.add_argument("--out", type=Path, default=Path("runs/faults"))
    p.add_argument("--cluster-run", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.cluster_run:
        return _cluster_run(args.cluster_run)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    outcomes = []
    for name in args.only:
        started = time.monotonic()
        run = Run(args.out, name)
        try:
            outcome = SCENARIOS[name](run)
        except Exception as err:  # a scenario that went wrong is reported, the others still run
            outcome = Outcome(name, name, notes=[f"harness: {type(err).__name__}: {err}"])
        finally:
            if run.driver is not None and run.driver.poll() is None:
                _kill(run.driver)
        outcome.scenario = name
        try:
            outcomes.append(run.count(outcome))
        except Exception as err:
            outcome.notes.append(f"harness: counting failed: {type(err).__name__}: {err}")
            outcomes.append(outcome)
        print(f"{name}: {asdict(outcome)} ({time.monotonic() - started:.0f}s)", flush=True)
    (args.out / "results.json").write_text(json.dumps([asdict(o) for o in outcomes], indent=2))
    print("\n| fault | finished trials lost | re-run | architectures never evaluated | "
          "finished | interrupted, run again | records agree | notes |\n"
          "|---|---|---|---|---|---|---|---|")
    for o in outcomes:
        print(f"| {o.fault} | {o.lost} | {o.rerun} | {o.never} | {o.finished}/{TRIALS} | "
              f"{o.interrupted} | {'yes' if o.agree else 'NO'} | {'; '.join(o.notes)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

