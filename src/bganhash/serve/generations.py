"""The service follows `bganhash index --update`: `LiveCollection` notices a new generation of the index
directory, loads it beside the one being served, and switches to it atomically.

A request takes the current `Collection` once (`live.current`) and answers from it alone, so every answer
comes from one complete generation. The switch is one reference assignment, made only after the new
generation has loaded and passed its checksums; until then, and if loading fails (say a newer update replaced
it meanwhile), the previous generation goes on serving. An update's manifest.json is replaced by an atomic
rename, so a change of its inode, size or time is a new generation to look at. A retired generation's open
thumbnail files are closed `RETIRE_SECONDS` after the switch, long after the requests that took it ended.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bganhash.collection import MANIFEST_FILE, Collection

__all__ = ["POLL_SECONDS", "RETIRE_SECONDS", "LiveCollection"]

POLL_SECONDS = 1.0  # how often, at most, a request looks at the manifest (one stat call)
RETIRE_SECONDS = 60.0  # how long a replaced generation stays open for requests that took it before the switch
RETRY_SECONDS = 30.0  # how long a manifest that failed to load is left alone before it is tried again


def manifest_signature(directory: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of the index's manifest.json: it changes with every generation; None if absent."""
    try:
        stat = os.stat(directory / MANIFEST_FILE)
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class LiveCollection:
    """The newest complete generation of one index directory, for a long-running service.

    current: the collection to answer a request with; at most every `poll_seconds` it also checks the
    manifest and, when it changed, starts loading the new generation on a background thread.
    prepare: called with a newly loaded collection before the switch (e.g. to warm its encoder up).
    follow: False serves the first collection forever.
    """

    def __init__(self, collection: Collection, *, poll_seconds: float = POLL_SECONDS,
                 retire_seconds: float = RETIRE_SECONDS, prepare: Callable[[Collection], Any] | None = None,
                 follow: bool = True) -> None:
        self._current = collection
        self.directory = Path(collection.path)
        self.poll_seconds, self.retire_seconds = poll_seconds, retire_seconds
        self.prepare, self.follow = prepare, follow
        self.switches = 0
        self.last_error: str | None = None
        self._signature = manifest_signature(self.directory)
        self._lock = threading.Lock()
        self._loader: threading.Thread | None = None
        self._last_check = time.monotonic()
        self._retired: list[tuple[float, Collection]] = []
        self._failed: tuple[tuple[int, int, int], float] | None = None  # (signature, when) of the last failure

    @property
    def current(self) -> Collection:
        """The generation to answer the next request with (and a look for a newer one, now and then)."""
        if self.follow and time.monotonic() - self._last_check >= self.poll_seconds:
            self.check()
        return self._current

    @property
    def generation(self) -> int:
        return self._current.generation

    def check(self, wait: bool = False) -> bool:
        """Look at the manifest now; when it changed, load the new generation (in the background, or before
        returning with `wait`). Returns whether a load was started."""
        with self._lock:
            self._last_check = time.monotonic()
            self._close_retired()
            loader = self._loader
            if loader is None or not loader.is_alive():
                signature = manifest_signature(self.directory)
                if signature is None or signature == self._signature or self._recently_failed(signature):
                    return False
                loader = self._loader = threading.Thread(target=self._load, args=(signature,), daemon=True,
                                                         name="bganhash-generation-loader")
                loader.start()
                started = True
            else:
                started = False
        if wait:
            loader.join()
        return started

    def _load(self, signature: tuple[int, int, int]) -> None:
        """Load the generation the manifest names now and switch to it; on failure keep serving the old one
        (the signature is not recorded, so the next check tries again)."""
        try:
            new = Collection.load(self.directory)
        except Exception as exc:  # a newer update may have replaced this generation's files meanwhile
            self._fail(signature, exc)
            return
        if new.generation == self._current.generation:  # the manifest was rewritten, not a new generation
            new.close()
            self._signature = signature
            return
        try:
            if self.prepare is not None:
                self.prepare(new)
        except Exception as exc:
            self._fail(signature, exc)
            new.close()
            return
        with self._lock:
            old, self._current = self._current, new  # the switch: requests from here on take `new`
            self._signature = signature
            self._retired.append((time.monotonic(), old))
            self.switches += 1
            self.last_error = None

    def _fail(self, signature: tuple[int, int, int], exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._failed = (signature, time.monotonic())

    def _recently_failed(self, signature: tuple[int, int, int]) -> bool:
        """The same manifest failed less than RETRY_SECONDS ago (a damaged index is not re-read every poll)."""
        return (self._failed is not None and self._failed[0] == signature
                and time.monotonic() - self._failed[1] < RETRY_SECONDS)

    def _close_retired(self) -> None:
        now = time.monotonic()
        due = [c for since, c in self._retired if now - since >= self.retire_seconds]
        self._retired = [(since, c) for since, c in self._retired if now - since < self.retire_seconds]
        for collection in due:
            with contextlib.suppress(Exception):
                collection.close()

    def close(self) -> None:
        """Close every retired generation (the current one belongs to whoever made this)."""
        with self._lock:
            for _, collection in self._retired:
                collection.close()
            self._retired = []
