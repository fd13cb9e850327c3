"""`bganhash reproduce`: run the plan's missing cells (in worker processes with --jobs), then write the report.

A re-run into the same folder skips the cells whose result files exist (see `bganhash.research.results`),
and the report is assembled from the cell files only (see `bganhash.research.report`).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from bganhash._system import THREADS_VARIABLE, usable_cpus
from bganhash._validation import check_positive_int
from bganhash.datasets.splits import Split
from bganhash.research.cells import compute_cell, gallery_positions
from bganhash.research.plan import Cell, ReproduceSettings, build_plan
from bganhash.research.protocol import prepare_protocol
from bganhash.research.report import write_report
from bganhash.research.results import cell_path, check_run_identity, record_request, save_cell


def reproduce(settings: ReproduceSettings, out: str | Path, log: Callable[[str], None] | None = None,
              jobs: int = 1) -> dict:
    """Run the plan's missing cells under `out` (`jobs` at a time), then (re)write the report."""
    out = Path(out)
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    data = load_protocol_data(settings)  # first: a bad --data must not leave an identity behind
    check_run_identity(out, settings)
    plan = build_plan(settings)
    requested = record_request(out, plan)
    runner = CellRunner(settings, data, out, log, jobs)
    computed = runner.run(plan)
    files = write_report(out, settings, data, requested)
    return {"out": str(out), "cells": len(plan), "computed": computed, "skipped": len(plan) - computed,
            "seconds": round(runner.elapsed(), 1), "files": {k: str(v) for k, v in files.items()}}


def load_protocol_data(settings: ReproduceSettings, progress: bool = True):
    """Dataset, features and split; under --quick a seeded random subset of each part of the split."""
    split = Split.load(settings.split_path) if settings.split_path else None
    data = prepare_protocol(settings.dataset, settings.data, features_path=settings.features_path,
                            feature_config=settings.feature_config, seed=settings.seed, split=split,
                            protocol=settings.protocol,
                            progress=progress)
    if not settings.quick:
        return data
    quick, rng = settings.quick_settings, np.random.default_rng(settings.seed)

    def pick(indices: np.ndarray, count: int) -> np.ndarray:
        return np.sort(rng.choice(indices, count, replace=False)) if len(indices) > count else indices

    s = data.split
    subset = Split(pick(s.query, quick.n_query), pick(s.train, quick.n_train), pick(s.database, quick.n_database),
                   s.dataset, s.seed, f"{s.protocol}/quick", s.n_images)
    return replace(data, split=subset)


class CellRunner:
    """Runs the missing cells of a plan, `jobs` at a time, with a progress line per cell.

    With jobs > 1 each cell runs in a worker process of its own interpreter (one thread each, the
    data loaded once per worker from the feature cache); the backbone timing cell always runs last
    and alone, so Table 6 is not measured on a shared CPU.
    """

    def __init__(self, settings: ReproduceSettings, data, out: Path, log: Callable[[str], None],
                 jobs: int = 1) -> None:
        self.settings, self.data, self.out, self.log = settings, data, out, log
        self.jobs = check_positive_int(jobs, "jobs")
        self.started = time.perf_counter()
        self.seconds_by_kind: dict[str, list[float]] = {}
        self.gallery = gallery_positions(len(data.split.query), settings.seed)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def run(self, plan: list[Cell]) -> int:
        """Compute every missing cell of `plan`; returns how many were computed."""
        pending = [cell for cell in plan if not cell_path(self.out, cell.id).is_file()]
        self.positions = {cell.id: position for position, cell in enumerate(plan, start=1)}
        self.total = len(plan)
        for cell in plan:
            if cell not in pending:
                self.log(f"[cell {self.positions[cell.id]}/{self.total}] {cell.label}: done earlier, kept")
        alone = [cell for cell in pending if cell.kind == "timing"]
        shared = [cell for cell in pending if cell.kind != "timing"]
        if self.jobs > 1 and len(shared) > 1:
            self._run_in_workers(shared)
        else:
            self._run_here(shared)
        self._run_here(alone)
        self.log(f"all {len(plan)} cells done in {_clock(self.elapsed())} ({len(pending)} computed now)")
        return len(pending)

    def _run_here(self, cells: list[Cell]) -> None:
        for index, cell in enumerate(cells):
            self._started(cell, cells[index:])
            started = time.perf_counter()
            result = compute_cell(cell, self.settings, self.data, self.gallery, self.out)
            self._finished(cell, save_cell(self.out, cell, result, time.perf_counter() - started))

    def _run_in_workers(self, cells: list[Cell]) -> None:
        # longest kinds first, so the short baseline cells fill the gaps at the end
        queue = sorted(cells, key=lambda cell: cell.kind not in ("bgan", "convergence"))
        threads = max(1, usable_cpus() // self.jobs)
        context = multiprocessing.get_context("spawn")  # no fork of a process that already ran OpenMP
        with ProcessPoolExecutor(self.jobs, mp_context=context, initializer=_start_worker,
                                 initargs=(self.settings, str(self.out), threads, self.jobs)) as pool:
            running: dict[Any, Cell] = {}
            while queue or running:
                while queue and len(running) < self.jobs:
                    cell = queue.pop(0)
                    self._started(cell, [cell, *queue, *running.values()])
                    running[pool.submit(_worker_compute, cell)] = cell
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    self._finished(running.pop(future), future.result())

    def _started(self, cell: Cell, remaining: list[Cell]) -> None:
        self.log(f"[cell {self.positions[cell.id]}/{self.total}] {cell.label} … elapsed {_clock(self.elapsed())}, "
                 f"estimate {self._estimate(remaining)} left")

    def _finished(self, cell: Cell, seconds: float) -> None:
        self.seconds_by_kind.setdefault(cell.kind, []).append(seconds)
        if self.jobs > 1:
            self.log(f"[cell {self.positions[cell.id]}/{self.total}] {cell.label}: done in {_clock(seconds)}")

    def _estimate(self, remaining: list[Cell]) -> str:
        """Remaining time from the mean duration of each kind of cell so far ("?" before any is timed),
        divided among the jobs."""
        done = [s for values in self.seconds_by_kind.values() for s in values]
        if not done:
            return "?"
        overall = float(np.mean(done))
        total = sum(float(np.mean(self.seconds_by_kind.get(cell.kind, [overall]))) for cell in remaining)
        return _clock(total / min(self.jobs, max(1, len(remaining))))


_WORKER: dict[str, Any] = {}  # a worker process's settings, data and output folder


def _start_worker(settings: ReproduceSettings, out: str, threads: int, jobs: int) -> None:
    """Limit the worker's threads, then load the protocol data once (features come from the cache)."""
    import torch

    os.environ[THREADS_VARIABLE] = str(threads)
    torch.set_num_threads(threads)
    threadpool_limits(threads)
    data = load_protocol_data(settings, progress=False)
    _WORKER.update(settings=settings, data=data, out=Path(out), progress=False, jobs=jobs,
                   gallery=gallery_positions(len(data.split.query), settings.seed))


def _worker_compute(cell: Cell) -> float:
    """Compute and save one cell in a worker; returns its seconds."""
    started = time.perf_counter()
    result = compute_cell(cell, _WORKER["settings"], _WORKER["data"], _WORKER["gallery"], _WORKER["out"],
                          progress=False)
    return save_cell(_WORKER["out"], cell, result, time.perf_counter() - started, _WORKER["jobs"])


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
