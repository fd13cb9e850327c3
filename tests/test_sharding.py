"""Feature extraction under torchrun: images sharded by whole batches across processes, every rank
ending with the rows one process computes alone; only rank 0 writes and prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bganhash.features.sharding import process_group, shard_rows
from conftest import write_digits


@pytest.mark.parametrize("n_rows, batch, size", [(100, 8, 2), (7, 8, 2), (64, 8, 3), (65, 8, 4), (0, 8, 2)])
def test_shards_are_whole_batches_covering_every_row_once(n_rows, batch, size):
    shards = [shard_rows(n_rows, batch, rank, size) for rank in range(size)]
    covered = np.concatenate([np.arange(n_rows)[s] for s in shards])
    np.testing.assert_array_equal(covered, np.arange(n_rows))
    for s in shards[:-1]:
        assert (s.stop - s.start) % batch == 0  # each rank's batches are one process's batches


def test_outside_a_launch_there_is_one_process():
    assert process_group() == (0, 1)


def _run(cwd: Path, args: list[str], processes: int, cache: Path) -> subprocess.CompletedProcess:
    """`bganhash ARGS` in one process, or under torchrun in `processes` processes, with its own cache."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BGANHASH_NUM_THREADS": "1", "BGANHASH_CACHE": str(cache),
           "BGANHASH_PROGRESS_SECONDS": "0"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    command = [sys.executable, *launcher, "-m", "bganhash", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_features_and_encode_under_torchrun_equal_one_process(tmp_path):
    from bganhash.features.config import FeatureConfig
    from bganhash.hashers import ITQ
    from bganhash.pipeline import ImagePipeline

    write_digits(tmp_path / "digits", range(45), size=40)
    common = ["features", "--dataset", "folder", "--data", str(tmp_path / "digits"), "--image-size", "64"]
    _run(tmp_path, [*common, "--out", str(tmp_path / "one.npy")], 1, tmp_path / "cache-one")
    result = _run(tmp_path, [*common, "--out", str(tmp_path / "two.npy"), "--json"], 2, tmp_path / "cache-two")
    assert json.loads(result.stdout)["n_images"] == 45  # one JSON document: rank 0 alone prints
    assert "rank 1 of 2" in result.stderr  # rank 1 extracted its share
    features = np.load(tmp_path / "one.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "two.npy"), features)

    model = ImagePipeline(ITQ(16, random_state=0).fit(features), FeatureConfig(image_size=64)).save(tmp_path / "model")
    encode = ["encode", str(model), str(tmp_path / "digits"), "--out"]
    _run(tmp_path, [*encode, str(tmp_path / "codes-one.npy")], 1, tmp_path / "cache-three")
    _run(tmp_path, [*encode, str(tmp_path / "codes-two.npy")], 2, tmp_path / "cache-four")
    np.testing.assert_array_equal(np.load(tmp_path / "codes-two.npy"), np.load(tmp_path / "codes-one.npy"))


@pytest.mark.slow
def test_index_under_torchrun_writes_what_one_process_writes(tmp_path):
    from bganhash.collection import Collection

    write_digits(tmp_path / "digits", range(40), size=40)
    for processes in (1, 2):
        _run(tmp_path, ["index", str(tmp_path / "digits"), "--out", str(tmp_path / f"index-{processes}"),
                        "--method", "itq", "--bits", "16"], processes, tmp_path / f"cache-{processes}")
    with Collection.load(tmp_path / "index-1") as one, Collection.load(tmp_path / "index-2") as two:
        assert len(one) == len(two) == 40
        np.testing.assert_array_equal(one.codes, two.codes)
        np.testing.assert_array_equal(one.vectors, two.vectors)
