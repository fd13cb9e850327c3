"""The numbers published in Song (2017), "Binary Generative Adversarial Networks for Image Retrieval".

Copied exactly from the paper's tables (../shared/paper/bgan-song2017.md) so reports can print them
beside ours. mAP@all unless stated; the paper's features differ from ours (CNN/VGG/ResNet, official
CIFAR-10 pickles), which every report must say. `None` marks a cell the paper leaves empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

PAPER_BITS = (12, 24, 32, 48)

# Table 3: unsupervised methods, mAP at 12/24/32/48 bits. "+VGG" rows ran on VGG-fc7 features (the
# rows comparable to our baselines on pretrained CNN features); the others on hand-crafted features.
TABLE3 = {
    "cifar10": {
        "ITQ": (0.162, 0.169, 0.172, 0.175),
        "SH": (0.131, 0.135, 0.133, 0.130),
        "LSH": (0.121, 0.126, 0.120, 0.120),
        "Spherical": (0.138, 0.141, 0.146, 0.150),
        "ITQ+VGG": (0.196, 0.246, 0.289, 0.301),
        "SH+VGG": (0.174, 0.205, 0.220, 0.232),
        "LSH+VGG": (0.101, 0.128, 0.132, 0.169),
        "Spherical+VGG": (0.212, 0.247, 0.256, 0.281),
        "DeepBit": (0.185, 0.218, 0.248, 0.263),
        "DH": (0.160, 0.164, 0.166, 0.168),
        "BGAN": (0.401, 0.512, 0.531, 0.558),
    },
    "nuswide": {
        "ITQ": (0.452, 0.468, 0.472, 0.477),
        "SH": (0.433, 0.426, 0.426, 0.423),
        "LSH": (0.403, 0.421, 0.426, 0.441),
        "Spherical": (0.413, 0.413, 0.424, 0.431),
        "ITQ+VGG": (0.435, 0.435, 0.548, 0.435),
        "SH+VGG": (0.433, 0.426, 0.426, 0.423),
        "LSH+VGG": (0.401, 0.442, 0.480, 0.471),
        "Spherical+VGG": (0.549, 0.614, 0.653, 0.678),
        "DeepBit": (0.383, 0.401, 0.403, 0.412),
        "DH": (0.422, 0.448, 0.480, 0.493),
        "BGAN": (0.675, 0.690, 0.714, 0.728),
    },
    "mirflickr": {
        "ITQ": (0.544, 0.555, 0.560, 0.570),
        "SH": (0.531, 0.533, 0.531, 0.529),
        "LSH": (0.499, 0.513, 0.521, 0.548),
        "Spherical": (0.569, 0.559, 0.583, 0.572),
        "ITQ+VGG": (0.553, 0.548, 0.545, 0.560),
        "SH+VGG": (0.550, 0.544, 0.541, 0.545),
        "LSH+VGG": (0.543, 0.549, 0.555, 0.551),
        "Spherical+VGG": (0.552, 0.547, 0.546, 0.545),
        "DeepBit": (0.501, 0.505, 0.511, 0.513),
        "DH": (0.553, 0.548, 0.543, 0.556),
        "BGAN": (0.683, 0.702, 0.703, 0.703),
    },
}

# Which of our baselines each paper row corresponds to (the deep-feature rows; PCAH has no row).
TABLE3_COUNTERPART = {"itq": "ITQ+VGG", "sh": "SH+VGG", "lsh": "LSH+VGG", "sph": "Spherical+VGG", "bgan": "BGAN"}

# Table 2: loss-component ablation on CIFAR-10 at 24/32/48 bits ("-": codes collapse, not reported).
TABLE2_BITS = (24, 32, 48)
TABLE2 = {
    "N": (0.487, 0.511, 0.543),
    "C": (None, None, None),
    "A": (None, None, None),
    "N+C": (0.247, 0.379, 0.497),
    "N+A": (0.472, 0.503, 0.534),
    "C+A": (None, None, None),
    "N+C+A": (0.512, 0.531, 0.558),
}

# Table 4: sign approximation on CIFAR-10 at 24/32/48 bits.
TABLE4_BITS = (24, 32, 48)
TABLE4 = {
    "two_step": (0.512, 0.531, 0.558),
    "tanh": (0.542, 0.577, 0.586),
    "app": (0.537, 0.563, 0.581),
}

# Table 5: supervised methods on CIFAR-10 at 12/24/32/48 bits.
TABLE5 = {
    "ITQ-CCA": (0.435, 0.435, 0.435, 0.435),
    "KSH": (0.556, 0.572, 0.581, 0.588),
    "MLH": (0.500, 0.514, 0.520, 0.522),
    "DNNH": (0.674, 0.697, 0.713, 0.715),
    "CNNH": (0.611, 0.618, 0.625, 0.608),
    "DHN": (0.708, 0.735, 0.748, 0.758),
    "BGAN": (0.866, 0.874, 0.876, 0.877),
}

# Table 6: training and per-image testing time on CIFAR-10 (the paper's GPU).
TABLE6 = {"DH": {"training": "1 hour", "testing": "0.5 ms"}, "BGAN": {"training": "5h", "testing": "3 ms"}}

# Implementation details (Section 4.1.4): positives per image of S on CIFAR-10 / NUS-WIDE / Flickr.
POSITIVES_PER_IMAGE = {"cifar10": 400, "nuswide": 1021, "mirflickr": 1168}


def paper_row(table: dict, dataset: str, row: str, bits: int, bit_columns=PAPER_BITS) -> float | None:
    """The published value of `row` at `bits` in a per-dataset table, or None where there is none."""
    values = table.get(dataset, {}).get(row)
    if values is None or bits not in bit_columns:
        return None
    return values[bit_columns.index(bits)]


# ---- what the paper publishes on each dataset, as reports look it up ----------------------------------


@dataclass(frozen=True)
class Published:
    """One of the paper's mAP tables on one dataset: its bit lengths, its rows in the paper's order, and
    the text the paper prints instead of a number for some rows."""

    bits: tuple[int, ...]
    rows: Mapping[str, tuple[float | None, ...]]
    instead: Mapping[str, str] = field(default_factory=dict)

    def value(self, row: str, n_bits: int) -> float | None:
        """The published mAP of `row` at `n_bits` (None: no such row or bit length, or no number)."""
        values = self.rows.get(row)
        return None if values is None or n_bits not in self.bits else values[self.bits.index(n_bits)]


@dataclass(frozen=True)
class JpegCopy:
    """How reports describe a JPEG copy (a .zip) of the data the paper used."""

    label: str  # the data's name in report headings
    report_note: str  # the report's "what differs from the paper"
    table_note: str  # the note under a results table


@dataclass(frozen=True)
class PaperDataset:
    """A dataset the paper reports on: its name there, its published tables by experiment, and what our
    report says about the copy of its data it read."""

    name: str
    tables: Mapping[str, Published]
    data_note: str  # "what differs from the paper" when the data is not a JPEG copy
    jpeg: JpegCopy | None = None


_COLLAPSED = "– (codes collapse)"  # Table 2's rows without ℓN: the paper reports their codes as collapsed

DATASETS: dict[str, PaperDataset] = {
    "cifar10": PaperDataset(
        name="CIFAR-10",
        tables={
            "table2": Published(TABLE2_BITS, TABLE2, {row: _COLLAPSED for row in TABLE2 if "N" not in row.split("+")}),
            "table3": Published(PAPER_BITS, TABLE3["cifar10"]),
            "table4": Published(TABLE4_BITS, TABLE4),
            "table5": Published(PAPER_BITS, TABLE5),
        },
        data_note="Data: CIFAR-10 read from the official pickles the paper used.",
        jpeg=JpegCopy(
            label="CIFAR-10 (JPEG copy)",
            report_note="Data: a JPEG copy of CIFAR-10, whose pixels differ slightly from the official pickles "
                        "the paper used.",
            table_note="Data: CIFAR-10 (JPEG copy), whose pixels differ slightly from the official pickles.",
        ),
    ),
    "nuswide": PaperDataset(name="NUS-WIDE", tables={"table3": Published(PAPER_BITS, TABLE3["nuswide"])},
                            data_note="Data: the user's copy of nuswide."),
    "mirflickr": PaperDataset(name="MIRFlickr", tables={"table3": Published(PAPER_BITS, TABLE3["mirflickr"])},
                              data_note="Data: the user's copy of mirflickr."),
}


def published(dataset: str, experiment: str) -> Published | None:
    """The paper's table for `experiment` ("table2" ... "table5") on `dataset`, None where it has none."""
    entry = DATASETS.get(dataset)
    return None if entry is None else entry.tables.get(experiment)


def published_on(experiment: str) -> list[str]:
    """The paper's names of the datasets it reports `experiment` on."""
    return [entry.name for entry in DATASETS.values() if experiment in entry.tables]


def jpeg_copy(dataset: str, data: str | None) -> JpegCopy | None:
    """How to describe `data` when it is a JPEG copy (a .zip) of the data the paper used, else None."""
    entry = DATASETS.get(dataset)
    return entry.jpeg if entry is not None and str(data or "").endswith(".zip") else None
