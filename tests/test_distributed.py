"""Distributed training: two torchrun processes (DDP over gloo, CPU) train what one process trains with
the same global batch; rank 0 alone writes checkpoints; resuming under torchrun changes nothing; a
launch environment that does not add up is refused with a clear message.

The two-process runs start `tests/distributed_run.py` under `python -m torch.distributed.run` (the
`torchrun` command, from the same interpreter) with `--standalone`, which rendezvouses on a free
local port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from sklearn.datasets import load_digits
from torch import nn

from bganhash import InputError
from bganhash.bgan.checkpoint import MANIFEST_FILE
from bganhash.bgan.distributed import World
from bganhash.bgan.launch import read_launch_environment
from distributed_run import build_trainer, tiny_config, tiny_problem

WORKER = Path(__file__).with_name("distributed_run.py")

# Tolerances of the 2-process run against the single-process one (16 Adam steps, every loss on).
# float32 sums run in another order (each shard's partial sums, then the all-reduce), so the two runs
# agree to rounding, not bit for bit, and Adam, dividing each gradient by its running scale, makes
# rounding differences in small gradients visible in the weights. Measured: z 2.4e-7, weights (the
# rounding-driven ones of `_rounding_driven` aside) 6.8e-6. Each of three mistakes (BatchNorm not
# synchronised; losses not weighted by N * B_r / B; l_N on each shard's own pairs) moved some weight
# by 1e-2 or more and z by 1.4e-4 or more, so these bounds tell them apart.
Z_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-4

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _torchrun(out: Path, *args: str, expect_success: bool = True) -> subprocess.CompletedProcess:
    """Run the worker script in 2 processes, or `-m bganhash` when args start with "-m"."""
    out.mkdir(parents=True, exist_ok=True)
    target = list(args) if args[:1] == ("-m",) else [str(WORKER), str(out), *args]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *target]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, cwd=out)
    if expect_success:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(path)


def _rounding_driven(networks: nn.Module) -> set[str]:
    """Biases right before a BatchNorm (which subtracts them again: their true gradient is 0, so Adam
    steps on rounding noise) and the running means that track them: they may differ by ~lr per step."""
    names = set()
    for prefix, module in networks.named_modules():
        if isinstance(module, nn.Sequential):
            layers = list(module.named_children())
            for (name, layer), (norm_name, norm) in zip(layers, layers[1:]):
                if isinstance(norm, nn.modules.batchnorm._BatchNorm) and getattr(layer, "bias", None) is not None:
                    names |= {f"{prefix}.{name}.bias", f"{prefix}.{norm_name}.running_mean"}
    return names


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    """The uninterrupted 2-process run, with checkpoints."""
    out = tmp_path_factory.mktemp("two-processes")
    _torchrun(out, "--checkpoints", str(out / "checkpoints"))
    return out


@pytest.fixture(scope="module")
def one_process_run():
    """The same training in this process, with the whole global batch."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    data = tiny_problem()
    trainer = build_trainer(tiny_config(), data)
    history = trainer.fit()
    torch.set_num_threads(previous)
    return trainer, data, history


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains(two_process_run, one_process_run):
    trainer, data, history = one_process_run
    reference = trainer.networks.state_dict()
    ranks = [_weights(two_process_run / f"weights-rank{rank}.safetensors") for rank in (0, 1)]
    # DDP keeps the two processes' copies identical
    assert all(torch.equal(ranks[0][key], ranks[1][key]) for key in reference)

    loose = _rounding_driven(trainer.networks)
    assert "generator.deconvolutions.0.bias" in loose
    differences = {key: (ranks[0][key].double() - value.double()).abs().max().item()
                   for key, value in reference.items() if key not in loose}
    worst = max(differences, key=differences.get)
    assert differences[worst] <= WEIGHT_TOLERANCE, (worst, differences[worst])

    with torch.no_grad():
        z = trainer.networks.project(data.inputs)
    z_two = _weights(two_process_run / "z.safetensors")["z"]
    assert (z_two - z).abs().max().item() <= Z_TOLERANCE
    assert torch.equal(z_two >= 0, z >= 0)  # the same codes

    # the logged figures are the global batch's, not a shard's
    two_history = json.loads((two_process_run / "history.json").read_text())
    assert len(two_history) == len(history) == 4
    for ours, theirs in zip(two_history, history):
        for key in ("loss_n", "loss_q", "loss_c", "loss_g", "loss_a", "d_real", "d_fake", "bit_balance"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-5), key


