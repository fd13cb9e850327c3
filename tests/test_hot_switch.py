"""The service follows `index --update`: LiveCollection switches to a new generation once it has loaded, keeps
the old one when loading fails, and a running server answers every request while an update lands."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the service needs fastapi")
pytest.importorskip("uvicorn", reason="the load test runs a real server")

import uvicorn  # noqa: E402

from bganhash.collection import MANIFEST_FILE, BuildConfig, Collection, build_collection  # noqa: E402
from bganhash.features.config import FeatureConfig  # noqa: E402
from bganhash.serve.app import create_app  # noqa: E402
from bganhash.serve.generations import LiveCollection  # noqa: E402
from conftest import image_bytes, write_digits  # noqa: E402

N_FIRST = 24  # digits 0..23 in the first generation; the update adds 24..31 and removes 0000.png


def build(photos: Path, out: Path, update: bool = False) -> None:
    build_collection(photos, out, config=BuildConfig(method="lsh", n_bits=32), feature_config=FeatureConfig(
        image_size=32), update=update, progress=False)


@pytest.fixture
def index_dir(tmp_path) -> tuple[Path, Path]:
    photos = tmp_path / "digits"
    write_digits(photos, range(N_FIRST))
    build(photos, tmp_path / "digits.index")
    return photos, tmp_path / "digits.index"


def update_in_place(photos: Path, out: Path) -> None:
    write_digits(photos, range(N_FIRST, N_FIRST + 8))
    (photos / "0000.png").unlink()
    build(photos, out, update=True)


def test_live_collection_switches_only_once_the_new_generation_has_loaded(index_dir):
    photos, out = index_dir
    live = LiveCollection(Collection.load(out), poll_seconds=0)
    first = live.current
    assert live.check(wait=True) is False and live.current is first  # nothing changed yet
    update_in_place(photos, out)
    assert live.check(wait=True) is True
    assert live.current is not first and live.generation == 2 and live.switches == 1
    assert len(live.current) == N_FIRST + 7 and first.generation == 1 and len(first) == N_FIRST
    assert first.thumbnail(5)  # the retired generation still answers requests that took it
    live.close()


def test_a_generation_that_fails_to_load_leaves_the_old_one_serving(index_dir):
    _, out = index_dir
    live = LiveCollection(Collection.load(out), poll_seconds=0)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    manifest["generation"] = 2
    manifest["codes"] = "codes-000009.safetensors"  # a file that is not there
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert live.check(wait=True) is True
    assert live.generation == 1 and live.switches == 0 and "codes-000009" in live.last_error
    assert live.current.search_ids([3], 1)[0][0].id == 3
    assert live.check(wait=True) is False  # the same broken manifest is not re-read at every poll


class Server:
    """A real uvicorn server on a free loopback port, in a thread."""

    def __init__(self, app) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def request(url: str, data: bytes | None = None, content_type: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": content_type} if content_type else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError as error:  # refused or reset connections count as failures too
        return -1, str(error).encode()


@pytest.mark.slow
def test_a_running_server_switches_to_the_update_under_load_without_a_failed_request(index_dir):
    photos, out = index_dir
    upload = image_bytes(Image.open(photos / "0007.png").convert("RGB"))
    app = create_app(out)
    app.state.service.live.poll_seconds = 0.05
    failures, generations, counts = [], set(), {"requests": 0}
    stop = threading.Event()
    lock = threading.Lock()

    def hammer(worker: int) -> None:
        step = 0
        while not stop.is_set():
            image_id = 1 + (worker + step) % (N_FIRST - 1)  # ids 1..23 are in both generations
            step += 1
            if worker == 0:
                status, body = request(f"{base}/search?k=5", upload, "image/png")
            elif step % 3 == 0:
                status, body = request(f"{base}/thumbnails/{image_id}")
            else:
                status, body = request(f"{base}/search", json.dumps({"id": image_id, "k": 5}).encode(),
                                       "application/json")
            with lock:
                counts["requests"] += 1
                if status != 200:
                    failures.append((status, body[:200]))
                elif body.startswith(b"{"):
                    generations.add(json.loads(body)["generation"])

    with Server(app) as base:
        workers = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
        for worker in workers:
            worker.start()
        time.sleep(0.5)
        update_in_place(photos, out)  # the update lands while the four workers keep asking
        deadline = time.monotonic() + 60
        while 2 not in generations and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        stop.set()
        for worker in workers:
            worker.join()
        health = json.loads(request(f"{base}/health")[1])
        new_id = json.loads(request(f"{base}/search", json.dumps({"id": N_FIRST + 3, "k": 1}).encode(),
                                    "application/json")[1])
    assert failures == [], failures[:5]
    assert generations == {1, 2} and health["generation"] == 2 and health["n_images"] == N_FIRST + 7
    assert new_id["results"][0]["id"] == N_FIRST + 3 and counts["requests"] > 50
