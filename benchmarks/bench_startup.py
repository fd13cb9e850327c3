"""Start-up cost: `import bganhash` (python -X importtime) and `bganhash --help` / `bganhash index --help`.

    python benchmarks/bench_startup.py                          # this checkout
    python benchmarks/bench_startup.py --before /tmp/old/src    # and another checkout's src/, alternating

Each source tree is put first on PYTHONPATH of fresh interpreters; the figures are medians of --repeats runs,
the trees alternating so that both see the same machine load.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO_ROOT, make_parser, results_path, write_results


def run(src: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, check=True)


def import_ms(src: Path) -> float:
    """Cumulative import time of the bganhash package, from python -X importtime (microseconds -> ms)."""
    lines = run(src, "-X", "importtime", "-c", "import bganhash").stderr.splitlines()
    return int(next(line for line in lines if line.rstrip().endswith("| bganhash")).split("|")[1]) / 1000


def wall_s(src: Path, *args: str) -> float:
    started = time.perf_counter()
    run(src, "-m", "bganhash", *args)
    return time.perf_counter() - started


def measure(src: Path) -> dict:
    loads_torch = run(src, "-c", "import sys, bganhash; print('torch' in sys.modules)").stdout.strip() == "True"
    return {"import_ms": import_ms(src), "help_s": wall_s(src, "--help"),
            "index_help_s": wall_s(src, "index", "--help"), "import_loads_torch": loads_torch}


def main() -> None:
    parser = make_parser(__doc__, results_path("startup"))
    parser.add_argument("--before", type=Path, default=None, help="src/ folder of another checkout to compare")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    trees = {"this": REPO_ROOT / "src", **({"before": args.before} if args.before else {})}
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.repeats):
        for name, src in trees.items():
            runs[name].append(measure(src))
    document = {}
    for name, measured in runs.items():
        document[name] = {key: statistics.median(r[key] for r in measured) for key in ("import_ms", "help_s",
                                                                                       "index_help_s")}
        document[name]["import_loads_torch"] = measured[0]["import_loads_torch"]
        document[name]["src"] = str(trees[name])
        print(name, document[name])
    write_results(args.output, document)


if __name__ == "__main__":
    main()
