"""The files of a reproduction folder: one result file per cell (`cells/<id>.json`, written atomically as
soon as the cell completes), the run's identity (`run.json`) and the experiments asked for (`requested.json`).

The runner writes them; the report reads only them, so every number of ours in it was produced by a run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bganhash._io import read_json, write_json
from bganhash._validation import InputError
from bganhash.research.plan import SEED_SUFFIX, Cell, ReproduceSettings

RUN_FILE = "run.json"
REQUESTS_FILE = "requested.json"  # experiments and bit lengths asked for by every run into the folder


def cell_path(out: Path, cell_id: str) -> Path:
    return out / "cells" / f"{cell_id}.json"


def save_cell(out: Path, cell: Cell, result: dict[str, Any], seconds: float, concurrent_cells: int = 1) -> float:
    """Write one cell's result file (atomically), with how many cells ran beside it and on how many
    threads (its times depend on both); returns `seconds` for the caller's bookkeeping."""
    import torch

    write_json(cell_path(out, cell.id), {"id": cell.id, "kind": cell.kind, "label": cell.label,
                                         "params": cell.params, "seconds": seconds, **result,
                                         "concurrent_cells": concurrent_cells, "threads": torch.get_num_threads()})
    return seconds


def load_cells(out: Path, plan: list[Cell]) -> dict[str, tuple[Cell, dict]]:
    """The completed cells of `plan` (those with a result file), by id."""
    found = {}
    for cell in plan:
        path = cell_path(out, cell.id)
        if path.is_file():
            found[cell.id] = (cell, read_json(path, f"the result of cell {cell.id}"))
    return found


def record_request(out: Path, plan: list[Cell]) -> dict[str, list[int]]:
    """Add the experiments and bit lengths of `plan` to `out`'s record of them; return the union."""
    path = out / REQUESTS_FILE
    requested = read_json(path, "the record of the experiments asked for") if path.is_file() else {}
    for cell in plan:
        for experiment, _, bits in cell.roles:  # bits 0: a cell with no bit length (timing, Figure 2)
            requested[experiment] = sorted(set(requested.get(experiment, [])) | ({bits} if bits else set()))
    write_json(path, requested)
    return requested


def check_run_identity(out: Path, settings: ReproduceSettings) -> None:
    """Record the run's identity in `out`, or refuse to resume a different run there."""
    path = out / RUN_FILE
    identity = json.loads(json.dumps(settings.identity(), default=str))
    if path.is_file():
        saved = read_json(path, "a reproduction's settings")
        if saved != identity:
            changed = sorted(k for k in identity if saved.get(k) != identity[k])
            raise InputError(f"{out} holds a reproduction with other settings ({', '.join(changed)} differ); "
                             "use another --out, or the same settings to resume it")
        return
    write_json(path, identity)


def by_role(cells: dict[str, tuple[Cell, dict]]) -> dict[tuple[str, str, int], dict]:
    """Cell results indexed by the (experiment, row, bits) table places they fill."""
    return {role: result for cell, result in cells.values() for role in cell.roles}


def fold_seeds(results: dict[tuple[str, str, int], dict]) -> dict[tuple[str, str, int], dict]:
    """Results by role with each headline row's further-seed runs folded into its first run's result,
    as `per_seed` (every seed's mAPs) and `seeds_summary` (mean and sample standard deviation)."""
    folded = {role: result for role, result in results.items() if SEED_SUFFIX not in role[1]}
    further: dict[tuple[str, str, int], list[dict]] = {}
    for (experiment, row, bits), result in results.items():
        if SEED_SUFFIX in row:
            further.setdefault((experiment, row.partition(SEED_SUFFIX)[0], bits), []).append(result)
    for role, runs in further.items():
        if role in folded:  # a further seed is reported once its first seed's run is there
            per_seed = sorted((_seed_entry(r) for r in [folded[role], *runs]), key=lambda entry: entry["seed"])
            folded[role] = {**folded[role], "per_seed": per_seed, "seeds_summary": _summary(per_seed)}
    return folded


def _seed_entry(result: dict) -> dict[str, Any]:
    return {"seed": result["config"]["train"]["seed"], "map": result["map"], "map_at_1000": result.get("map_at_1000"),
            "distinct_codes": result["distinct_codes"]}


def _summary(per_seed: list[dict]) -> dict[str, Any]:
    summary: dict[str, Any] = {"n_seeds": len(per_seed)}
    for key in ("map", "map_at_1000"):
        values = np.array([entry[key] for entry in per_seed if entry[key] is not None], dtype=np.float64)
        if len(values):
            summary[f"{key}_mean"] = float(values.mean())
            summary[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary


def seed_value(result: dict | None, key: str = "map") -> float | None:
    """A row's number: the mean over its seeds where it ran under several, else its one run's."""
    if result is None:
        return None
    summary = result.get("seeds_summary")
    return summary.get(f"{key}_mean") if summary else result.get(key)


def bits_done(results: dict[tuple[str, str, int], dict], experiment: str) -> list[int]:
    """The bit lengths at which some cell of `experiment` has a result (0 for cells without one)."""
    return sorted({bits for (name, _, bits) in results if name == experiment})
