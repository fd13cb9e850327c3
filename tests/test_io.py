"""Atomic writes: all or nothing, and ordinary permissions."""

from __future__ import annotations

import json
import os
import stat

import pytest

from bganhash._io import atomic_write, write_json


def test_atomic_write_replaces_the_file_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as handle:
            handle.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temp file left behind


def test_atomic_write_creates_parents_and_uses_umask_permissions(tmp_path):
    target = tmp_path / "a" / "b" / "doc.json"
    write_json(target, {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1}
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
