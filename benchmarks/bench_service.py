"""Load benchmark of `bganhash serve`: concurrent clients on loopback, by id and by uploaded image.

Usage: python benchmarks/bench_service.py [--data ../shared/data/cifar10-jpg.zip] [--workdir /tmp/bganhash-bench]
       [--clients 16] [--duration 20] [--upload-clients 4] [--upload-duration 10]

1. Writes CIFAR-10's database images (the paper's protocol: every image but the 1,000 queries, 59,000) as JPEG
   files into WORKDIR/cifar10-database, and the 1,000 queries into WORKDIR/queries (outside the repository).
2. Indexes the database as a user would (`build_collection`: backbone features at the default input size,
   ITQ with --bits bits trained on a 10,000-image sample, thumbnails), once; later runs reuse the index.
3. Starts the service in a subprocess on 127.0.0.1 and runs N client threads for a bounded time, first
   searching by random indexed ids, then (fewer clients) uploading the held-out query JPEGs.
4. Times the upload path's parts in-process (decode, backbone + hasher, search) to state the backbone's share.
Writes benchmarks/results/service.json. On a shared machine the figures are noisy: the load average is recorded.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from _common import CIFAR10_ZIP, make_parser, results_path, write_results


def prepare_images(data: Path, workdir: Path, seed: int) -> tuple[Path, Path]:
    """The protocol's database and query images as files (written once)."""
    from bganhash.datasets import load_dataset, protocol_split

    database, queries = workdir / "cifar10-database", workdir / "queries"
    done = workdir / "images.done"
    if done.exists():
        return database, queries
    dataset = load_dataset("cifar10", data)
    split = protocol_split(dataset, seed=seed)
    members = dataset.locations  # the zip members, in the reader's order
    with zipfile.ZipFile(data) as archive:
        for folder, indices in ((database, split.database), (queries, split.query)):
            for i in indices:
                target = folder / members[i]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(members[i]))
    done.write_text(f"{len(split.database)} database, {len(split.query)} queries\n")
    return database, queries


def build_index(database: Path, out: Path, bits: int) -> dict:
    from bganhash.collection import BuildConfig, Collection, build_collection

    if (out / "manifest.json").exists():
        with Collection.load(out) as collection:
            return {"reused": True, "n_images": len(collection), "method": collection.manifest["method"],
                    "n_bits": collection.n_bits, "feature_config": collection.manifest["feature_config"]}
    summary = build_collection(database, out, config=BuildConfig(method="itq", n_bits=bits))
    with Collection.load(out) as collection:
        return {"reused": False, "n_images": summary.n_images, "seconds": summary.seconds, "method": "itq",
                "n_bits": bits, "feature_config": collection.manifest["feature_config"]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(index: Path, port: int, threads: int, runtime: str | None = None, *, max_pixels: int | None = None,
                 log: Path | None = None, wait_s: float = 180) -> subprocess.Popen:
    """The service on 127.0.0.1:port in a subprocess, once it answers /health (the benchmarks and the upload
    attack share it). `runtime` forces the backbone's runtime (e.g. torch); `max_pixels` the upload pixel limit
    (None: the service's default); `log` takes the server's output (None: this terminal)."""
    options = {"torch_threads": threads, "log_level": "warning", **({"max_pixels": max_pixels} if max_pixels else {})}
    code = ("import json, sys; from bganhash.serve.app import serve; "
            "serve(sys.argv[1], '127.0.0.1', int(sys.argv[2]), **json.loads(sys.argv[3]))")
    env = {**os.environ, **({"BGANHASH_RUNTIME": runtime} if runtime else {})}
    output = log.open("wb") if log else None
    process = subprocess.Popen([sys.executable, "-c", code, str(index), str(port), json.dumps(options)], env=env,
                               stdout=output, stderr=subprocess.STDOUT if output else None)
    if output:
        output.close()  # the child holds its own copy
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode}" + (f"; see {log}" if log else ""))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"the server did not answer /health within {wait_s:.0f} s")


