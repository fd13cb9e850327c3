"""The search service: a FastAPI app over one index directory, with a search page, safe under bad input.

    POST /search              an uploaded image (multipart field "file", or a raw image/* body), or
                              JSON {"id": 12, "k": 10} for an image already in the index -> JSON results
    GET  /images/{id}         the original image;  GET /thumbnails/{id}: its JPEG thumbnail
    GET  /health              liveness and what is loaded;  GET /: the search page;  GET /docs: OpenAPI

Every error is JSON {"error": "..."} with a 4xx status naming the problem; the encode path (backbone) runs
on one dedicated thread, one request at a time, while id queries and file requests go on in parallel.
"""

from __future__ import annotations

import mimetypes
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from bganhash._validation import InputError
from bganhash._version import __version__
from bganhash.collection import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, Collection, Match, QueryImageError, decode_query
from bganhash.collection.query import DecodeBudget, check_max_pixels
from bganhash.collection.reader import LinkOutsideRoot
from bganhash.serve.generations import LiveCollection
from bganhash.serve.limits import (
    HostCheck,
    UploadGate,
    default_allowed_hosts,
    json_safe,
    load_json,
    return_large_images_to_the_system,
    send_json_error,
    whole_number,
)
from bganhash.serve.pages import add_page_routes

DEFAULT_K = 10
MAX_K = 100
_MULTIPART_OVERHEAD = 64 * 1024  # boundaries and form fields around an upload of max_upload_bytes
_CONCURRENT_DECODES = 2  # decoders at once; together they hold at most one largest image (max_pixels x 4 bytes)
_UPLOAD_SLOTS = 3  # uploads between decoding and the end of encoding: two decoding, one on the backbone
_UPLOAD_QUEUE = 16  # uploads more that may be received and wait (each holds up to max_upload_bytes); then 503
_NO_SNIFF = {"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=3600"}


class SearchById(BaseModel):
    """A search for the neighbours of an image already in the index."""

    id: int = Field(description="Id of an indexed image (from a previous result)")
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K, description="How many results")


class TooLarge(Exception):
    """The request body went over the size limit while it was being received."""


class BodySizeLimit:
    """ASGI middleware: refuse bodies over `limit` bytes (413), by Content-Length and by counting the stream."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            message = f"the request is {int(declared):,} bytes; the limit is {self.limit:,}"
            return await send_json_error(send, 413, message)
        received = 0
        started = False

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise TooLarge()
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except TooLarge:
            if not started:
                await send_json_error(send, 413, f"the request is over the limit of {self.limit:,} bytes")


class SearchService:
    """The state behind the app: the loaded collection, the limits, and the thread that runs the backbone."""

    def __init__(self, collection: Collection, max_upload_bytes: int, max_pixels: int) -> None:
        self.live = LiveCollection(collection)  # follows `index --update` (serve/generations.py)
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = check_max_pixels(max_pixels)
        self.uploads = UploadGate(_UPLOAD_SLOTS, _UPLOAD_QUEUE)
        # one thread runs every backbone call: requests queue for it, and torch keeps a single OpenMP team
        self.backbone_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backbone")
        self.decode_slots = threading.BoundedSemaphore(_CONCURRENT_DECODES)
        self.decode_budget = DecodeBudget(4 * self.max_pixels)  # bytes of full-size images decoded at once
        self.started = time.time()

    @property
    def collection(self) -> Collection:
        """The generation a new request is answered from; a request takes it once and keeps it."""
        return self.live.current

    def search_upload(self, data: bytes, k: int) -> dict[str, Any]:
        """Decode, encode and search one uploaded image (run in the thread pool)."""
        started = time.perf_counter()
        collection = self.collection
        with self.decode_slots:
            image = decode_query(data, max_pixels=self.max_pixels, max_bytes=self.max_upload_bytes,
                                 min_side=collection.feature_config.image_size, budget=self.decode_budget)
        decoded = time.perf_counter()
        codes, vectors = self.encode([image], collection)
        encoded = time.perf_counter()
        matches = collection.search_encoded(codes, vectors, k)[0]
        timings = {"decode": decoded - started, "encode": encoded - decoded, "search": time.perf_counter() - encoded}
        return self.answer({"upload": {"bytes": len(data), "width": image.shape[1], "height": image.shape[0]}},
                           k, matches, timings, collection)

    def encode(self, images: list[np.ndarray],
               collection: Collection | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Codes (and compact features, for re-ranking) of decoded images, computed on the backbone thread."""
        return self.backbone_thread.submit((collection or self.collection).encode_queries, images).result()

    def search_id(self, image_id: int, k: int) -> dict[str, Any]:
        """Search by the stored code of an indexed image."""
        started = time.perf_counter()
        collection = self.collection
        try:
            matches = collection.search_ids([image_id], k)[0]
        except InputError as exc:
            raise HTTPException(404, str(exc)) from None
        query = {"id": image_id, "path": collection.path_of(image_id)}
        return self.answer(query, k, matches, {"search": time.perf_counter() - started}, collection)

    def answer(self, query: dict, k: int, matches: list[Match], timings: dict[str, float],
               collection: Collection | None = None) -> dict[str, Any]:
        collection = collection or self.collection
        return {
            "query": query,
            "k": k,
            "results": [{**m.to_dict(), "thumbnail": f"/thumbnails/{m.id}", "image": f"/images/{m.id}"}
                        for m in matches],
            "n_images": len(collection),
            "n_bits": collection.n_bits,
            "generation": collection.generation,
            "timings_ms": {name: round(seconds * 1000, 3) for name, seconds in timings.items()},
        }