@pytest.mark.slow
def test_only_rank_zero_writes_checkpoints(two_process_run):
    assert not (two_process_run / "saved-by-rank1.txt").exists()
    saves = (two_process_run / "saved-by-rank0.txt").read_text().splitlines()
    assert len(saves) == 2  # one per beta stage
    state = json.loads((two_process_run / "checkpoints" / MANIFEST_FILE).read_text())
    assert state["next_stage"] == 2


@pytest.mark.slow
def test_resume_under_two_processes_gives_the_uninterrupted_result(two_process_run, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    stopped = _torchrun(tmp_path / "stopped", "--checkpoints", str(checkpoints), "--stop-at-stage", "1",
                        expect_success=False)
    assert stopped.returncode != 0
    assert json.loads((checkpoints / MANIFEST_FILE).read_text())["next_stage"] == 1

    _torchrun(tmp_path / "resumed", "--checkpoints", str(checkpoints), "--resume")
    uninterrupted = _weights(two_process_run / "weights-rank0.safetensors")
    resumed = _weights(tmp_path / "resumed" / "weights-rank0.safetensors")
    for key, value in uninterrupted.items():
        assert torch.equal(resumed[key], value), key
    z = _weights(tmp_path / "resumed" / "z.safetensors")["z"]
    assert torch.equal(z >= 0, _weights(two_process_run / "z.safetensors")["z"] >= 0)
    assert len(json.loads((tmp_path / "resumed" / "history.json").read_text())) == 4


@pytest.mark.slow
def test_train_command_under_torchrun_prints_and_writes_once(tmp_path):
    """`torchrun -m bganhash train`: both processes train, rank 0 alone scores, saves and prints."""
    np.save(tmp_path / "digits.npy", load_digits().data.astype(np.float32))
    args = ("-m", "bganhash", "train", "--features", str(tmp_path / "digits.npy"), "--bits", "8", "--compare",
            "lsh", "--set", "epochs_per_stage=1", "--set", "beta_schedule=[1, 4]", "--out", str(tmp_path / "run"),
            "--json")
    result = _torchrun(tmp_path, *args)
    document = json.loads(result.stdout)  # one JSON document: rank 1 printed nothing
    assert document["map"]["bgan"]["8"] > document["map"]["lsh"]["8"]
    assert result.stderr.count("BGAN   8 bits") == 1
    assert (tmp_path / "run" / "8bit" / "model" / "hasher.json").is_file()
    assert json.loads((tmp_path / "run" / "8bit" / "checkpoints" / MANIFEST_FILE).read_text())["next_stage"] == 2


@pytest.mark.slow
def test_paper_preset_under_torchrun_trains_scores_and_saves_once(tmp_path):
    """The paper preset (VGG encoder from pixels, at 1/16 width) through `torchrun -m bganhash train`."""
    np.save(tmp_path / "digits.npy", load_digits().data.astype(np.float32))
    args = ("-m", "bganhash", "train", "--features", str(tmp_path / "digits.npy"), "--bits", "16", "--compare",
            "lsh", "--preset", "paper", "--set", "device=cpu", "--set", "width_factor=0.0625", "--set",
            "head_hidden=[32]", "--set", "epochs_per_stage=1", "--set", "beta_schedule=[1]",
            "--out", str(tmp_path / "run"), "--json")
    result = _torchrun(tmp_path, *args)
    document = json.loads(result.stdout)  # one JSON document: rank 1 printed nothing
    assert 0 < document["map"]["bgan"]["16"] <= 1 and result.stderr.count("BGAN  16 bits") == 1
    saved = json.loads((tmp_path / "run" / "16bit" / "model" / "hasher.json").read_text())
    assert '"encoder": "vgg"' in json.dumps(saved)


# ---- pieces that need no second process ------------------------------------------------------------

def test_shards_cover_the_batch_in_order_and_weights_undo_the_average():
    index = np.array([9, 4, 7, 1, 0, 3, 8, 2, 6, 5])
    shards = [World(rank, 3).shard(index) for rank in range(3)]
    assert [len(s.rows) for s in shards] == [4, 3, 3]
    assert np.array_equal(np.concatenate([s.rows for s in shards]), index)
    assert [s.start for s in shards] == [0, 4, 7]
    # sum over ranks of weight_r * mean_r / N = the batch mean
    values = np.arange(10.0)
    means = [values[s.start:s.start + len(s.rows)].mean() for s in shards]
    assert sum(s.weight * m for s, m in zip(shards, means)) / 3 == pytest.approx(values.mean())
    one = World().shard(index)
    assert np.array_equal(one.rows, index) and one.weight == 1.0
    # the single-process strategy does nothing
    tensor = torch.randn(10, 2)
    assert one.whole_batch(tensor) is tensor and one.scale(tensor) is tensor
    assert one.batch_means({"a": 1.5}) == {"a": 1.5}
    assert torch.equal(shards[1].scale(tensor), shards[1].weight * tensor)


def test_batches_smaller_than_the_world_are_refused():
    with pytest.raises(InputError, match="batch_size=4 on 10 training rows gives batches of 3 rows, fewer than the 4"):
        World(0, 4).check_batches(10, 4)
    World(0, 3).check_batches(10, 4)


LAUNCH = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_launch_environment_is_read():
    assert read_launch_environment({}) == World()
    assert read_launch_environment({"MASTER_ADDR": "10.0.0.1"}) == World()  # not a launch by itself
    assert read_launch_environment(LAUNCH) == World(rank=1, size=2, local_rank=1)
    assert read_launch_environment({**LAUNCH, "RANK": "3", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}) == \
        World(rank=3, size=4, local_rank=1)


@pytest.mark.parametrize("changes, message", [
    ({"MASTER_PORT": ""}, "RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR set but MASTER_PORT not"),
    ({"LOCAL_RANK": None, "MASTER_ADDR": None}, "but LOCAL_RANK, MASTER_ADDR not; launch with torchrun"),
    ({"RANK": "one"}, r"\$RANK='one' must be a whole number"),
    ({"RANK": "2"}, "RANK=2 must be between 0 and WORLD_SIZE-1=1"),
    ({"WORLD_SIZE": "0", "RANK": "0"}, "WORLD_SIZE=0 must be at least 1"),
    ({"MASTER_PORT": "70000"}, "MASTER_PORT=70000 must be a TCP port"),
    ({"LOCAL_WORLD_SIZE": "3"}, "LOCAL_WORLD_SIZE=3 must be between 1 and WORLD_SIZE=2"),
    ({"LOCAL_WORLD_SIZE": "1"}, "LOCAL_RANK=1 must be between 0 and LOCAL_WORLD_SIZE-1=0"),
])
def test_inconsistent_launch_environment_is_refused(changes, message):
    environ = {k: v for k, v in {**LAUNCH, **changes}.items() if v is not None}
    with pytest.raises(InputError, match=message):
        read_launch_environment(environ)


def test_train_command_refuses_an_incomplete_launch_environment(tmp_path):
    from click.testing import CliRunner

    from bganhash.cli import main

    result = CliRunner().invoke(main, ["train", "--out", str(tmp_path)], env={"RANK": "0", "WORLD_SIZE": "2"})
    assert result.exit_code == 2
    assert "incomplete distributed launch: RANK, WORLD_SIZE set but LOCAL_RANK, MASTER_ADDR, MASTER_PORT not" \
        in result.output
