"""Image collections behind one interface (`Dataset`), their readers, and the evaluation splits."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from bganhash._validation import InputError
from bganhash.datasets.base import Dataset, check_on_error
from bganhash.datasets.cifar10 import CIFAR10_CLASSES, OFFICIAL_MD5, OFFICIAL_URL, download_cifar10, load_cifar10
from bganhash.datasets.digits import load_digits_dataset
from bganhash.datasets.folder import load_folder
from bganhash.datasets.images import IMAGE_EXTENSIONS, convert_to_rgb
from bganhash.datasets.multilabel import load_mirflickr, load_nuswide
from bganhash.datasets.splits import Split, protocol_split, validation_split

_READERS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits_dataset,
    "cifar10": load_cifar10,
    "folder": load_folder,
    "nuswide": load_nuswide,
    "mirflickr": load_mirflickr,
}
DATASETS = tuple(_READERS)


def load_dataset(
    name: str,
    data: str | os.PathLike | None = None,
    *,
    on_error: str = "skip",
    download: bool = False,
    **options: Any,
) -> Dataset:
    """Open dataset `name` (one of DATASETS) from `data` (a folder, zip or tarball; digits needs none).

    on_error: "skip" (record in Dataset.bad_files and warn once) or "raise" for unreadable images.
    download: only cifar10 can fetch its official tarball (into $BGANHASH_CACHE or ~/.cache/bganhash).
    options: reader-specific keywords (folder: labels, validate; nuswide: images_dir, n_concepts, validate;
    mirflickr: images_dir, annotations_dir, validate).
    """
    if name not in _READERS:
        raise InputError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    check_on_error(on_error)
    reader = _READERS[name]
    accepted = inspect.signature(reader).parameters
    arguments = dict(options)
    if "on_error" in accepted:
        arguments["on_error"] = on_error
    if download:
        if "download" not in accepted:
            raise InputError(f"only CIFAR-10 can be downloaded (download=True; CLI: --download), not {name!r}: "
                             "pass data=PATH (CLI: --data PATH) with a copy you have")
        arguments["download"] = True
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        allowed = sorted(set(accepted) - {"data", "path", "on_error", "download"})
        raise InputError(f"unknown option(s) {unknown} for dataset {name!r}; it accepts {allowed or 'none'}")
    if name == "digits":
        if data is not None:
            raise InputError("the digits dataset is embedded in scikit-learn; it takes no data path")
        return reader(**arguments)
    if data is None and name != "cifar10":
        raise InputError(f"dataset {name!r} needs its data: pass data=PATH (CLI: --data PATH), the folder or zip "
                         "that holds it")
    return reader(data, **arguments)


__all__ = [
    "CIFAR10_CLASSES", "DATASETS", "Dataset", "IMAGE_EXTENSIONS", "OFFICIAL_MD5", "OFFICIAL_URL", "Split",
    "convert_to_rgb", "download_cifar10", "load_dataset", "protocol_split", "validation_split",
]  # fmt: skip
