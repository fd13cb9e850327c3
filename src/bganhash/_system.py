"""Facts about the machine this process runs on."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Iterator
from pathlib import Path

from bganhash._validation import InputError


def import_faiss(needed_for: str):
    """The faiss module, or an InputError saying what needed it and how to install it."""
    try:
        import faiss
    except ImportError as exc:
        raise InputError(f"{needed_for} needs faiss; install it with: pip install faiss-cpu") from exc
    return faiss


THREADS_VARIABLE = "BGANHASH_NUM_THREADS"  # caps the threads bganhash's own parallel code uses


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else all cores),
    capped by $BGANHASH_NUM_THREADS when that is set (e.g. by a worker sharing the machine)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        cores = max(1, os.cpu_count() or 1)
    cap = os.environ.get(THREADS_VARIABLE, "").strip()
    if cap:
        if not cap.isdigit() or int(cap) < 1:
            raise ValueError(f"${THREADS_VARIABLE}={cap!r}: expected a positive whole number of threads")
        cores = min(cores, int(cap))
    return cores


@contextlib.contextmanager
def torch_threads(count: int | None = None) -> Iterator[None]:
    """Run the block on `count` torch CPU threads (None: as many as `usable_cpus`, never more than torch
    had; 0: unchanged), then restore torch's setting. The one thread limit bganhash's torch code uses."""
    import torch

    previous = torch.get_num_threads()
    if count is None:
        count = max(1, min(previous, usable_cpus()))
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of x86 CPUs that compute in bf16


@functools.lru_cache(maxsize=8)
def cpu_has_native_bf16(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes in bf16 natively (AVX-512 BF16 or AMX), where bf16 inference is fast rather
    than emulated. False where /proc/cpuinfo is absent (not Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def machine_description() -> str:
    """CPU model, cores and torch threads (and the GPU when CUDA is available)."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{model}, {usable_cpus()} CPU cores, torch {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text