def load_test(port: int, clients: int, duration: float, make_request, seed: int) -> dict:
    """`clients` threads, each with its own keep-alive connection, sending requests until `duration` ends.

    The clients use the standard library's http.client, the lightest Python client, so that on a small machine
    the client threads take as little as possible of the CPU the server needs.
    """
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]
    server_ms: list[list[dict]] = [[] for _ in range(clients)]
    stop = time.monotonic() + duration

    def client(worker: int) -> None:
        rng = random.Random(seed + worker)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop:
            path, body, content_type = make_request(rng)
            started = time.perf_counter()
            try:
                connection.request("POST", path, body=body, headers={"Content-Type": content_type})
                response = connection.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as exc:
                errors[worker].append(f"{type(exc).__name__}: {exc}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            elapsed = time.perf_counter() - started
            if response.status != 200:
                errors[worker].append(f"HTTP {response.status}: {payload[:100]!r}")
                continue
            latencies[worker].append(elapsed)
            server_ms[worker].append(json.loads(payload)["timings_ms"])
        connection.close()

    began = time.perf_counter()
    workers = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - began
    flat = np.array([x for row in latencies for x in row]) * 1000
    all_errors = [e for row in errors for e in row]
    timings = [t for row in server_ms for t in row]
    return {
        "clients": clients, "duration_s": round(wall, 2), "requests_ok": int(flat.size), "errors": len(all_errors),
        "error_examples": sorted(set(all_errors))[:5],
        "queries_per_s": round(flat.size / wall, 1),
        "latency_ms": {name: round(float(np.percentile(flat, q)), 2) if flat.size else None
                       for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
        "server_ms_mean": {key: round(float(np.mean([t[key] for t in timings])), 3)
                           for key in (timings[0] if timings else {})},
    }


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with the image in the field "file", and its content type."""
    boundary = "bganhash-bench-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def time_upload_parts(index: Path, queries: list[Path], repeats: int) -> dict:
    """Median in-process times of one upload's parts: decode, backbone, hasher, Hamming search.

    Each part runs over all the queries (one image at a time) before the next part starts, so that one
    library's idle worker threads (torch's OpenMP team, BLAS) do not slow down the part measured after it.
    """
    from bganhash.collection import Collection, decode_query

    with Collection.load(index) as collection:
        size = collection.feature_config.image_size
        extract = collection.pipeline.features_of_images
        extract([np.zeros((32, 32, 3), np.uint8)])
        data = [path.read_bytes() for path in queries[:repeats]]
        images, decode = _timed(lambda blob: decode_query(blob, min_side=size), data)
        features, backbone = _timed(lambda image: extract([image]), images)
        codes, hasher = _timed(collection.hasher.encode, features)
        _, search = _timed(lambda code: collection.search_codes(code, 10), codes)
    medians = {name: round(float(np.median(ms)), 3)
               for name, ms in (("decode", decode), ("backbone", backbone), ("hasher", hasher), ("search", search))}
    medians["backbone_share"] = round(medians["backbone"] / sum(medians.values()), 3)
    return medians


def _timed(function, inputs: list) -> tuple[list, list[float]]:
    """function(x) for each input, and the milliseconds each call took."""
    outputs, milliseconds = [], []
    for value in inputs:
        started = time.perf_counter()
        outputs.append(function(value))
        milliseconds.append((time.perf_counter() - started) * 1000)
    return outputs, milliseconds


def _http_parser() -> str:
    """Which HTTP parser uvicorn uses: httptools (C) when installed, else h11 (pure Python)."""
    import importlib.util

    return "httptools" if importlib.util.find_spec("httptools") else "h11"


def main() -> None:
    parser = make_parser(__doc__, results_path("service"), flag="--out", full_doc=True)
    parser.add_argument("--data", type=Path, default=CIFAR10_ZIP)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bganhash-bench"))
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--upload-clients", type=int, default=4)
    parser.add_argument("--upload-duration", type=float, default=10.0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="Torch threads of the server.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-eager", action="store_true",
                        help="Also time one uploading client against a server on eager PyTorch "
                             "(BGANHASH_RUNTIME=torch).")
    parser.add_argument("--build-only", action="store_true", help="Prepare the images and the index, then stop.")
    parser.add_argument("--index", type=Path, default=None,
                        help="Benchmark this existing index instead (with --queries: a folder of query images).")
    parser.add_argument("--queries", type=Path, default=None)
    args = parser.parse_args()
    if args.index is not None:
        index, queries_dir = args.index, args.queries
        built = build_index(Path("-"), index, args.bits)
    else:
        if not args.data.is_file():
            raise SystemExit(f"needs the CIFAR-10 zip at {args.data} (pass --data)")
        database, queries_dir = prepare_images(args.data, args.workdir, args.seed)
        index = args.workdir / "cifar10.index"
        built = build_index(database, index, args.bits)
    print(f"index: {built}", flush=True)
    if args.build_only:
        return
    queries = sorted(p for p in queries_dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    payloads = [(path.name, path.read_bytes()) for path in queries]
    n_images = built["n_images"]

    single_upload = {}
    bodies = [multipart(name, data) for name, data in payloads]

    def upload_request(rng: random.Random) -> tuple[str, bytes, str]:
        return (f"/search?k={args.k}", *bodies[rng.randrange(len(bodies))])

    for runtime in (["torch"] if args.compare_eager else []) + [None]:  # eager PyTorch before, the runtime after
        port = free_port()
        server = start_server(index, port, args.threads, runtime)
        try:
            single_upload[runtime or "default"] = load_test(port, 1, args.upload_duration, upload_request, args.seed)
            print(f"one client uploading ({runtime or 'default runtime'}): {single_upload[runtime or 'default']}",
                  flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)

    port = free_port()
    server = start_server(index, port, args.threads)
    url = f"http://127.0.0.1:{port}"
    try:
        def by_id_request(rng: random.Random) -> tuple[str, bytes, str]:
            return "/search", json.dumps({"id": rng.randrange(n_images), "k": args.k}).encode(), "application/json"

        by_id = load_test(port, args.clients, args.duration, by_id_request, args.seed)
        print(f"by id: {by_id}", flush=True)
        by_upload = load_test(port, args.upload_clients, args.upload_duration, upload_request, args.seed)
        print(f"by upload: {by_upload}", flush=True)
        health = json.loads(urllib.request.urlopen(f"{url}/health", timeout=10).read())
    finally:
        server.terminate()
        server.wait(timeout=30)
    parts = time_upload_parts(index, queries, repeats=200)
    print(f"upload parts (median ms, in-process): {parts}", flush=True)
    write_results(args.out, {
        "benchmark": "service", "dataset": "CIFAR-10 (JPEG copy), protocol database (59,000) and queries (1,000)",
        "index": built, "k": args.k, "server_torch_threads": args.threads, "http_parser": _http_parser(),
        "by_id": by_id, "by_upload": by_upload, "one_client_upload": single_upload, "upload_parts_ms": parts,
        "server_alive_after": health["status"],
    })


if __name__ == "__main__":
    main()
