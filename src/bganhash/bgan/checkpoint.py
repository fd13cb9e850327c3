"""BGAN training checkpoints: a directory rewritten at the end of every beta stage, read to resume.

Files, each written atomically, safetensors and JSON only (loading runs no code): the networks' state
dict (`weights.safetensors`), every optimiser's state (its tensors in `optimizer.safetensors`, the rest
in `optimizer.json`), the run's configuration (`config.json`), the per-epoch history (`history.json`),
and last `state.json`, the next stage to train: a checkpoint counts only once that file exists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from bganhash._io import atomic_write, read_json, read_safetensors, write_json
from bganhash._validation import InputError
from bganhash.bgan.config import BGANConfig, upgrade_config_document

WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_TENSORS_FILE = "optimizer.safetensors"
OPTIMIZER_JSON_FILE = "optimizer.json"
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"  # written last: a checkpoint counts only once it exists
HISTORY_FILE = "history.json"
WHAT = "a BGAN training checkpoint"
MACHINE_SETTINGS = ("device", "num_threads")  # where a run trains, not what it computes: may change on resume


def has_checkpoint(directory: Path | None) -> bool:
    """Whether `directory` holds a complete checkpoint."""
    return directory is not None and (Path(directory) / STATE_FILE).is_file()


def save_checkpoint(directory: Path, networks: nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                    config: BGANConfig, history: list[dict[str, Any]], next_stage: int) -> None:
    """Weights, optimiser states, config, history, then state.json (after `next_stage` - 1 stages)."""
    directory = Path(directory)
    write_tensors(directory / WEIGHTS_FILE, networks.state_dict())
    tensors, document = split_optimizer_states({name: o.state_dict() for name, o in optimizers.items()})
    write_tensors(directory / OPTIMIZER_TENSORS_FILE, tensors)
    write_json(directory / OPTIMIZER_JSON_FILE, document)
    write_json(directory / CONFIG_FILE, config.to_dict())
    write_json(directory / HISTORY_FILE, history)
    write_json(directory / STATE_FILE, {"stage": next_stage - 1, "epoch": config.train.epochs_per_stage,
                                        "next_stage": next_stage})


def load_checkpoint(directory: Path, networks: nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                    config: BGANConfig) -> tuple[list[dict[str, Any]], int]:
    """Restore `networks` and `optimizers` (in place) from `directory`, whose config must be `config`'s
    (machine settings aside); returns the saved history and the next stage to train."""
    directory = Path(directory)
    check_same_config(read_json(directory / CONFIG_FILE, WHAT), config.to_dict(), directory)
    networks.load_state_dict(read_tensors(directory / WEIGHTS_FILE))
    states = join_optimizer_states(read_tensors(directory / OPTIMIZER_TENSORS_FILE),
                                   read_json(directory / OPTIMIZER_JSON_FILE, WHAT))
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(states[name])
    return read_json(directory / HISTORY_FILE, WHAT), int(read_json(directory / STATE_FILE, WHAT)["next_stage"])


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Tensors to a safetensors file, atomically (copied to the CPU, contiguous)."""
    with atomic_write(path, "wb") as handle:
        handle.write(safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors, on the CPU; InputError names a missing or damaged file."""
    return {name: torch.from_numpy(array) for name, array in read_safetensors(path, WHAT).items()}


def split_optimizer_states(states: dict[str, dict]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimiser state dicts -> tensors keyed 'name.param.key' (safetensors) + the rest (JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    document: dict[str, Any] = {}
    for name, state_dict in states.items():
        per_param: dict[str, dict[str, Any]] = {}
        for param_id, values in state_dict["state"].items():
            per_param[str(param_id)] = {}
            for key, value in values.items():
                if torch.is_tensor(value):
                    tensors[f"{name}.{param_id}.{key}"] = value.detach().cpu().contiguous()
                else:
                    per_param[str(param_id)][key] = value
        document[name] = {"param_groups": state_dict["param_groups"], "state": per_param}
    return tensors, document


def join_optimizer_states(tensors: dict[str, torch.Tensor], document: dict[str, Any]) -> dict[str, dict]:
    """Inverse of `split_optimizer_states`."""
    states: dict[str, dict] = {}
    for name, part in document.items():
        state = {int(param_id): dict(values) for param_id, values in part["state"].items()}
        states[name] = {"param_groups": part["param_groups"], "state": state}
    for key, value in tensors.items():
        name, param_id, field = key.split(".", 2)
        states[name]["state"][int(param_id)][field] = value
    return states


def check_same_config(saved: dict[str, Any], current: dict[str, Any], directory: Path) -> None:
    """Resuming with other settings would not continue the same run: name the differences. Fields
    saved under a former name (a checkpoint of an earlier version) compare under their current name."""
    if not isinstance(saved, dict) or not isinstance(saved.get("train"), dict):
        raise InputError(f"cannot resume from {directory}: its {CONFIG_FILE} is not a BGAN configuration")
    saved = upgrade_config_document(json.loads(json.dumps(saved)))
    current = json.loads(json.dumps(current))
    for setting in MACHINE_SETTINGS:
        saved["train"].pop(setting, None)
        current["train"].pop(setting, None)
    saved_flat, current_flat = _flatten(saved), _flatten(current)
    differences = sorted(k for k in set(saved_flat) | set(current_flat) if saved_flat.get(k) != current_flat.get(k))
    if differences:
        raise InputError(f"cannot resume from {directory}: its config differs in {differences}")


def _flatten(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}."""
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
