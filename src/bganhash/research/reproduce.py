"""`bganhash reproduce`: the paper's Section 4 as a plan of cells, run with resume, assembled into a report.

A cell is one (experiment, method or variant, bit length) unit of work; its result is a small JSON
file under `<out>/cells/<id>.json`, written atomically as soon as it completes. A re-run skips the
cells that exist, and the report (report.md, report.html, results.json) is assembled from the cell
files only, so every number of ours in it was produced by a run, and every published one comes from
`bganhash.research.paper`. BGAN cells are keyed by their resolved configuration, so a variant shared by two
tables (the full model is Table 2's N+C+A, Table 3's BGAN and Table 4's app) is trained once.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bganhash.research import paper
from bganhash._io import write_json
from bganhash._system import usable_cpus
from bganhash._validation import InputError, check_positive_int
from bganhash.registry import BASELINES

EXPERIMENTS = ("table2", "table3", "table4", "table5", "table6", "figure2", "figure5")
# Figures 4 and 6 and the gallery are drawn from Table 3's cells.
ALIASES = {"figure4": "table3", "figure6": "table3", "gallery": "table3"}
BASELINE_METHODS = BASELINES  # Table 3's baselines, in the registry's order
FULL_MODEL: dict[str, Any] = {"use_neighborhood": True, "use_content": True, "use_adversarial": True}
TABLE2_VARIANTS: dict[str, dict[str, Any]] = {
    "N": {"use_neighborhood": True, "use_content": False, "use_adversarial": False},
    "N+C": {"use_neighborhood": True, "use_content": True, "use_adversarial": False},
    "N+A": {"use_neighborhood": True, "use_content": False, "use_adversarial": True},
    "N+C+A": FULL_MODEL,
    "C": {"use_neighborhood": False, "use_content": True, "use_adversarial": False},
    "A": {"use_neighborhood": False, "use_content": False, "use_adversarial": True},
    "C+A": {"use_neighborhood": False, "use_content": True, "use_adversarial": True},
}
TABLE4_VARIANTS: dict[str, dict[str, Any]] = {
    "two_step": {"activation": "two_step"}, "tanh": {"activation": "tanh"}, "app": {"activation": "app"},
}
SUPERVISED: dict[str, Any] = {"supervised": True}
FIGURE_BITS = 32  # Figures 5 and 6 and the gallery use this bit length when it is run
K_GRID = (1, 5, 10, 20, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000)  # Figure 4's precision@K
FIGURE2_K1 = (5, 10, 20, 30, 50, 100)
GALLERY_QUERIES = 12
GALLERY_TOP = 10
N_RECONSTRUCTIONS = 8
MIXED_SIZE_SIDE = 64  # pixels of datasets whose images differ in size are resized to this square
TIMING_IMAGES = 64  # images pushed through the backbone to time per-image feature extraction
RUN_FILE = "run.json"
REQUESTS_FILE = "requested.json"  # experiments and bit lengths asked for by every run into the folder


@dataclass(frozen=True)
class QuickSettings:
    """What `--quick` narrows: a random subset of the split, one bit length, one epoch per beta stage."""

    n_query: int = 200
    n_train: int = 2000
    n_database: int = 5000
    bits: tuple[int, ...] = (FIGURE_BITS,)
    overrides: dict[str, Any] = field(default_factory=lambda: {"epochs_per_stage": 1})


@dataclass
class ReproduceSettings:
    """Everything that defines a reproduction run (the first six fields are its identity, see `identity`)."""

    dataset: str
    data: str | None = None
    features_path: str | None = None
    seed: int = 0
    preset: str = "auto"
    quick: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    split_path: str | None = None
    feature_config: Any = None
    only: tuple[str, ...] | None = None
    bits: tuple[int, ...] | None = None
    quick_settings: QuickSettings = field(default_factory=QuickSettings)

    def identity(self) -> dict[str, Any]:
        """What must not change between a run and its resumption (narrowing options may)."""
        from dataclasses import asdict, is_dataclass

        features = self.feature_config
        return {"dataset": self.dataset, "data": self.data, "features": self.features_path, "seed": self.seed,
                "preset": self.preset, "quick": self.quick, "overrides": self.overrides, "split": self.split_path,
                "feature_config": asdict(features) if is_dataclass(features) else features}

    def bgan_overrides(self, variant: dict[str, Any]) -> dict[str, Any]:
        """Quick settings, then the user's overrides, then the variant's own fields."""
        return {**(self.quick_settings.overrides if self.quick else {}), **self.overrides, **variant}


@dataclass
class Cell:
    """One unit of work; `roles` are the (experiment, row, bits) table places its result fills."""

    id: str
    kind: str  # "baseline" | "bgan" | "convergence" | "figure2" | "timing"
    label: str
    params: dict[str, Any]
    roles: list[tuple[str, str, int]] = field(default_factory=list)


# ---- the plan ----------------------------------------------------------------------------------------


def parse_only(values: str | None) -> tuple[str, ...] | None:
    """"table3,figure2" -> ("table3", "figure2"); figure4/figure6/gallery mean table3."""
    if values is None:
        return None
    names = [v.strip().lower() for v in values.split(",") if v.strip()]
    unknown = [n for n in names if n not in EXPERIMENTS and n not in ALIASES]
    if unknown or not names:
        choices = ", ".join((*EXPERIMENTS, *ALIASES))
        raise InputError(f"--only {values!r}: unknown experiment(s) {unknown}; choose from {choices}")
    return tuple(dict.fromkeys(ALIASES.get(n, n) for n in names))


def experiment_bits(settings: ReproduceSettings, experiment: str) -> tuple[int, ...]:
    """The bit lengths an experiment runs at: --bits, else the quick bit length, else the paper's."""
    if settings.bits:
        return tuple(settings.bits)
    if settings.quick:
        return settings.quick_settings.bits
    return paper.TABLE2_BITS if experiment in ("table2", "table4") else paper.PAPER_BITS


