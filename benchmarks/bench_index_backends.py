"""Index backends on a million learned 64-bit codes: build time, queries/s, latency, recall@10, bytes, memory.

Usage:
    bganhash train --dataset cifar10 --data ../shared/data/cifar10-jpg.zip --bits 64 --out runs/bgan64
    bganhash encode runs/bgan64/64bit/model FEATURES.npy --out runs/bgan64/codes.npy   # all 60,000 images
    python benchmarks/bench_index_backends.py --codes runs/bgan64/codes.npy [--n 1000000] [--flip 0.05]
    python benchmarks/bench_index_backends.py --n 50000             # smoke run on synthetic clustered codes

The database is N codes made from the learned ones (the "base" codes): each is a copy of a base code with
every bit flipped independently with probability --flip. The 1,000 queries are fresh noisy copies made the
same way: they are not items of the database. Every backend indexes the same codes under the same int64 ids
and answers the same queries with k = 10:

- faiss's IndexBinaryFlat used directly, and our exact "flat" (faiss engine, and the numpy engine), timed
  in turn (batch, batch, batch, ..., then query by query) so that the comparison shares the machine's moods;
- "ivf:1024" and "ivf:4096" (binary inverted lists) with an nprobe sweep, "hnsw:32" with an efSearch sweep,
  and "mih:4" (multi-index hashing) with an nflip sweep.

For each it reports the build time, queries/s for one batch of 1,000 queries and for single queries (with
their median latency), recall@10 against the exact search (the share of the exact ids found, ties at the
10th distance broken by insertion order; and the share of results no farther than the exact 10th distance,
which counts any of several equally near codes as right), the saved index file's bytes per code, and the
peak RSS (ru_maxrss) of a fresh process that loads the codes, builds the index and saves it.
Writes benchmarks/results/index_backends.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from _common import CIFAR10_ZIP, make_parser, peak_rss_mb, results_path, rss_mb, ru_maxrss_mb, timed, write_results
from bganhash._io import write_json
from bganhash._system import usable_cpus
from bganhash.index import Index

K = 10
CHUNK = 100_000


# ---------------------------------------------------------------------------------------------- the codes


def load_base_codes(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    """Packed base codes (m, 8) and a sentence saying where they come from."""
    from bganhash.codes import pack_codes

    if args.codes is not None:
        codes = np.load(args.codes)
        packed = codes if codes.dtype == np.uint8 else pack_codes(codes)
        return packed, args.codes_source or f"learned codes from {args.codes}"
    if args.features is not None:
        from bganhash.features.cache import load_features
        from bganhash.hashers import ITQ

        features = load_features(args.features)
        itq = ITQ(args.bits, random_state=args.seed).fit(features)
        return pack_codes(itq.encode(features)), f"ITQ {args.bits}-bit codes of {args.features} (fallback)"
    rng = np.random.default_rng(args.seed + 1)
    centers = np.where(rng.random((10, args.bits)) < 0.5, -1, 1)
    picked = centers[rng.integers(0, 10, size=60_000)]
    codes = np.where(rng.random(picked.shape) < 0.2, -picked, picked)
    return pack_codes(codes), "synthetic clustered codes (10 centres, 20% bit noise): a smoke run, not learned codes"


def noisy_copies(rng: np.random.Generator, base: np.ndarray, picks: np.ndarray, flip: float) -> np.ndarray:
    """base[picks] with every bit flipped with probability `flip` (made in chunks to bound memory)."""
    n_bits = base.shape[1] * 8
    out = np.empty((picks.size, base.shape[1]), np.uint8)
    for start in range(0, picks.size, CHUNK):
        stop = min(start + CHUNK, picks.size)
        out[start:stop] = base[picks[start:stop]] ^ np.packbits(rng.random((stop - start, n_bits)) < flip, axis=1)
    return out


def make_problem(base: np.ndarray, n: int, n_queries: int, flip: float, seed: int):
    """(database (n, 8), ids, queries (n_queries, 8)): noisy copies of the base codes."""
    rng = np.random.default_rng(seed)
    database = noisy_copies(rng, base, rng.permutation(np.arange(n) % base.shape[0]), flip)
    queries = noisy_copies(rng, base, rng.integers(0, base.shape[0], size=n_queries), flip)
    ids = rng.permutation(n).astype(np.int64) * 3 + 7  # not positions: the id map is exercised
    return database, ids, queries


# ---------------------------------------------------------------------------------------------- measuring


def batch_seconds(search, queries: np.ndarray, repeats: int) -> tuple[float, tuple]:
    """Best wall time of `search(queries, K)` over `repeats` runs (at least one, more while under 2 s)."""
    best, _, result = timed(search, queries, K)
    for _ in range(repeats - 1):
        if best > 2.0:
            break
        seconds, _, result = timed(search, queries, K)
        best = min(best, seconds)
    return best, result


def single_latencies(search, queries: np.ndarray, count: int) -> list[float]:
    """Seconds of `count` one-query searches, one after the other."""
    latencies = []
    for row in range(min(count, queries.shape[0])):
        latencies.append(timed(search, queries[row : row + 1], K).seconds)
    return latencies


def recalls(found: tuple, exact: tuple) -> tuple[float, float]:
    """(share of the exact ids found, share of results no farther than the exact K-th distance)."""
    (distances, ids), (exact_distances, exact_ids) = found, exact
    hits = [np.intersect1d(a, b).size for a, b in zip(ids, exact_ids)]
    return float(np.sum(hits) / exact_ids.size), float(np.mean(distances <= exact_distances[:, -1:]))


def interleaved(searchers: dict, queries: np.ndarray, repeats: int, count: int) -> dict:
    """Best batch seconds, single-query latencies and results of several searchers, timed in turn (A, B, C,
    A, B, C, ...) so that a slow moment of a shared machine does not fall on one of them only."""
    timings = {name: {"batch": [], "single": []} for name in searchers}
    for _ in range(repeats):
        for name, search in searchers.items():
            seconds, _, timings[name]["result"] = timed(search, queries, K)
            timings[name]["batch"].append(seconds)
    for row in range(min(count, queries.shape[0])):
        for name, search in searchers.items():
            timings[name]["single"].append(timed(search, queries[row : row + 1], K).seconds)
    return timings


def measure(name: str, spec: str | None, search, queries, exact, build_s, args, timing: dict | None = None,
            **extra) -> dict:
    """One table row: `search` timed here, or the `timing` that `interleaved` took."""
    if timing is None:
        batch_s, result = batch_seconds(search, queries, args.repeats)
        latencies = single_latencies(search, queries, args.single)
    else:
        batch_s, result, latencies = min(timing["batch"]), timing["result"], timing["single"]
    id_recall, distance_recall = recalls(result, exact) if exact is not None else (1.0, 1.0)
    row = {"name": name, "backend": spec, **extra, "build_s": build_s, "batch_s": batch_s,
           "batch_qps": queries.shape[0] / batch_s, "single_median_ms": 1000 * statistics.median(latencies),
           "single_p90_ms": 1000 * float(np.percentile(latencies, 90)), "single_qps": len(latencies) / sum(latencies),
           "recall_at_10": id_recall, "distance_recall_at_10": distance_recall}
    print(f"  {name:<28} batch {row['batch_qps']:>10,.0f} q/s  single {row['single_median_ms']:7.3f} ms  "
          f"recall@10 {id_recall:.3f} / {distance_recall:.3f}", flush=True)
    return row, result


def tie_statistics(database: np.ndarray, queries: np.ndarray, exact_distances: np.ndarray, count: int = 200) -> dict:
    """How crowded the K-th place is, over the first `count` queries: codes strictly nearer than the exact K-th
    distance, and codes at exactly that distance (the K-th slot and the ones before it that are not taken by
    nearer codes are filled from these, by insertion order)."""
    from bganhash.codes import hamming_distances

    nearer, tied = [], []
    for start in range(0, min(count, queries.shape[0]), 20):
        block = hamming_distances(queries[start : start + 20], database)
        kth = exact_distances[start : start + 20, -1:]
        nearer += (block < kth).sum(axis=1).tolist()
        tied += (block == kth).sum(axis=1).tolist()
    return {"queries": len(tied), "median_kth_distance": float(np.median(exact_distances[: len(tied), -1])),
            "median_nearer": float(np.median(nearer)), "median_tied": float(np.median(tied)),
            "p90_tied": float(np.percentile(tied, 90))}


def file_bytes(index: Index, directory: Path) -> dict:
    path = directory / "index.bgidx"
    index.save(path)
    size = path.stat().st_size
    path.unlink()
    return {"file_bytes": size, "bytes_per_code": size / index.ntotal,
            "structure_bytes_per_code": (size - index.ntotal * (index.n_bytes + 8)) / index.ntotal}


def peak_memory(spec: str, codes_path: Path, ids_path: Path, directory: Path) -> dict:
    """RSS of a fresh process after loading the codes, and its peak (the high-water mark, reset after
    loading) while building and saving the index."""
    command = [sys.executable, __file__, "--peak-child", spec, "--child-codes", str(codes_path),
               "--child-ids", str(ids_path), "--child-out", str(directory / "peak.bgidx")]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def peak_child(spec: str, codes_path: Path, ids_path: Path, out: Path) -> None:
    import faiss  # imported before the baseline, as `bganhash.index.index` was (with torch, by the package)

    codes, ids = np.load(codes_path), np.load(ids_path)
    try:  # reset the high-water mark, so that the peak is the build's, not the imports'
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    baseline = rss_mb("VmRSS")
    started = time.perf_counter()
    if spec == "faiss-direct":
        index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        index.add(codes)
        faiss.write_index_binary(index, str(out))
    else:
        index = Index(codes.shape[1] * 8, spec)
        index.add_packed(codes, ids)
        index.save(out)
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    out.unlink()
    print(json.dumps({"rss_before_build_mb": baseline, "peak_rss_mb": peak, "ru_maxrss_mb": ru_maxrss_mb(),
                      "index_rss_mb": peak - baseline, "build_and_save_s": seconds}))


def collection_bytes_per_image(data: Path) -> dict | None:
    """Per-image bytes of a collection's codes file and items JSON (paths, change stamps, thumbnail refs),
    written as `build_collection` writes them, for the CIFAR-10 zip's own member names."""
    if not data.is_file():
        return None
    import safetensors.numpy

    with zipfile.ZipFile(data) as archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
    offsets = np.cumsum([0] + [info.file_size for info in infos[:-1]]).tolist()
    items = {"paths": [info.filename for info in infos],
             "stamps": [f"{info.file_size}:{info.CRC}" for info in infos],
             "thumbnails": [[0, offset, info.file_size] for offset, info in zip(offsets, infos)],
             "segments": ["thumbs-000001.bin"]}
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "items.json"
        write_json(path, items)
        items_bytes = path.stat().st_size
    n = len(infos)
    codes_bytes = len(safetensors.numpy.save({"codes": np.zeros((n, 8), np.uint8), "ids": np.zeros(n, np.int64)}))
    paths_only = sum(len(json.dumps(p)) + 6 for p in items["paths"])  # the string, quotes, comma, indent
    return {"images": n, "items_json_bytes_per_image": items_bytes / n, "paths_bytes_per_image": paths_only / n,
            "codes_file_bytes_per_image": codes_bytes / n}


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = make_parser(__doc__, results_path("index_backends"))
    parser.add_argument("--codes", type=Path, default=None,
                        help="learned codes (.npy from `bganhash encode`: int8 {-1,+1}, or packed uint8)")
    parser.add_argument("--codes-source", default=None, help="one sentence on where --codes come from")
    parser.add_argument("--features", type=Path, default=None, help="without --codes: ITQ codes of these features")
    parser.add_argument("--n", type=int, default=1_000_000, help="database codes")
    parser.add_argument("--n-queries", type=int, default=1000)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--flip", type=float, default=0.05, help="probability of flipping each bit of a copy")
    parser.add_argument("--hnsw", nargs="+", default=["hnsw:32", "hnsw:32,efc=40", "hnsw:64"],
                        help="HNSW indexes built (efConstruction 200 unless efc= says otherwise; 40 is faiss's)")
    parser.add_argument("--ef", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512],
                        help="efSearch sweep of each HNSW index")
    parser.add_argument("--mih", nargs="+", default=["mih:4", "mih:3"], help="multi-index hashing indexes built")
    parser.add_argument("--nflip", type=int, nargs="+", default=[0, 1, 2], help="nflip sweep of each")
    parser.add_argument("--ivf", nargs="+", default=["ivf:1024", "ivf:4096"], help="binary IVF indexes built")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="nprobe sweep of each")
    parser.add_argument("--repeats", type=int, default=3, help="batch searches timed (best reported)")
    parser.add_argument("--flat-repeats", type=int, default=7,
                        help="batch searches of each exact search, timed in turn (best reported)")
    parser.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--data", type=Path, default=CIFAR10_ZIP, help="CIFAR-10 zip, for the paths' bytes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-codes", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-ids", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_child:
        peak_child(args.peak_child, args.child_codes, args.child_ids, args.child_out)
        return

    import faiss

    base, source = load_base_codes(args)
    if base.shape[1] * 8 != args.bits:
        raise SystemExit(f"the codes have {base.shape[1] * 8} bits, not --bits {args.bits}")
    database, ids, queries = make_problem(base, args.n, args.n_queries, args.flip, args.seed)
    distinct, multiplicity = np.unique(base, axis=0, return_counts=True)
    distinct_base = distinct.shape[0]
    print(f"{args.n:,} database codes = noisy copies (flip {args.flip}) of {base.shape[0]:,} base codes "
          f"({distinct_base:,} distinct): {source}", flush=True)
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)

        # The exact searches, timed in turn: faiss's IndexBinaryFlat used directly (positions, no ids), ours.
        build_s = {}
        build_s["direct"], _, direct = timed(_faiss_flat, faiss, database)
        build_s["flat"], _, flat = timed(_built, "flat", database, ids)
        build_s["numpy"], _, numpy_flat = timed(_built, "flat,engine=numpy", database, ids)
        timing = interleaved({"direct": direct.search, "flat": flat.search_packed, "numpy": numpy_flat.search_packed},
                             queries, args.flat_repeats, args.single)
        exact = timing["flat"]["result"]
        direct_distances, direct_positions = timing["direct"]["result"]
        timing["direct"]["result"] = (direct_distances, ids[direct_positions])
        rows.append(measure("faiss IndexBinaryFlat", None, None, queries, exact, build_s["direct"], args,
                            timing["direct"], faiss_threads=faiss.omp_get_max_threads())[0])
        for key, spec, index in (("flat", "flat", flat), ("numpy", "flat,engine=numpy", numpy_flat)):
            row = measure(f"ours {spec}", spec, None, queries, exact, build_s[key], args, timing[key],
                          engine=index.engine, **file_bytes(index, scratch))[0]
            row["identical_to_faiss_direct"] = all(np.array_equal(a, b) for a, b in zip(timing[key]["result"],
                                                                                       timing["direct"]["result"]))
            rows.append(row)
        print(f"  ours flat and numpy identical to faiss IndexBinaryFlat: "
              f"{rows[1]['identical_to_faiss_direct']}, {rows[2]['identical_to_faiss_direct']}", flush=True)
        del direct, flat, numpy_flat

        for specs, option, values in ((args.ivf, "nprobe", args.nprobe), (args.hnsw, "ef", args.ef),
                                      (args.mih, "nflip", args.nflip)):
            for spec in specs:
                build_s, _, index = timed(_built, spec, database, ids)
                print(f"  built {index.backend} in {build_s:.1f} s", flush=True)
                sizes = file_bytes(index, scratch)
                for value in values:
                    index.set_params(**{option: value})
                    rows.append(measure(f"ours {index.backend}", index.backend, index.search_packed, queries, exact,
                                        build_s, args, engine=index.engine, **sizes)[0])
                del index

        memory = {}
        if not args.no_memory:
            np.save(scratch / "codes.npy", database)
            np.save(scratch / "ids.npy", ids)
            for spec in ("faiss-direct", "flat", "flat,engine=numpy", args.ivf[0], args.hnsw[0], args.mih[0]):
                memory[spec] = peak_memory(spec, scratch / "codes.npy", scratch / "ids.npy", scratch)
                print(f"  peak RSS {spec:<22} {memory[spec]['peak_rss_mb']:8.0f} MB "
                      f"(+{memory[spec]['index_rss_mb']:.0f} MB over the RSS before building)", flush=True)
    load_after = os.getloadavg()[0]

    flat = next(r for r in rows if r["backend"] == "flat")
    direct_row = rows[0]
    targets = {
        "flat_batch_vs_faiss": flat["batch_qps"] / direct_row["batch_qps"],
        "flat_single_vs_faiss": flat["single_qps"] / direct_row["single_qps"],
        "best_sublinear_at_recall_0.95": _best_sublinear(rows, flat, "recall_at_10"),
        "best_sublinear_at_distance_recall_0.95": _best_sublinear(rows, flat, "distance_recall_at_10"),
    }
    document = {
        "benchmark": "Index backends: build, batch and single-query search, recall@10, bytes, peak memory",
        "codes_source": source, "base_codes": int(base.shape[0]), "distinct_base_codes": int(distinct_base),
        "largest_base_code_multiplicity": int(multiplicity.max()),
        "ties": tie_statistics(database, queries, exact[0]),
        "n_database": args.n, "n_queries": args.n_queries, "n_bits": args.bits, "flip": args.flip, "k": K,
        "queries_equal_to_a_database_code": int(np.isin(_as_keys(queries), _as_keys(database)).sum()),
        "rows": rows, "peak_memory": memory, "collection_bytes": collection_bytes_per_image(args.data),
        "targets": targets, "threads": usable_cpus(), "faiss_version": faiss.__version__,
        "load_average_before": load_before, "load_average_after": load_after,
        "tie_rule": "exact results rank ties by insertion order; recall_at_10 compares ids with that ranking",
    }
    print_table(document)
    write_results(args.output, document)


