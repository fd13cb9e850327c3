"""The backend string of an `Index`: what searches the codes, and with which options.

A backend is picked by a short string (`parse_backend` reads it, `BACKENDS` lists the kinds):

- "flat": exact search. It runs on faiss's `IndexBinaryFlat` when faiss is installed: faiss keeps
  ties in insertion order (its scan replaces a heap entry only on a strictly smaller distance, and
  its heap compares ids on equal distances), so the results are identical to numpy's; this is
  checked once per process before faiss is trusted. Without faiss (or with "flat,engine=numpy") it
  is an XOR + popcount scan in numpy. Both give exactly the same (distances, ids).
- "hnsw:M[,ef=E][,efc=C]": faiss's `IndexBinaryHNSW`, a graph with M links per node built with
  efConstruction C, searched with efSearch E. Approximate, sublinear.
- "mih:T[,nflip=F]": faiss's `IndexBinaryMultiHash`: T hash tables on T disjoint substrings of the
  code, probing the buckets up to F bit flips away. Approximate; every code within distance
  T*(F+1)-1 of the query is a candidate, so results whose k-th distance is below that are exact.
- "ivf:L[,nprobe=P]": faiss's `IndexBinaryIVF`: the codes filed in L inverted lists by a binary
  k-means (trained on the first codes added, at least L of them), a query scanning the P lists of
  the nearest centroids. Approximate, sublinear; the fastest at high recall on clustered codes.

Search-time options (engine, ef, nflip, nprobe) can be changed on a built index; the others (efc) are
fixed when it is built.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bganhash._validation import InputError

__all__ = ["BACKENDS", "Backend", "parse_backend"]

BACKENDS: dict[str, str] = {
    "flat": "exact scan (faiss IndexBinaryFlat when installed, else numpy); options: engine=auto|faiss|numpy",
    "hnsw": "faiss IndexBinaryHNSW, approximate: hnsw:M (links per node, default 32); options: ef= (efSearch, "
            "default 128), efc= (efConstruction, default 200)",
    "mih": "faiss IndexBinaryMultiHash, approximate: mih:T (hash tables, default 4); options: nflip= "
           "(bit flips probed per table, default 1)",
    "ivf": "faiss IndexBinaryIVF, approximate: ivf:L (inverted lists, default 1024; trained on the first codes "
           "added, at least L of them); options: nprobe= (lists scanned per query, default 8)",
}
_ENGINES = ("auto", "faiss", "numpy")
# kind -> (name of the number after the colon, its default, its minimum), or None when it takes none
_SIZES: dict[str, tuple[str, int, int] | None] = {
    "flat": None, "hnsw": ("M", 32, 2), "mih": ("tables", 4, 1), "ivf": ("lists", 1024, 1),
}
# kind -> {option: (default, minimum or allowed strings, set at search time?)}
_OPTIONS: dict[str, dict[str, tuple[Any, Any, bool]]] = {
    "flat": {"engine": ("auto", _ENGINES, True)},
    # efConstruction 200, not faiss's 40: on learned codes, full of ties and duplicates, 40 leaves a graph
    # whose recall@10 stays below 0.85 at any efSearch (BENCHMARKS.md); 200 triples the build time.
    "hnsw": {"ef": (128, 1, True), "efc": (200, 1, False)},
    "mih": {"nflip": (1, 0, True)},
    # nprobe 8 of 1,024 lists: recall@10 above 0.95 (ids and distances) on a million learned 64-bit codes
    "ivf": {"nprobe": (8, 1, True)},
}
_EXAMPLES = '"flat", "hnsw:32", "hnsw:32,ef=256", "mih:4", "mih:4,nflip=2", "ivf:1024,nprobe=8"'


@dataclass(frozen=True)
class Backend:
    """A parsed backend string: its kind, the number after the colon (HNSW's M, the multi-hash tables)
    and its options, every one filled in. `str(backend)` gives the canonical string."""

    kind: str
    size: int | None
    options: tuple[tuple[str, Any], ...]

    def option(self, name: str) -> Any:
        return dict(self.options)[name]

    @property
    def build_key(self) -> tuple:
        """What the built structure depends on (the search-time options do not count)."""
        return self.kind, self.size, tuple((k, v) for k, v in self.options if not _OPTIONS[self.kind][k][2])

    @property
    def search_options(self) -> dict[str, Any]:
        """The options that can change on a built index (`with_options` takes them)."""
        return {k: v for k, v in self.options if _OPTIONS[self.kind][k][2]}

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def with_options(self, **options: Any) -> Backend:
        merged = dict(self.options)
        for name, value in options.items():
            if name not in merged:
                raise InputError(f"{self.kind} has no option {name!r}; its options are {', '.join(merged)}")
            if not _OPTIONS[self.kind][name][2]:
                raise InputError(f"{name} is fixed when the {self.kind} index is built; make a new index to change it")
            merged[name] = _check_option(self.kind, name, value)
        return replace(self, options=tuple(merged.items()))

    def __str__(self) -> str:
        head = self.kind if self.size is None else f"{self.kind}:{self.size}"
        shown = [(k, v) for k, v in self.options if not (self.kind == "flat" and k == "engine" and v == "auto")]
        return ",".join([head, *(f"{k}={v}" for k, v in shown)])


def parse_backend(spec: str | Backend) -> Backend:
    """Read a backend string such as "flat", "hnsw:32,ef=64" or "mih:4,nflip=2" (InputError if malformed).

    "faiss", the name of the faiss flat backend before backend strings, means "flat,engine=faiss".
    """
    if isinstance(spec, Backend):
        return spec
    if not isinstance(spec, str):
        raise InputError(f"backend={spec!r} must be a string such as {_EXAMPLES}")
    text = spec.strip().lower()
    if text == "faiss":
        text = "flat,engine=faiss"
    head, *option_texts = [part.strip() for part in text.split(",")]
    kind, colon, size_text = (part.strip() for part in head.partition(":"))
    if kind not in BACKENDS:
        raise InputError(f"backend={spec!r}: unknown kind {kind!r}; use one of {', '.join(BACKENDS)} "
                         f"(e.g. {_EXAMPLES})")
    size_rule = _SIZES[kind]
    if size_rule is None:
        if colon:
            raise InputError(f"backend={spec!r}: {kind} takes no number after a colon")
        size = None
    else:
        name, default, minimum = size_rule
        if not colon:
            size = default
        elif not _is_whole_number(size_text) or int(size_text) < minimum:
            raise InputError(f"backend={spec!r}: {kind}:{name} needs a whole number {name} >= {minimum} after "
                             f"the colon, e.g. {kind}:{default}")
        else:
            size = int(size_text)
    options = {name: rule[0] for name, rule in _OPTIONS[kind].items()}
    seen = set()
    for option_text in option_texts:
        name, equals, value = (part.strip() for part in option_text.partition("="))
        if not equals or not name or not value:
            raise InputError(f"backend={spec!r}: options look like name=value after a comma, e.g. {_EXAMPLES}")
        if name not in options:
            raise InputError(f"backend={spec!r}: {kind} has no option {name!r}; its options are "
                             f"{', '.join(options) or 'none'}")
        if name in seen:
            raise InputError(f"backend={spec!r}: option {name!r} is given twice")
        seen.add(name)
        options[name] = _check_option(kind, name, value, spec)
    return Backend(kind, size, tuple(options.items()))


def _is_whole_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _check_option(kind: str, name: str, value: Any, spec: Any = None) -> Any:
    """An option's value checked against its rule (a minimum, or the allowed strings); ints from text."""
    _, rule, _ = _OPTIONS[kind][name]
    where = f"backend={spec!r}: " if spec is not None else ""
    if isinstance(rule, tuple):
        if value not in rule:
            raise InputError(f"{where}{name}={value!r} must be one of {', '.join(rule)}")
        return value
    if isinstance(value, str) and _is_whole_number(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < rule:
        raise InputError(f"{where}{name}={value!r} must be a whole number >= {rule}")
    return int(value)
