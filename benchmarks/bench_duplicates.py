"""Precision and recall of `bganhash duplicates` on copies of CIFAR-10 training images, by threshold.

A folder of N CIFAR-10 training images plus copies of M of them, M/5 of each kind: an identical file
("exact"), a JPEG re-encode at quality 50 ("reencode"), a resize to 3/4 of the side ("resize", JPEG quality
90), a crop keeping 90% of each side at a random offset ("crop", quality 90), and all three ("combined").
The originals are CIFAR's own 32 x 32 JPEG files (scale 1, where a quality-50 re-encode is a heavy change), or
those images enlarged 4 times to 128 x 128 and saved at quality 90 (scale 4: copies change a photo about as
much as they change a real one, relative to its size). The folder is indexed as `bganhash index` does
(default features: EfficientNet-Lite0 at 224 px; the hashers below, 64 bits), then the groups of
`find_duplicates` are scored for each threshold against the truth (each original with its copy):

  pair precision  of the image pairs that share a predicted group, the fraction that are an original and its copy
  pair recall     of the original-copy pairs, the fraction that share a predicted group
  found by kind   the fraction of the copies of each kind grouped with their original

Distinct CIFAR-10 images that really are near-identical (the training set has a few) count as false matches.

    python benchmarks/bench_duplicates.py --originals 1500 --copies 500
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from _common import CIFAR10_ZIP, make_parser, results_path, write_results
from bganhash.collection import BuildConfig, Collection, build_collection
from bganhash.collection.duplicates import (
    DEFAULT_CANDIDATES,
    DEFAULT_THRESHOLD,
    find_duplicates,
    identical_features,
    identical_files,
    near_pairs,
    pair_groups,
)

FIXED_MTIME = 1_700_000_000
KINDS = ("exact", "reencode", "resize", "crop", "combined")
THRESHOLDS = (0.50, 0.60, 0.70, 0.75, 0.80, 0.825, 0.85, 0.875, 0.90, 0.95)


def jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def make_copy(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """The JPEG file of one copy of the JPEG `data`."""
    if kind == "exact":
        return data
    image = Image.open(io.BytesIO(data)).convert("RGB")
    side = image.size[0]
    if kind in ("crop", "combined"):
        kept = round(side * 0.9)
        left, top = (int(v) for v in rng.integers(0, side - kept + 1, 2))
        image = image.crop((left, top, left + kept, top + kept))
    if kind in ("resize", "combined"):
        image = image.resize((round(image.size[0] * 0.75),) * 2, Image.Resampling.LANCZOS)
    return jpeg(image, 50 if kind in ("reencode", "combined") else 90)


def write_file(path: Path, data: bytes) -> None:
    """Write a file with a fixed modification time: the folder's feature cache key is the same at every run."""
    path.write_bytes(data)
    os.utime(path, (FIXED_MTIME, FIXED_MTIME))


