"""BGAN training checkpoints: a directory rewritten at the end of every beta stage, read to resume.

One checkpoint is one unit. Its parts, safetensors and JSON only (loading runs no code), are the networks'
state dict (weights), every optimiser's state (its tensors, and the rest as JSON), the run's configuration and
the per-epoch history; each is written under a new name (`weights-002-1a2b3c4d.safetensors`), and last
`checkpoint.json`, the manifest: the next stage to train, and the name, size and sha256 of every part, with a
checksum of its own. Its atomic replacement is the switch: a process killed at any point leaves the previous
checkpoint whole (its parts are deleted only after the switch), so a resume continues exactly from it, and a
part that does not match its checksum is refused.

Checkpoints written before this layout (fixed names, `state.json` written last) still resume, unverified,
with a warning.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import warnings
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from bganhash._io import (
    UnverifiedFileWarning,
    atomic_write,
    file_entry,
    read_json,
    read_safetensors,
    read_verified_json,
    verify_file,
    write_json,
    write_verified_json,
)
from bganhash._validation import InputError
from bganhash.bgan.config import BGANConfig, upgrade_config_document

MANIFEST_FILE = "checkpoint.json"  # written last: the checkpoint is what it names
FORMAT_NAME = "bganhash-checkpoint"
FORMAT_VERSION = 1
PARTS = {"weights": ".safetensors", "optimizer_tensors": ".safetensors", "optimizer": ".json", "config": ".json",
         "history": ".json"}
_PART_FILE = re.compile(r"^(weights|optimizer_tensors|optimizer|config|history)-\d{3,}-[0-9a-f]{8}"
                        r"\.(safetensors|json)$")
# the layout before checkpoint.json: fixed names, state.json written last (read, never written)
WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_TENSORS_FILE = "optimizer.safetensors"
OPTIMIZER_JSON_FILE = "optimizer.json"
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
HISTORY_FILE = "history.json"
LEGACY_FILES = {"weights": WEIGHTS_FILE, "optimizer_tensors": OPTIMIZER_TENSORS_FILE, "optimizer": OPTIMIZER_JSON_FILE,
                "config": CONFIG_FILE, "history": HISTORY_FILE}
WHAT = "a BGAN training checkpoint"
MACHINE_SETTINGS = ("device", "num_threads")  # where a run trains, not what it computes: may change on resume


def has_checkpoint(directory: Path | None) -> bool:
    """Whether `directory` holds a checkpoint (its manifest, or an earlier version's state.json)."""
    return directory is not None and ((Path(directory) / MANIFEST_FILE).is_file()
                                      or (Path(directory) / STATE_FILE).is_file())


def no_checkpoint_message(directory: Path) -> str:
    """Why a resume from `directory` starts from scratch, in words."""
    directory = Path(directory)
    if not directory.is_dir():
        found = f"{directory} does not exist"
    elif not any(directory.iterdir()):
        found = f"{directory} is empty"
    else:
        found = f"{directory} holds no complete checkpoint (no {MANIFEST_FILE})"
    return f"resume: {found}; training starts from scratch"


def save_checkpoint(directory: Path, networks: nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                    config: BGANConfig, history: list[dict[str, Any]], next_stage: int) -> None:
    """The parts under new names, then checkpoint.json naming them (the switch), then the old parts' removal."""
    directory = Path(directory)
    token = secrets.token_hex(4)
    names = {role: f"{role}-{next_stage:03d}-{token}{suffix}" for role, suffix in PARTS.items()}
    tensors, document = split_optimizer_states({name: o.state_dict() for name, o in optimizers.items()})
    write_tensors(directory / names["weights"], networks.state_dict())
    write_tensors(directory / names["optimizer_tensors"], tensors)
    write_json(directory / names["optimizer"], document)
    write_json(directory / names["config"], config.to_dict())
    write_json(directory / names["history"], history)
    write_verified_json(directory / MANIFEST_FILE, {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        "stage": next_stage - 1, "epoch": config.train.epochs_per_stage, "next_stage": next_stage,
        "files": {role: {"name": name, **file_entry(directory / name)} for role, name in names.items()},
    })
    _remove_other_parts(directory, keep=set(names.values()))


def checkpoint_files(directory: Path) -> dict[str, Path]:
    """The part files of the checkpoint in `directory` by role ("weights", "optimizer_tensors", "optimizer",
    "config", "history"), each checked against its checksum; InputError when any is missing or damaged."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        if (directory / STATE_FILE).is_file():
            warnings.warn(f"{directory} is a checkpoint written before checksums: resumed unverified",
                          UnverifiedFileWarning, stacklevel=2)
            return {role: directory / name for role, name in LEGACY_FILES.items()}
        raise InputError(f"{directory} holds no checkpoint ({MANIFEST_FILE} is missing)")
    manifest = read_verified_json(manifest_path, FORMAT_NAME, FORMAT_VERSION, WHAT, verified_since=1)
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(PARTS) or not all(
            isinstance(entry, dict) and isinstance(entry.get("name"), str) and _PART_FILE.match(entry["name"])
            for entry in files.values()):
        raise InputError(f"{manifest_path} is corrupted: it does not name the checkpoint's parts")
    if not isinstance(manifest.get("next_stage"), int) or isinstance(manifest["next_stage"], bool):
        raise InputError(f"{manifest_path} is corrupted: next_stage must be an integer")
    for entry in files.values():
        verify_file(directory / entry["name"], entry, manifest_path)
    return {role: directory / entry["name"] for role, entry in files.items()}


def load_checkpoint(directory: Path, networks: nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                    config: BGANConfig) -> tuple[list[dict[str, Any]], int]:
    """Restore `networks` and `optimizers` (in place) from `directory`, whose config must be `config`'s
    (machine settings aside); returns the saved history and the next stage to train."""
    directory = Path(directory)
    parts = checkpoint_files(directory)
    check_same_config(read_json(parts["config"], WHAT), config.to_dict(), directory)
    history = read_json(parts["history"], WHAT)
    if (directory / MANIFEST_FILE).is_file():
        next_stage = read_json(directory / MANIFEST_FILE, WHAT)["next_stage"]
    else:
        state = read_json(directory / STATE_FILE, WHAT)
        next_stage = state.get("next_stage") if isinstance(state, dict) else None
    if isinstance(next_stage, bool) or not isinstance(next_stage, int) or next_stage < 0 \
            or not isinstance(history, list):
        raise InputError(f"{directory} is corrupted: its stage or history is unreadable")
    try:
        networks.load_state_dict(read_tensors(parts["weights"]))
        states = join_optimizer_states(read_tensors(parts["optimizer_tensors"]), read_json(parts["optimizer"], WHAT))
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(states[name])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"cannot resume from {directory}: its weights or optimiser state do not fit this run "
                         f"({type(exc).__name__}: {exc})") from exc
    return history, next_stage


def _remove_other_parts(directory: Path, keep: set[str]) -> None:
    """Delete the parts of earlier checkpoints (and an earlier version's files): the manifest names others now."""
    legacy = (directory / STATE_FILE).is_file()
    with contextlib.suppress(FileNotFoundError):
        (directory / STATE_FILE).unlink()  # first: without it, the old files are no checkpoint
    for entry in directory.iterdir():
        ours = _PART_FILE.match(entry.name) or (legacy and entry.name in LEGACY_FILES.values())
        if ours and entry.name not in keep:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


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
    saved under a former name (a checkpoint of an earlier version) compare under their current name; fields
    added since compare at their default, which keeps the earlier behaviour."""
    if not isinstance(saved, dict) or not isinstance(saved.get("train"), dict):
        raise InputError(f"cannot resume from {directory}: its {CONFIG_FILE} is not a BGAN configuration")
    saved = upgrade_config_document(json.loads(json.dumps(saved)))
    saved = _with_added_fields(saved)
    current = json.loads(json.dumps(current))
    for setting in MACHINE_SETTINGS:
        saved["train"].pop(setting, None)
        current["train"].pop(setting, None)
    saved_flat, current_flat = _flatten(saved), _flatten(current)
    differences = sorted(k for k in set(saved_flat) | set(current_flat) if saved_flat.get(k) != current_flat.get(k))
    if differences:
        raise InputError(f"cannot resume from {directory}: its config differs in {differences}")


def _with_added_fields(document: dict[str, Any]) -> dict[str, Any]:
    """`document` with the fields it lacks (added after it was saved) at their defaults; as it was when it
    is not a valid configuration (the comparison then names what differs)."""
    try:
        filled = BGANConfig.from_dict(document).to_dict()
    except (InputError, TypeError):
        return document
    return {key: {**filled[key], **value} if isinstance(value, dict) and isinstance(filled.get(key), dict)
            else value for key, value in document.items()}


def _flatten(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}."""
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
