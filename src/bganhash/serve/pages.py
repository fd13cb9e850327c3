"""The service's other pages: the duplicates view (GET /duplicates, its data at GET /duplicates.json), the style
sheet the pages share (GET /static/common.css) and the site icon (GET /favicon.ico)."""

from __future__ import annotations

import functools
import io
import threading
from collections import OrderedDict
from importlib import resources
from typing import Any

from fastapi import FastAPI, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

from bganhash.collection.duplicates import (
    DEFAULT_CANDIDATES,
    DEFAULT_THRESHOLD,
    THRESHOLD_EXPLAINED,
    find_duplicates,
)

__all__ = ["DuplicatesCache", "add_page_routes", "favicon_bytes"]

_KEPT_REPORTS = 8  # (generation, threshold, candidates) answers kept


class DuplicatesCache:
    """The duplicate groups of the served generation, computed once per (generation, threshold, candidates)."""

    def __init__(self) -> None:
        self._reports: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def report(self, collection: Any, threshold: float, candidates: int) -> dict[str, Any]:
        key = (str(collection.path), collection.generation, round(threshold, 4), candidates)
        with self._lock:  # one computation at a time: a second request for the same key waits and reuses it
            if key not in self._reports:
                report = find_duplicates(collection, threshold=threshold, candidates=candidates)
                self._reports[key] = _with_links(report.to_dict(), collection.generation)
                while len(self._reports) > _KEPT_REPORTS:
                    self._reports.popitem(last=False)
            self._reports.move_to_end(key)
            return self._reports[key]


def _with_links(document: dict[str, Any], generation: int) -> dict[str, Any]:
    for group in document["groups"]:
        for image in group["images"]:
            image["thumbnail"], image["image"] = f"/thumbnails/{image['id']}", f"/images/{image['id']}"
    return {**document, "generation": generation}


@functools.lru_cache(maxsize=1)
def favicon_bytes() -> bytes:
    """A 32 x 32 icon: a few rows of dark and light bits, drawn once."""
    import numpy as np
    from PIL import Image

    bits = np.array([[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 1], [0, 1, 0, 0]], dtype=bool)
    pixels = np.where(np.kron(bits, np.ones((8, 8), bool))[..., None], (10, 102, 194), (250, 250, 250))
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="ICO", sizes=[(32, 32)])
    return buffer.getvalue()


def _package_text(name: str) -> str:
    """A page or style sheet shipped in bganhash/serve."""
    return resources.files("bganhash.serve").joinpath(name).read_text(encoding="utf-8")


def add_page_routes(app: FastAPI, service: Any) -> None:
    """GET /duplicates (the page), /duplicates.json (its groups), /static/common.css and /favicon.ico on `app`."""
    cache = DuplicatesCache()

    @app.get("/duplicates", response_class=HTMLResponse, include_in_schema=False)
    def duplicates_page() -> HTMLResponse:
        return HTMLResponse(_package_text("duplicates.html"))

    @app.get("/duplicates.json", summary="Groups of exact and near copies among the indexed images")
    async def duplicates(
        threshold: float = Query(DEFAULT_THRESHOLD, ge=-1.0, le=1.0, description=THRESHOLD_EXPLAINED),
        candidates: int = Query(DEFAULT_CANDIDATES, ge=1, le=1000,
                                description="Hamming-nearest codes compared with each image"),
    ) -> JSONResponse:
        collection = service.collection  # one generation for the whole answer
        return JSONResponse(await run_in_threadpool(cache.report, collection, threshold, candidates))

    @app.get("/static/common.css", include_in_schema=False)
    def common_css() -> Response:
        return Response(_package_text("common.css"), media_type="text/css; charset=utf-8",
                        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(favicon_bytes(), media_type="image/x-icon", headers={"Cache-Control": "public, max-age=86400"})