def build_plan(settings: ReproduceSettings) -> list[Cell]:
    """The cells of the requested experiments, shared cells merged (their roles joined), in run order."""
    experiments = settings.only or EXPERIMENTS
    return _merge(_experiment_cells(settings, e, experiment_bits(settings, e)) for e in experiments)


def report_plan(settings: ReproduceSettings, requested: dict[str, list[int]]) -> list[Cell]:
    """Every cell any run into this folder asked for: `requested` maps experiment -> bit lengths."""
    groups = []
    for experiment, bits in requested.items():
        # one convergence run per bit length asked for (a run picks one of its bit lengths)
        lists = [(b,) for b in bits] if experiment == "figure5" else [tuple(bits)]
        groups += [_experiment_cells(settings, experiment, chosen) for chosen in lists]
    return _merge(groups)


def _merge(groups) -> list[Cell]:
    cells: dict[str, Cell] = {}
    for group in groups:
        for cell in group:
            if cell.id in cells:
                cells[cell.id].roles.extend(cell.roles)
            else:
                cells[cell.id] = cell
    return list(cells.values())


def record_request(out: Path, settings: ReproduceSettings, plan: list[Cell]) -> dict[str, list[int]]:
    """Add this run's experiments and bit lengths to `out`'s record of them; return the union."""
    path = out / REQUESTS_FILE
    requested = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for cell in plan:
        for experiment, _, bits in cell.roles:  # bits 0: a cell with no bit length (timing, Figure 2)
            requested[experiment] = sorted(set(requested.get(experiment, [])) | ({bits} if bits else set()))
    write_json(path, requested)
    return requested


def _experiment_cells(settings: ReproduceSettings, experiment: str, bits: tuple[int, ...]) -> list[Cell]:
    if experiment == "table2":
        return [_bgan_cell(settings, experiment, row, b, v) for row, v in TABLE2_VARIANTS.items() for b in bits]
    if experiment == "table3":
        return [_bgan_cell(settings, experiment, "bgan", b, FULL_MODEL) for b in bits] + [
            Cell(f"{method}-{b}b", "baseline", f"table3 {method} {b} bits", {"method": method, "bits": b},
                 [(experiment, method, b)]) for method in BASELINE_METHODS for b in bits]
    if experiment == "table4":
        return [_bgan_cell(settings, experiment, row, b, v) for row, v in TABLE4_VARIANTS.items() for b in bits]
    if experiment == "table5":
        return [_bgan_cell(settings, experiment, "BGAN_s", b, SUPERVISED) for b in bits]
    if experiment == "table6":
        return [_bgan_cell(settings, experiment, "bgan", b, FULL_MODEL) for b in bits] + [
            Cell("timing", "timing", "table6 backbone timing", {}, [(experiment, "backbone", 0)])]
    if experiment == "figure2":
        return [Cell("figure2", "figure2", "figure2 neighbourhood precision", {}, [(experiment, "curve", 0)])]
    figure_bits = FIGURE_BITS if FIGURE_BITS in bits else bits[0]
    cell = _bgan_cell(settings, experiment, "convergence", figure_bits, FULL_MODEL)
    return [replace(cell, id="convergence-" + cell.id, kind="convergence")]