def _faiss_flat(faiss, database: np.ndarray):
    index = faiss.IndexBinaryFlat(database.shape[1] * 8)
    index.add(database)
    return index


def _built(spec: str, database: np.ndarray, ids: np.ndarray) -> Index:
    index = Index(database.shape[1] * 8, spec)
    index.add_packed(database, ids)
    return index


def _as_keys(packed: np.ndarray) -> np.ndarray:
    return packed.view(np.uint64).ravel() if packed.shape[1] == 8 else np.array([r.tobytes() for r in packed])


def _best_sublinear(rows: list[dict], flat: dict, recall: str) -> dict | None:
    """The fastest approximate configuration (batch) with `recall` >= 0.95, and its speed-up over flat."""
    approximate = ("ivf", "hnsw", "mih")
    good = [r for r in rows if r["backend"] and r["backend"].split(":")[0] in approximate and r[recall] >= 0.95]
    if not good:
        return None
    best = max(good, key=lambda r: r["batch_qps"])
    return {"backend": best["backend"], "recall_at_10": best["recall_at_10"],
            "distance_recall_at_10": best["distance_recall_at_10"],
            "batch_speedup": best["batch_qps"] / flat["batch_qps"],
            "single_speedup": best["single_qps"] / flat["single_qps"]}


def print_table(document: dict) -> None:
    print("\n| index | build s | batch q/s | single-query median ms | recall@10 (ids / distance) | bytes/code |")
    print("|---|---|---|---|---|---|")
    for r in document["rows"]:
        size = f"{r['bytes_per_code']:.1f}" if "bytes_per_code" in r else "8 (codes only)"
        print(f"| {r['name']} | {r['build_s']:.2f} | {r['batch_qps']:,.0f} | {r['single_median_ms']:.3f} | "
              f"{r['recall_at_10']:.3f} / {r['distance_recall_at_10']:.3f} | {size} |")
    for spec, memory in document["peak_memory"].items():
        print(f"peak RSS {spec}: {memory['peak_rss_mb']:.0f} MB (+{memory['index_rss_mb']:.0f} MB)")
    print(json.dumps(document["targets"], indent=2))


if __name__ == "__main__":
    main()
