"""Images to features end to end, the eager PyTorch path against the runtime path, in the same run.

Usage: python benchmarks/bench_runtime.py [--data ../shared/data/cifar10-jpg.zip] [--images 1024] [--photos 32]
       [--rounds 3] [--workdir /tmp/bganhash-runtime-bench]

1. Writes --images CIFAR-10 training JPEGs as files into WORKDIR/cifar (and --photos 12-megapixel JPEGs,
   4000x3000, made by upscaling CIFAR images and adding grain, into WORKDIR/photos).
2. Extracts features of each folder, from files to features at 224 px, by
   - eager: what bganhash did before the runtime: one thread decodes each image in full, torch resizes the
     batch (antialiased bilinear), and the EfficientNet-Lite0 module runs in eager PyTorch (channels_last);
   - runtime: `compute_features` as it is now, with the default FeatureConfig (precision "auto": bf16 where
     the CPU computes it natively): worker threads decode at reduced size and resize while the runtime
     (--runtime, default auto: OpenVINO) infers the previous batch;
   - openvino-fp32, openvino-bf16 and openvino-int8: the same on OpenVINO, where it is installed.
   The paths alternate over --rounds rounds; the best round of each counts (the machine is shared).
3. Reports images/s, the runtime/eager ratio, the decode time of one 12-MP photo (full and at reduced size)
   and the agreement of the features (cosine per image) with the eager path.
Writes benchmarks/results/runtime.json.
"""

from __future__ import annotations

import importlib.util
import io
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from _common import CIFAR10_ZIP, make_parser, results_path, write_results
from bganhash.datasets import load_dataset
from bganhash.datasets.images import decode_image
from bganhash.features.config import FeatureConfig
from bganhash.features.extract import compute_features, engine_for


def write_cifar_files(data: Path, folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) >= count:
        return
    with zipfile.ZipFile(data) as archive:
        names = [n for n in archive.namelist() if n.startswith("train/") and n.endswith(".jpg")][:count]
        for i, name in enumerate(names):
            (folder / f"{i:05d}.jpg").write_bytes(archive.read(name))


def write_photos(cifar: Path, folder: Path, count: int, seed: int = 0) -> None:
    """12-megapixel JPEGs (4000x3000): upscaled CIFAR images with grain, so they do not compress to nothing."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) >= count:
        return
    rng = np.random.default_rng(seed)
    for i, path in enumerate(sorted(cifar.glob("*.jpg"))[:count]):
        large = np.asarray(Image.open(path).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC), np.int16)
        grain = rng.integers(-6, 7, large.shape, dtype=np.int16)
        Image.fromarray(np.clip(large + grain, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.jpg", quality=90)


def eager_features(dataset, config: FeatureConfig) -> np.ndarray:
    """The extraction as it was before the runtime: sequential full decodes, torch resize, eager module."""
    import torch
    import torch.nn.functional as F

    from bganhash._system import torch_threads
    from bganhash.features.backbones import shared_backbone

    backbone = shared_backbone(config.backbone)
    mean = torch.tensor(backbone.input_mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.input_std).view(1, 3, 1, 1)
    size, rows = config.image_size, []
    for _, images in dataset.iter_batches(config.batch_size):
        resized = []
        for image in images:
            x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().div_(255.0)
            shrink = max(image.shape[:2]) > size
            resized.append(F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink))
        batch = ((torch.cat(resized) - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch_threads(), torch.inference_mode():
            rows.append(backbone.forward_features(batch).numpy())
    return np.concatenate(rows)


def best_rate(folder: Path, paths: dict, rounds: int) -> tuple[dict, dict]:
    """Images/s of each path (best of `rounds`, the paths alternating) and each path's features."""
    dataset = load_dataset("folder", data=folder)
    for extract in paths.values():  # warm-up: the export, sessions, first allocations
        extract(dataset.subset(np.arange(min(8, len(dataset)))))
    rates: dict[str, float] = {name: 0.0 for name in paths}
    features: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for name, extract in paths.items():
            fresh = load_dataset("folder", data=folder)  # nothing decoded ahead of the clock
            started = time.perf_counter()
            features[name] = extract(fresh)
            rates[name] = max(rates[name], len(fresh) / (time.perf_counter() - started))
    return {name: round(rate, 1) for name, rate in rates.items()}, features


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def decode_ms(photo: Path, repeats: int = 5) -> dict:
    data = photo.read_bytes()
    timings = {}
    for label, min_side in (("full", None), ("reduced_224", 224)):
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            decode_image(io.BytesIO(data), photo.name, min_side=min_side)
            best = min(best, time.perf_counter() - started)
        timings[label] = round(1000 * best, 1)
    return timings


def main() -> None:
    parser = make_parser(__doc__, results_path("runtime"), flag="--out", full_doc=True)
    parser.add_argument("--data", type=Path, default=CIFAR10_ZIP)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--photos", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bganhash-runtime-bench"))
    args = parser.parse_args()
    write_cifar_files(args.data, args.workdir / "cifar", args.images)
    write_photos(args.workdir / "cifar", args.workdir / "photos", args.photos)
    config = FeatureConfig(image_size=224, runtime=args.runtime)
    paths = {"eager": lambda d: eager_features(d, config),
             "runtime": lambda d: compute_features(d, config, progress=False)}
    if importlib.util.find_spec("openvino"):
        openvino = FeatureConfig(image_size=224, runtime="openvino", precision="fp32")
        bf16 = FeatureConfig(image_size=224, precision="bf16")
        paths["openvino-fp32"] = lambda d: compute_features(d, openvino, progress=False)
        paths["openvino-bf16"] = lambda d: compute_features(d, bf16, progress=False)
        int8 = FeatureConfig(image_size=224, precision="int8")
        engine_for(int8)  # quantised once before timing (about a minute), like the export
        paths["openvino-int8"] = lambda d: compute_features(d, int8, progress=False)
    document = {"image_size": 224, "runtime": engine_for(config).runtime, "precision": config.precision,
                "rounds": args.rounds}
    for name in ("cifar", "photos"):
        rates, features = best_rate(args.workdir / name, paths, args.rounds)
        agreement = {f"{path}_vs_eager_cosine_min": round(cosine_min(features[path], features["eager"]), 6)
                     for path in features if path != "eager"}
        document[name] = {"images": len(features["eager"]), "images_per_s": rates,
                          "runtime_over_eager": round(rates["runtime"] / rates["eager"], 2), **agreement}
        print(name, document[name], flush=True)
    document["photo_decode_ms"] = decode_ms(sorted((args.workdir / "photos").glob("*.jpg"))[0])
    print("12-MP decode ms", document["photo_decode_ms"], flush=True)
    write_results(args.out, document)


if __name__ == "__main__":
    main()
