"""Upload attack on `bganhash serve`: small decompression-bomb PNGs sent at once, the server's peak memory measured.

Usage: python benchmarks/attacks/attack_uploads.py [--index DIR] [--workdir DIR] [--count 8]
       [--kinds zeros-rgb-9400,gray16-9400,rgba-at-limit,gray16-at-limit] [--max-pixels N] [--output FILE.json]

1. Builds a small collection from generated images in WORKDIR (LSH, 32 bits, the default backbone input size),
   unless --index names one.
2. Starts the real server (`python -m bganhash serve INDEX`, uvicorn) in a subprocess on a free loopback port.
3. For each kind of bomb, sends --count uploads of it concurrently and samples the server's resident memory
   (/proc/PID/status) every 10 ms; VmHWM (the kernel's own peak) is reset before each round and read after it.
4. Prints one line per round and, with --output, writes the figures as JSON.

The bombs are streamed through zlib, so the attacker never holds the decoded image: a 9400x9400 all-zero RGB
PNG is 258 KB, a 16-bit grayscale one 172 KB; "at-limit" bombs are the largest square the server accepts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import struct
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the service benchmark's server start
from bench_service import free_port, start_server  # noqa: E402

# (PNG colour type, bit depth, bytes per pixel) of each kind of bomb
_PNG_KINDS = {"rgb": (2, 8, 3), "gray16": (0, 16, 2), "rgba": (6, 8, 4)}
DEFAULT_KINDS = ("zeros-rgb-9400", "gray16-9400", "rgba-at-limit", "gray16-at-limit")


def bomb_png(width: int, height: int, kind: str) -> bytes:
    """An all-zero PNG of width x height pixels of `kind` (rgb, gray16, rgba), compressed row by row."""
    colour_type, depth, pixel_bytes = _PNG_KINDS[kind]

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + width * pixel_bytes)  # filter byte 0, then the row's zero samples
    parts = [compressor.compress(row) for _ in range(height)] + [compressor.flush()]
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def bomb_for(name: str, max_pixels: int) -> bytes:
    """The bomb called `name`: KIND-SIDE (a square of that side) or KIND-at-limit (the largest square accepted)."""
    kind, _, side = name.removeprefix("zeros-").rpartition("-")
    if kind.endswith("-at"):
        kind, side = kind[:-3], str(int(max_pixels ** 0.5))
    if kind not in _PNG_KINDS or not side.isdigit():
        raise SystemExit(f"unknown bomb {name!r}: use KIND-SIDE or KIND-at-limit, KIND one of {', '.join(_PNG_KINDS)}")
    return bomb_png(int(side), int(side), kind)


def build_small_index(workdir: Path) -> Path:
    """A 12-image collection of generated pictures in WORKDIR/index (built once)."""
    import numpy as np
    from PIL import Image

    from bganhash.collection import BuildConfig, build_collection

    index = workdir / "index"
    if (index / "manifest.json").exists():
        return index
    folder = workdir / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        base = rng.integers(0, 256, (1, 1, 3))
        noise = rng.integers(0, 64, (96, 96, 3))
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / f"{i:02d}.png")
    build_collection(folder, index, config=BuildConfig(method="lsh", n_bits=32), progress=False)
    return index


def memory_kb(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of process `pid` from /proc (VmRSS: now, VmHWM: the peak), in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"/proc/{pid}/status has no {field}")


def reset_peak(pid: int) -> bool:
    """Reset the kernel's peak-RSS counter of `pid` (Linux 4.0+); False where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def upload(port: int, data: bytes, name: str) -> tuple[int, str, float]:
    """POST `data` as the multipart field "file": (status, start of the answer, seconds)."""
    boundary = "bganhash-attack-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        connection.request("POST", "/search", body=body,
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        response = connection.getresponse()
        answer = response.read()
        status = response.status
    except (OSError, http.client.HTTPException) as exc:
        status, answer = 0, f"{type(exc).__name__}: {exc}".encode()
    finally:
        connection.close()
    text = answer.decode(errors="replace")
    if status == 200:
        text = "results: " + str(len(json.loads(text)["results"]))
    return status, text[:160], time.perf_counter() - started


def attack_round(port: int, pid: int, name: str, data: bytes, count: int) -> dict:
    """Send `count` copies of the bomb at once, sampling the server's RSS: the round's figures."""
    time.sleep(1.0)
    before_kb = memory_kb(pid)
    hwm_reset = reset_peak(pid)
    samples = [before_kb]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(memory_kb(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(lambda _: upload(port, data, name), range(count)))
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    peak_kb = max(max(samples), memory_kb(pid, "VmHWM") if hwm_reset else 0)
    time.sleep(2.0)
    statuses: dict[str, int] = {}
    for status, _, _ in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {"bomb": name, "upload_bytes": len(data), "count": count, "statuses": statuses,
            "answer": answers[0][1], "wall_s": round(wall, 2),
            "slowest_s": round(max(seconds for _, _, seconds in answers), 2),
            "rss_before_mb": round(before_kb / 1024), "peak_rss_mb": round(peak_kb / 1024),
            "rss_after_2s_mb": round(memory_kb(pid) / 1024), "peak_from_vmhwm": hwm_reset}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, help="an index directory to serve (default: build a small one)")
    parser.add_argument("--workdir", type=Path, help="where the small index is built (default: a temporary folder)")
    parser.add_argument("--count", type=int, default=8, help="uploads sent at once per round (default: 8)")
    parser.add_argument("--kinds", default=",".join(DEFAULT_KINDS), help="comma-separated bombs, one round each")
    parser.add_argument("--max-pixels", type=int, help="the server's --max-pixels (default: its own default)")
    parser.add_argument("--output", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bganhash-attack-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        index = args.index or build_small_index(workdir)
        port = free_port()
        server = start_server(index, port, 2, max_pixels=args.max_pixels, log=workdir / "server.log", wait_s=300)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
                max_pixels = int(json.load(answer)["max_pixels"])
            startup_peak_mb = round(memory_kb(server.pid, "VmHWM") / 1024)
            print(f"server pid {server.pid} on port {port}: max_pixels {max_pixels:,}, "
                  f"RSS {memory_kb(server.pid) // 1024} MB, startup peak {startup_peak_mb} MB", flush=True)
            rounds = []
            for name in args.kinds.split(","):
                data = bomb_for(name.strip(), max_pixels)
                result = attack_round(port, server.pid, name.strip(), data, args.count)
                rounds.append(result)
                print(f"{result['bomb']:>16}  {result['upload_bytes']:>9,} B x{result['count']}  "
                      f"statuses {result['statuses']}  peak {result['peak_rss_mb']} MB "
                      f"(before {result['rss_before_mb']}, after {result['rss_after_2s_mb']})  "
                      f"{result['wall_s']} s  {result['answer'][:90]}", flush=True)
            alive = server.poll() is None
        finally:
            server.terminate()
            server.wait(timeout=30)
    summary = {"max_pixels": max_pixels, "startup_peak_rss_mb": startup_peak_mb, "server_alive": alive,
               "worst_peak_rss_mb": max(r["peak_rss_mb"] for r in rounds), "rounds": rounds}
    print(f"worst peak {summary['worst_peak_rss_mb']} MB; server {'alive' if alive else 'DIED'}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
