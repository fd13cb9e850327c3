"""What the benchmark scripts share: where results go, the command line, timing, machine facts, memory.
They run as `python benchmarks/bench_x.py`, which puts this folder on sys.path: `from _common import ...`."""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bganhash._io import write_json
from bganhash._system import usable_cpus

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
CIFAR10_ZIP = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpg.zip"
FEATURE_CACHE = Path.home() / ".cache" / "bganhash" / "features"


def results_path(name: str) -> Path:
    """benchmarks/results/NAME.json: a benchmark's default results file."""
    return RESULTS_DIR / f"{name}.json"


def make_parser(doc: str, default_output: Path, flag: str = "--output", full_doc: bool = False):
    """The script's argparse parser, described by its docstring's first line (all of it with `full_doc`),
    with the results-file option `flag` (default `default_output`) already added."""
    if full_doc:
        made = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    else:
        made = argparse.ArgumentParser(description=doc.splitlines()[0])
    shown = default_output.relative_to(REPO_ROOT) if default_output.is_relative_to(REPO_ROOT) else default_output
    made.add_argument(flag, type=Path, default=default_output, help=f"results JSON (default: {shown})")
    return made


class Timing(NamedTuple):
    seconds: float  # wall time of the fastest call
    cpu_seconds: float  # CPU time of that call, all threads together
    result: Any  # what the last call returned


def timed(function: Callable, *args: Any, repeats: int = 1, **kwargs: Any) -> Timing:
    """Call function(*args, **kwargs) `repeats` times (at least once); the machine is shared: the fastest counts."""
    best = None
    for _ in range(max(1, repeats)):
        cpu, wall = time.process_time(), time.perf_counter()  # in this order: the wall time leaves out the CPU clock
        result = function(*args, **kwargs)
        call = (time.perf_counter() - wall, time.process_time() - cpu)
        best = call if best is None or call[0] < best[0] else best
    return Timing(*best, result)


def machine() -> dict[str, Any]:
    """Facts about this machine and the libraries loaded, for a results file."""
    cpu = next((line.split(":", 1)[1].strip() for line in _proc_lines("cpuinfo") if line.startswith("model name")),
               platform.processor())
    facts = {"platform": platform.platform(), "arch": platform.machine(), "cpu": cpu, "cpus": os.cpu_count(),
             "usable_cpus": usable_cpus(), "python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "faiss"):
        if name in sys.modules:
            facts[name] = getattr(sys.modules[name], "__version__", "unknown")
    if "torch" in sys.modules:
        facts["torch_threads"] = sys.modules["torch"].get_num_threads()
    facts["load_average"] = list(os.getloadavg())
    return facts


def command_line() -> str:
    """The command that ran this script, as typed from the repository root."""
    return shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def write_results(path: Path, document: dict[str, Any]) -> None:
    """Write the results JSON, with the machine, the date and the command line added, and say where."""
    write_json(path, {**document, "machine": machine(), "date": time.strftime("%Y-%m-%d"), "command": command_line()})
    print(f"wrote {path}", flush=True)


def rss_mb(field: str = "VmHWM") -> float:
    """This process's resident memory now ("VmRSS") or its high-water mark ("VmHWM"), in MiB. Unlike ru_maxrss
    (the fallback off Linux), the high-water mark leaves out what a fork-and-exec inherits from the parent."""
    for line in _proc_lines("self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return ru_maxrss_mb()


def peak_rss_mb() -> float:
    return rss_mb("VmHWM")


def ru_maxrss_mb() -> float:
    """ru_maxrss of this process, in MiB (Linux counts it in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _proc_lines(name: str) -> list[str]:
    try:
        return Path("/proc", name).read_text().splitlines()
    except OSError:  # not on Linux
        return []