def create_app(
    index_dir: str | os.PathLike | Collection,
    *,
    max_upload_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    warm_up: bool = True,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The search app over index directory `index_dir` (loaded, checksums verified, once, here).

    warm_up: load the backbone now, so that the first uploaded query is as fast as the next ones.
    allowed_hosts: the Host header names answered ("*" any, "*.example.com" a domain); others get 400. None
    checks no Host (the app as a library); `serve` passes the loopback names and the bound host.
    """
    check_max_pixels(max_pixels)
    return_large_images_to_the_system()
    collection = index_dir if isinstance(index_dir, Collection) else Collection.load(Path(index_dir).resolve())
    service = SearchService(collection, max_upload_bytes, max_pixels)
    if warm_up:
        service.encode([np.zeros((32, 32, 3), np.uint8)])
    app = FastAPI(title="bganhash search", version=__version__,
                  description=f"Search {len(collection):,} indexed images by image, "
                              f"with {collection.n_bits}-bit {collection.manifest['method']} codes.")
    app.state.service = service
    app.add_middleware(BodySizeLimit, limit=max_upload_bytes + _MULTIPART_OVERHEAD)
    if allowed_hosts is not None:
        app.add_middleware(HostCheck, allowed_hosts=allowed_hosts)  # outermost: checked first
    _add_error_handlers(app)
    _add_routes(app, service)
    add_page_routes(app, service)  # /duplicates, /favicon.ico (serve/pages.py)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": f"invalid request: {_describe_errors(exc.errors())}",
                             "detail": json_safe(exc.errors())}, status_code=422)

    @app.exception_handler(QueryImageError)
    async def bad_image(_request: Request, exc: QueryImageError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(InputError)
    async def bad_input(_request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def crash(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)


def _add_routes(app: FastAPI, service: SearchService) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(resources.files("bganhash.serve").joinpath("search.html").read_text(encoding="utf-8"))

    @app.get("/health", summary="Liveness, and what the service has loaded")
    def health() -> dict[str, Any]:
        collection = service.collection
        return {"status": "ok", "n_images": len(collection), "n_bits": collection.n_bits,
                "method": collection.manifest["method"], "generation": collection.generation,
                "update_error": service.live.last_error,  # why a newer generation is not served (None: it is)
                "max_upload_bytes": service.max_upload_bytes, "max_pixels": service.max_pixels,
                "uptime_s": round(time.time() - service.started, 1)}

    @app.post("/search", summary="Search by an uploaded image, or by the id of an indexed image",
              openapi_extra=_SEARCH_OPENAPI)
    async def search(request: Request, k: int | None = None) -> JSONResponse:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/json":
            query = _parse_json_query(await request.body(), k)
            return JSONResponse(await run_in_threadpool(service.search_id, query.id, query.k))
        if content_type in ("multipart/form-data", "application/octet-stream") or content_type.startswith("image/"):
            return JSONResponse(await _search_upload(request, service, content_type, k))
        raise HTTPException(415, f"unsupported content type {content_type or '(none)'!r}: send multipart/form-data "
                                 "with a 'file' field, an image/* body, or JSON {\"id\": ...}")

    @app.get("/thumbnails/{image_id}", summary="The JPEG thumbnail of an indexed image",
             responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "no such id"}})
    def thumbnail(image_id: int) -> Response:
        collection = service.collection
        _known_path(collection, image_id)  # 404 for an unknown id
        try:
            return Response(collection.thumbnail(image_id), media_type="image/jpeg", headers=_NO_SNIFF)
        except LinkOutsideRoot as exc:  # refused, as /images/{id} refuses it
            raise HTTPException(404, str(exc)) from None
        except InputError as exc:  # the id is known: its thumbnail is damaged
            raise HTTPException(500, f"the index is damaged: {exc}; rebuild it with bganhash index") from None

    @app.get("/images/{image_id}", summary="The original file of an indexed image",
             responses={200: {"content": {"image/*": {}}}, 404: {"description": "no such id, or the file is gone"}})
    def image(image_id: int) -> Response:
        collection = service.collection
        path = _known_path(collection, image_id)
        try:
            data = collection.original(image_id)
        except InputError:
            raise HTTPException(404, f"the file of image {image_id} ({path}) is no longer in the collection") from None
        media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return Response(data, media_type=media_type, headers=_NO_SNIFF)


def _known_path(collection: Collection, image_id: int) -> str:
    try:
        return collection.path_of(image_id)
    except InputError as exc:
        raise HTTPException(404, str(exc)) from None


def _parse_json_query(body: bytes, k: int | None) -> SearchById:
    try:
        document = load_json(body)
    except ValueError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ["body"], "msg": f"invalid JSON: {exc}",
                                       "input": None}]) from None
    if not isinstance(document, dict):
        raise RequestValidationError([{"type": "dict_type", "loc": ["body"], "msg": "the body must be a JSON object "
                                       "like {\"id\": 12, \"k\": 10}", "input": None}])
    if k is not None:
        document = {**document, "k": k}
    try:
        return SearchById.model_validate(document, strict=True)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


async def _read_multipart(request: Request) -> tuple[bytes, int | None]:
    try:
        form = await request.form(max_files=1, max_fields=8)
    except (HTTPException, TooLarge):
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise HTTPException(400, f"malformed multipart body: {exc}") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise RequestValidationError([{"type": "missing", "loc": ["body", "file"],
                                       "msg": "a multipart search needs the image in a field named 'file'",
                                       "input": None}])
    data = await upload.read()
    raw_k = form.get("k")
    if raw_k is None or raw_k == "":
        return data, None
    k = whole_number(raw_k) if isinstance(raw_k, str) else None
    if k is None:
        raise RequestValidationError([{"type": "int_parsing", "loc": ["body", "k"],
                                       "msg": "k must be a whole number in digits 0-9", "input": str(raw_k)[:100]}])
    return data, k


async def _search_upload(request: Request, service: SearchService, content_type: str, k: int | None) -> dict:
    """Receive, decode, encode and search an uploaded image, once the upload gate lets it in (503 when full)."""
    service.uploads.admit()
    try:
        if content_type == "multipart/form-data":
            data, form_k = await _read_multipart(request)
            k = _check_k(k if k is not None else form_k)
        else:
            data, k = await request.body(), _check_k(k)
        return await service.uploads.run(service.search_upload, data, k)
    finally:
        service.uploads.leave()


def _check_k(k: int | None) -> int:
    k = DEFAULT_K if k is None else k
    if not 1 <= k <= MAX_K:
        raise RequestValidationError([{"type": "less_than_equal", "loc": ["query", "k"],
                                       "msg": f"k must be between 1 and {MAX_K}", "input": k}])
    return k


def _describe_errors(errors: Any) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(parts)


_SEARCH_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"},
                               "k": {"type": "integer", "minimum": 1, "maximum": MAX_K}}}},
            "application/json": {"schema": SearchById.model_json_schema()},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


def serve(index_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, *,
          max_upload_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
          torch_threads: int | None = None, log_level: str = "info", allowed_hosts: list[str] | tuple = ()) -> None:
    """Load the index and run the app with uvicorn until interrupted; it answers to the loopback names, `host`,
    and `allowed_hosts` ("*" any) in the Host header (against DNS rebinding)."""
    check_max_pixels(max_pixels)  # before the slow part
    import torch
    import uvicorn

    torch.set_num_threads(torch_threads or min(4, os.cpu_count() or 1))
    app = create_app(Path(index_dir), max_upload_bytes=max_upload_bytes, max_pixels=max_pixels,
                     allowed_hosts=default_allowed_hosts(host, allowed_hosts))
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)
