"""How fast a 12-megapixel JPEG decodes to 224 px, and where the floor is: bganhash's `decode_image` (in
full, and at reduced size: DCT scaling then a box reduction), Pillow's DCT scaling alone, and, when the
optional `simplejpeg` package is installed, libjpeg-turbo with its fast DCT and fast upsampling.

    python benchmarks/bench_decode.py [--data ../shared/data/cifar10-jpg.zip] [--photos 4] [--repeats 7]

The photos are made as bench_runtime.py makes them (4000x3000, upscaled CIFAR-10 images with grain,
quality 90) in --workdir. Best and median of --repeats per photo, one thread. Writes
benchmarks/results/decode.json.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from _common import CIFAR10_ZIP, make_parser, results_path, write_results
from bench_runtime import write_cifar_files, write_photos
from bganhash.datasets.images import decode_image


def decoders() -> dict[str, Callable[[bytes], object]]:
    """Each way of decoding one JPEG's bytes to (at least) 224 px on its short side."""

    def pillow_draft(data: bytes):
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (224, 224))
        image.load()
        return image

    found = {
        "decode_image_full": lambda data: decode_image(io.BytesIO(data), "photo.jpg"),
        "decode_image_224": lambda data: decode_image(io.BytesIO(data), "photo.jpg", min_side=224),
        "pillow_draft_only": pillow_draft,
    }
    try:
        import simplejpeg
    except ImportError:
        return found
    found["simplejpeg_fast_224"] = lambda data: simplejpeg.decode_jpeg(
        data, fastdct=True, fastupsample=True, min_height=224, min_width=224)
    return found


def time_ms(decode: Callable[[bytes], object], data: bytes, repeats: int) -> dict[str, float]:
    decode(data)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        decode(data)
        seconds.append(time.perf_counter() - started)
    return {"best": round(1000 * min(seconds), 2), "median": round(1000 * statistics.median(seconds), 2)}


def main() -> None:
    parser = make_parser(__doc__, results_path("decode"))
    parser.add_argument("--data", type=Path, default=CIFAR10_ZIP)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_runtime"))
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    write_cifar_files(args.data, args.workdir / "cifar", args.photos)
    write_photos(args.workdir / "cifar", args.workdir / "photos", args.photos)
    photos = sorted((args.workdir / "photos").glob("*.jpg"))[: args.photos]
    results = {}
    for name, decode in decoders().items():
        results[name] = [time_ms(decode, photo.read_bytes(), args.repeats) for photo in photos]
        best = statistics.median(r["best"] for r in results[name])
        print(f"{name}: median over photos of the best time {best:.1f} ms", flush=True)
    write_results(args.output, {"benchmark": "decoding a 12-MP JPEG to 224 px",
                                "photo_bytes": [photo.stat().st_size for photo in photos], "ms": results})


if __name__ == "__main__":
    main()
