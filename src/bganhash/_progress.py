"""Progress of long steps: a tqdm bar on a terminal, and a line every few seconds in a log.

tqdm hides itself when stderr is not a terminal, so a 40-minute extraction under nohup or CI printed
nothing; `progress_bar` prints "desc: 12,800/60,000 img (21%), 142 img/s, ETA 5:32" lines there instead.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

INTERVAL_VARIABLE = "BGANHASH_PROGRESS_SECONDS"  # seconds between log lines (default 10)


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_VARIABLE, "10")))
    except ValueError:
        return 10.0


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class LogProgress:
    """The part of tqdm's interface bganhash uses, printing a line every `interval` seconds to stderr."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int = 0,
                 interval: float | None = None) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.interval = _interval() if interval is None else interval
        self._initial = initial
        self._started = self._last = time.monotonic()
        self._postfix = ""

    def update(self, count: int = 1) -> None:
        self.n += count
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._print(now)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **values: Any) -> None:
        values = {**(ordered_dict or {}), **values}
        self._postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        now = time.monotonic()
        if self.n > self._initial and now - self._started >= self.interval:  # short steps stay quiet
            self._print(now, final=True)

    def line(self, now: float, final: bool = False) -> str:
        """The log line for the state at time `now` (monotonic seconds)."""
        elapsed = max(now - self._started, 1e-9)
        rate = (self.n - self._initial) / elapsed
        parts = [f"{self.n:,}" + (f"/{self.total:,} {self.unit}" if self.total else f" {self.unit}")]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:,.1f} {self.unit}/s")
        if final:
            parts.append(f"done in {_clock(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
        if self._postfix:
            parts.append(self._postfix)
        return f"{self.desc}: " + ", ".join(parts)

    def _print(self, now: float, final: bool = False) -> None:
        print(self.line(now, final), file=sys.stderr, flush=True)

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class _Silent(LogProgress):
    def update(self, count: int = 1) -> None:
        self.n += count

    def close(self) -> None:
        pass


def progress_bar(total: int | None, desc: str, unit: str = "img", *, enabled: bool = True, initial: int = 0,
                 leave: bool = True) -> Any:
    """A tqdm bar when stderr is a terminal, log lines every few seconds when it is not, nothing when not
    `enabled`."""
    if not enabled:
        return _Silent(total, desc, unit, initial)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave, smoothing=0.1, file=sys.stderr)
    return LogProgress(total, desc, unit, initial)


def progress(iterable: Iterable, total: int | None = None, desc: str = "", unit: str = "img",
             enabled: bool = True) -> Iterator:
    """Iterate over `iterable`, reporting through `progress_bar`."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with progress_bar(total, desc, unit, enabled=enabled, leave=False) as bar:
        for item in iterable:
            yield item
            bar.update(1)