def write_folder(folder: Path, zip_path: Path, n_originals: int, n_copies: int, seed: int,
                 scale: int) -> dict[str, tuple]:
    """Write the originals and the copies; returns {copy path: (original path, kind)}."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(zip_path) as archive:
        members = sorted(m for m in archive.namelist() if m.startswith("train/") and m.endswith(".jpg"))
        picked = [members[i] for i in rng.choice(len(members), n_originals, replace=False)]
        truth = {}
        for position, member in enumerate(picked):
            data = archive.read(member)
            if scale != 1:
                picture = Image.open(io.BytesIO(data)).convert("RGB")
                data = jpeg(picture.resize((32 * scale,) * 2, Image.Resampling.BICUBIC), 90)
            original = f"originals/{position:05d}.jpg"
            (folder / original).parent.mkdir(parents=True, exist_ok=True)
            write_file(folder / original, data)
            if position < n_copies:
                kind = KINDS[position % len(KINDS)]
                copy_data = make_copy(data, kind, rng)
                copy = f"copies/{kind}/{position:05d}.jpg"
                (folder / copy).parent.mkdir(parents=True, exist_ok=True)
                write_file(folder / copy, copy_data)
                truth[copy] = (original, kind)
    return truth


def score(groups: list[list[int]], paths: list[str], truth: dict[str, tuple]) -> dict:
    """Pair precision and recall of row `groups`, and the fraction of each kind's copies found."""
    source = {path: truth[path][0] if path in truth else path for path in paths}
    group_of = {paths[row]: number for number, rows in enumerate(groups) for row in rows}
    predicted_pairs = sum(len(rows) * (len(rows) - 1) // 2 for rows in groups)
    correct_pairs = 0
    for rows in groups:
        sources = [source[paths[row]] for row in rows]
        _, counts = np.unique(sources, return_counts=True)
        correct_pairs += int((counts * (counts - 1) // 2).sum())
    found = {kind: [] for kind in KINDS}
    for copy, (original, kind) in truth.items():
        found[kind].append(copy in group_of and group_of[copy] == group_of.get(original))
    recall = sum(sum(values) for values in found.values()) / max(1, len(truth))
    return {"groups": len(groups), "predicted_pairs": predicted_pairs, "correct_pairs": correct_pairs,
            "precision": round(correct_pairs / predicted_pairs, 4) if predicted_pairs else 1.0,
            "recall": round(recall, 4),
            "found_by_kind": {kind: round(float(np.mean(values)), 4) for kind, values in found.items() if values}}


def evaluate(collection: Collection, truth: dict[str, tuple], candidates: list[int]) -> dict:
    paths = collection.paths
    exact = identical_files(collection)[0] + identical_features(collection)
    a, b, similarity, _ = near_pairs(collection, min_similarity=min(THRESHOLDS), candidates=max(candidates))
    by_threshold = []
    for threshold in THRESHOLDS:
        keep = similarity >= threshold
        by_threshold.append({"threshold": threshold,
                             **score(pair_groups(len(collection), a[keep], b[keep], exact), paths, truth)})
    by_candidates = []
    for count in candidates:
        started = time.perf_counter()
        report = find_duplicates(collection, threshold=DEFAULT_THRESHOLD, candidates=count)
        seconds = time.perf_counter() - started
        rows_of = {path: row for row, path in enumerate(paths)}
        groups = [[rows_of[path] for path in group.paths] for group in report.groups]
        by_candidates.append({"candidates": count, "seconds": round(seconds, 3), **score(groups, paths, truth)})
    return {"by_threshold": by_threshold, "by_candidates": by_candidates}


def report_run(name: str, result: dict) -> None:
    default = next(row for row in result["by_threshold"] if row["threshold"] == DEFAULT_THRESHOLD)
    print(f"{name}: at {DEFAULT_THRESHOLD} precision {default['precision']:.3f} recall {default['recall']:.3f} "
          f"{default['found_by_kind']}", flush=True)
    for row in result["by_threshold"]:
        print(f"  {row['threshold']:<5g}  precision {row['precision']:.3f}  recall {row['recall']:.3f}  "
              f"{row['found_by_kind']}", flush=True)
    for row in result["by_candidates"]:
        print(f"  candidates {row['candidates']}: precision {row['precision']:.3f} recall {row['recall']:.3f} "
              f"({row['seconds']:.2f} s)", flush=True)


def main() -> None:
    parser = make_parser(__doc__, results_path("duplicates"))
    parser.add_argument("--data", type=Path, default=CIFAR10_ZIP)
    parser.add_argument("--originals", type=int, default=1500)
    parser.add_argument("--copies", type=int, default=500)
    parser.add_argument("--methods", nargs="+", default=["itq", "bgan"])
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--candidates", type=int, nargs="+", default=[5, 20, DEFAULT_CANDIDATES, 200])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bganhash-bench-duplicates")
    args = parser.parse_args()

    shutil.rmtree(args.workdir, ignore_errors=True)
    runs = []
    for scale in args.scales:
        folder = args.workdir / f"photos-x{scale}"
        folder.mkdir(parents=True)
        truth = write_folder(folder, args.data, args.originals, args.copies, args.seed, scale)
        print(f"{args.originals} originals ({32 * scale} px) and {len(truth)} copies in {folder}", flush=True)
        for method in args.methods:
            out = args.workdir / f"{method}-x{scale}.index"
            started = time.perf_counter()
            summary = build_collection(folder, out, config=BuildConfig(method=method, n_bits=args.bits))
            build_seconds = time.perf_counter() - started
            with Collection.load(out) as collection:
                result = evaluate(collection, truth, args.candidates)
            runs.append({"scale": scale, "original_side": 32 * scale, "method": method, "bits": args.bits,
                         "n_images": summary.n_images, "distinct_codes": summary.distinct_codes,
                         "build_s": round(build_seconds, 1), **result})
            report_run(f"x{scale} {method}", result)
    write_results(args.output, {"benchmark": "duplicates", "originals": args.originals, "copies": args.copies,
                                "kinds": list(KINDS), "default_threshold": DEFAULT_THRESHOLD,
                                "default_candidates": DEFAULT_CANDIDATES, "runs": runs})
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