def _bgan_cell(settings: ReproduceSettings, experiment: str, row: str, n_bits: int, variant: dict) -> Cell:
    """A BGAN training cell, identified by the digest of its resolved configuration."""
    overrides = settings.bgan_overrides(variant)
    config = _bgan_hasher(settings, n_bits, overrides).resolved_config().to_dict()
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    return Cell(f"bgan-{n_bits}b-{digest}", "bgan", f"{experiment} {row} {n_bits} bits",
                {"bits": n_bits, "overrides": overrides, "config": config}, [(experiment, row, n_bits)])


def _bgan_hasher(settings: ReproduceSettings, n_bits: int, overrides: dict[str, Any]):
    from bganhash.bgan.estimator import BGANHasher

    return BGANHasher(n_bits, preset=settings.preset, random_state=settings.seed,
                      feature_config=settings.feature_config, **overrides)


# ---- running -----------------------------------------------------------------------------------------


def reproduce(settings: ReproduceSettings, out: str | Path, log: Callable[[str], None] | None = None,
              jobs: int = 1) -> dict:
    """Run the plan's missing cells under `out` (`jobs` at a time), then (re)write the report."""
    out = Path(out)
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    data = load_protocol_data(settings)  # first: a bad --data must not leave an identity behind
    check_run_identity(out, settings)
    plan = build_plan(settings)
    requested = record_request(out, settings, plan)
    runner = CellRunner(settings, data, out, log, jobs)
    computed = runner.run(plan)
    files = write_report(out, settings, data, requested)
    return {"out": str(out), "cells": len(plan), "computed": computed, "skipped": len(plan) - computed,
            "seconds": round(runner.elapsed(), 1), "files": {k: str(v) for k, v in files.items()}}


def check_run_identity(out: Path, settings: ReproduceSettings) -> None:
    """Record the run's identity in `out`, or refuse to resume a different run there."""
    path = out / RUN_FILE
    identity = json.loads(json.dumps(settings.identity(), default=str))
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved != identity:
            changed = sorted(k for k in identity if saved.get(k) != identity[k])
            raise InputError(f"{out} holds a reproduction with other settings ({', '.join(changed)} differ); "
                             "use another --out, or the same settings to resume it")
        return
    write_json(path, identity)


def load_protocol_data(settings: ReproduceSettings, progress: bool = True):
    """Dataset, features and split; under --quick a seeded random subset of each part of the split."""
    from bganhash.datasets.splits import Split
    from bganhash.research.protocol import prepare_protocol

    split = Split.load(settings.split_path) if settings.split_path else None
    data = prepare_protocol(settings.dataset, settings.data, features_path=settings.features_path,
                            feature_config=settings.feature_config, seed=settings.seed, split=split,
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
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

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


def save_cell(out: Path, cell: Cell, result: dict[str, Any], seconds: float, concurrent_cells: int = 1) -> float:
    """Write one cell's result file (atomically), with how many cells ran beside it and on how many
    threads (its times depend on both); returns `seconds` for the caller's bookkeeping."""
    import torch

    write_json(cell_path(out, cell.id), {"id": cell.id, "kind": cell.kind, "label": cell.label,
                                         "params": cell.params, "seconds": seconds, **result,
                                         "concurrent_cells": concurrent_cells, "threads": torch.get_num_threads()})
    return seconds


_WORKER: dict[str, Any] = {}  # a worker process's settings, data and output folder


def _start_worker(settings: ReproduceSettings, out: str, threads: int, jobs: int) -> None:
    """Limit the worker's threads, then load the protocol data once (features come from the cache)."""
    import os

    import torch
    from threadpoolctl import threadpool_limits

    from bganhash._system import THREADS_VARIABLE

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


def cell_path(out: Path, cell_id: str) -> Path:
    return out / "cells" / f"{cell_id}.json"


def gallery_positions(n_query: int, seed: int) -> np.ndarray:
    """Positions (in the split's query list) of the gallery's queries: a seeded dozen."""
    count = min(GALLERY_QUERIES, n_query)
    return np.sort(np.random.default_rng(seed).choice(n_query, count, replace=False))


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# ---- computing one cell ------------------------------------------------------------------------------


def compute_cell(cell: Cell, settings: ReproduceSettings, data, gallery: np.ndarray, out: Path,
                 progress: bool = True) -> dict[str, Any]:
    """The result document of one cell (its numbers only; the runner adds id, params and seconds)."""
    if cell.kind == "baseline":
        return _baseline_cell(cell.params, settings, data, gallery)
    if cell.kind == "bgan":
        return _bgan_result(cell, settings, data, gallery, out, progress)
    if cell.kind == "convergence":
        return _convergence_cell(cell.params, settings, data, progress)
    if cell.kind == "figure2":
        return _figure2_cell(settings, data)
    return _timing_cell(settings, data)


def _baseline_cell(params: dict, settings: ReproduceSettings, data, gallery: np.ndarray) -> dict[str, Any]:
    from bganhash.registry import create_hasher

    hasher = create_hasher(params["method"], params["bits"], random_state=settings.seed)
    started = time.perf_counter()
    hasher.fit(data.part("train")[0])
    fit_seconds = time.perf_counter() - started
    measures = _codes_and_measures(lambda idx: hasher.encode(data.features[idx]), data, gallery)
    return {"fit_seconds": fit_seconds, **measures}


def _bgan_result(cell: Cell, settings: ReproduceSettings, data, gallery: np.ndarray, out: Path,
                 progress: bool = True) -> dict[str, Any]:
    """Train one BGAN variant (resumable at beta-stage granularity), then measure its codes."""
    from bganhash.research.protocol import fit_bgan

    params = cell.params
    hasher = _bgan_hasher(settings, params["bits"], params["overrides"])
    checkpoints = out / "checkpoints" / cell.id
    started = time.perf_counter()
    fit_bgan(hasher, data, checkpoint_dir=checkpoints, resume=True, progress=progress, image_size=_image_side(data))
    fit_seconds = time.perf_counter() - started
    measures = _codes_and_measures(lambda idx: encode_rows(hasher, data, idx), data, gallery)
    shutil.rmtree(checkpoints, ignore_errors=True)
    with contextlib.suppress(OSError):
        checkpoints.parent.rmdir()  # only when no other cell's checkpoints remain
    return {"fit_seconds": fit_seconds, "config": hasher.config_, "history": hasher.history_, **measures,
            "reconstructions": reconstructions(hasher, data, settings.seed)}


def _image_side(data) -> int | None:
    """None where the dataset's images share one size (CIFAR-10, digits), else MIXED_SIZE_SIDE."""
    return None if data.dataset.name in ("cifar10", "digits") else MIXED_SIZE_SIDE


def encode_rows(hasher, data, indices: np.ndarray) -> np.ndarray:
    """Codes of dataset rows: from features for a head encoder, from pixels for a pixel encoder."""
    if hasher.networks_.encodes_pixels:
        return hasher.encode(data.dataset.to_array(indices, size=hasher.image_size_))
    return hasher.encode(data.features[indices])


def _codes_and_measures(encode: Callable[[np.ndarray], np.ndarray], data, gallery: np.ndarray) -> dict[str, Any]:
    """Encode queries and database, then mAP@all, distinct codes, curves and the gallery's top lists."""
    from bganhash.metrics import hamming_ranking, mean_average_precision, precision_at_k_curve, precision_recall_curve

    split = data.split
    query_codes = encode(split.query)
    started = time.perf_counter()
    database_codes = encode(split.database)
    encode_seconds = time.perf_counter() - started
    query_labels, database_labels = data.labels[split.query], data.labels[split.database]
    ks = [k for k in K_GRID if k <= len(split.database)]
    precision, recall = precision_recall_curve(query_codes, database_codes, query_labels, database_labels)
    _, top = hamming_ranking(query_codes[gallery], database_codes, top_k=min(GALLERY_TOP, len(split.database)))
    return {
        "map": mean_average_precision(query_codes, database_codes, query_labels, database_labels),
        "distinct_codes": int(np.unique(database_codes, axis=0).shape[0]),
        "n_database": int(len(split.database)),
        "encode_ms_per_image": 1000.0 * encode_seconds / max(1, len(split.database)),
        "curves": {"ks": ks, "precision_at_k": precision_at_k_curve(query_codes, database_codes, query_labels,
                                                                    database_labels, ks).tolist(),
                   "precision": precision.tolist(), "recall": recall.tolist()},
        "gallery": {"queries": split.query[gallery].tolist(), "top": split.database[top].tolist()},
    }


def reconstructions(hasher, data, seed: int) -> dict[str, Any] | None:
    """Figure 6's rows: query images, their reconstructions from their binary codes, and images
    generated from random codes (None when the variant has no generator)."""
    import torch

    generator = hasher.networks_.generator
    if generator is None:
        return None
    indices = data.split.query[gallery_positions(len(data.split.query), seed)[:N_RECONSTRUCTIONS]]
    random_codes = np.random.default_rng(seed).choice([-1, 1], size=(len(indices), hasher.n_bits))
    device = next(generator.parameters()).device
    generator.eval()
    with torch.no_grad():
        rows = {name: generator(torch.as_tensor(codes, dtype=torch.float32, device=device))
                for name, codes in (("reconstructed", encode_rows(hasher, data, indices)), ("random", random_codes))}
    images = {name: (x.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())
              for name, x in rows.items()}
    images["inputs"] = data.dataset.to_array(indices, size=hasher.image_size_)
    return {name: encode_array(array) for name, array in images.items()}


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """A uint8 array as JSON: its shape and its bytes in base64."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return {"shape": list(array.shape), "uint8_base64": base64.b64encode(array.tobytes()).decode("ascii")}


def decode_array(document: dict[str, Any]) -> np.ndarray:
    raw = base64.b64decode(document["uint8_base64"])
    return np.frombuffer(raw, dtype=np.uint8).reshape(document["shape"])


def _convergence_cell(params: dict, settings: ReproduceSettings, data, progress: bool = True) -> dict[str, Any]:
    """Figure 5: train the full model on the training images less a validation set carved from them,
    logging the losses and the validation mAP every epoch (the test queries are never seen)."""
    from bganhash.datasets.splits import validation_split
    from bganhash.research.protocol import fit_bgan

    validation = replace(data, split=validation_split(data.split, seed=settings.seed))
    hasher = _bgan_hasher(settings, params["bits"], params["overrides"])
    # BGANHasher scores validation codes from features, so pixel encoders log losses only
    on_features = params["config"]["network"]["encoder"] == "head"
    fit_bgan(hasher, validation, progress=progress, image_size=_image_side(data),
             validation=(*validation.part("query"), *validation.part("database")) if on_features else None)
    return {"history": hasher.history_, "n_validation_queries": int(len(validation.split.query)),
            "n_validation_database": int(len(validation.split.database))}


def _figure2_cell(settings: ReproduceSettings, data) -> dict[str, Any]:
    """Figure 2 on the training images' features, transformed as BGAN's K-NN sees them."""
    from bganhash.bgan.estimator import fit_input_transform
    from bganhash.neighborhood.algorithm import knn_label_precision_curve

    config = _bgan_hasher(settings, FIGURE_BITS, settings.bgan_overrides(FULL_MODEL)).resolved_config()
    features, labels = data.part("train")
    inputs, _ = fit_input_transform(features, config.neighborhood.feature_transform)
    k1_values = [k for k in FIGURE2_K1 if k < len(labels)]
    curve = knn_label_precision_curve(inputs, labels, k1_values, k2=min(config.neighborhood.k2, len(labels)))
    return {"curve": curve, "feature_transform": config.neighborhood.feature_transform}


def _timing_cell(settings: ReproduceSettings, data) -> dict[str, Any]:
    """Per-image backbone time on the query images (features are part of encoding a new image)."""
    if settings.features_path is not None:
        return {"backbone_ms_per_image": None, "note": "precomputed features: no backbone was run"}
    from bganhash.features.backbones import create_backbone
    from bganhash.features.config import FeatureConfig
    from bganhash.features.extract import compute_features

    config = settings.feature_config or FeatureConfig()
    subset = data.dataset.subset(data.split.query[:TIMING_IMAGES])
    backbone = create_backbone(config.backbone)
    compute_features(subset.subset(np.arange(min(4, len(subset)))), backbone, config, progress=False)  # warm-up
    started = time.perf_counter()
    compute_features(subset, backbone, config, progress=False)
    seconds = time.perf_counter() - started
    return {"backbone_ms_per_image": 1000.0 * seconds / len(subset), "n_images": len(subset),
            "backbone": config.backbone, "image_size": config.image_size}


def write_report(out: Path, settings: ReproduceSettings, data, requested: dict[str, list[int]]) -> dict[str, Path]:
    """Assemble the report (report.md, report.html, the JSON files, the figures) from the cells under `out`."""
    from bganhash.research.report import write_report as assemble

    return assemble(out, settings, data, requested)
