"""The reproduction's plan: what a run is (its settings) and the cells it consists of.

A cell is one (experiment, method or variant, bit length) unit of work. BGAN cells are keyed by their
resolved configuration, so a variant shared by two tables (the full model is Table 2's N+C+A, Table 3's
BGAN and Table 4's app) is one cell, trained once, whose `roles` name every table place it fills.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from typing import Any

from bganhash._validation import InputError
from bganhash.registry import BASELINES
from bganhash.research import paper

EXPERIMENTS = ("table2", "table3", "table4", "table5", "table6", "figure2", "figure5")
# Figures 4 and 6 and the gallery are drawn from Table 3's cells.
ALIASES = {"figure4": "table3", "figure6": "table3", "gallery": "table3"}
BASELINE_METHODS = BASELINES  # Table 3's baselines, in the registry's order
FULL_MODEL: dict[str, Any] = {"use_neighborhood": True, "use_content": True, "use_adversarial": True}
AUTHORS_SUFFIX = "/authors"  # a Table 2 row trained the authors' way (adversarial_reaches_encoder)
SEED_SUFFIX = "/seed="  # a headline row's run under a further training seed: "bgan/seed=1"
DEFAULT_SEEDS = 3  # training seeds of the headline rows (Table 3's BGAN, Table 2's N+C+A, Table 4's app)
TABLE2_VARIANTS: dict[str, dict[str, Any]] = {  # Table 2's rows, in its order, then the authors' way
    "N": {"use_neighborhood": True, "use_content": False, "use_adversarial": False},
    "N+C": {"use_neighborhood": True, "use_content": True, "use_adversarial": False},
    "N+A": {"use_neighborhood": True, "use_content": False, "use_adversarial": True},
    "N+C+A": FULL_MODEL,
    "C": {"use_neighborhood": False, "use_content": True, "use_adversarial": False},
    "A": {"use_neighborhood": False, "use_content": False, "use_adversarial": True},
    "C+A": {"use_neighborhood": False, "use_content": True, "use_adversarial": True},
    # The authors' way: l_A reaches the encoder through the generator (under Eq. 18, the rows above, it
    # does not, so N+A equals N); the paper's N+A and N+C+A differ from N, so its code must do this.
    "N+A" + AUTHORS_SUFFIX: {"use_neighborhood": True, "use_content": False, "use_adversarial": True,
                             "adversarial_reaches_encoder": True},
    "N+C+A" + AUTHORS_SUFFIX: {**FULL_MODEL, "adversarial_reaches_encoder": True},
}
TABLE4_VARIANTS: dict[str, dict[str, Any]] = {
    # two-step: no quantisation term (it would pull z to the signs during training: not a two-step method)
    "two_step": {"activation": "two_step", "quantization_weight": 0.0},
    "tanh": {"activation": "tanh"}, "app": {"activation": "app"},
}
SUPERVISED: dict[str, Any] = {"supervised": True}
FIGURE_BITS = 32  # Figures 5 and 6 and the gallery use this bit length when it is run


@dataclass(frozen=True)
class QuickSettings:
    """What `--quick` narrows: a random subset of the split, one bit length, one epoch per beta stage."""

    n_query: int = 200
    n_train: int = 2000
    n_database: int = 5000
    bits: tuple[int, ...] = (FIGURE_BITS,)
    overrides: dict[str, Any] = field(default_factory=lambda: {"epochs_per_stage": 1})


@dataclass
class ReproduceSettings:
    """Everything that defines a reproduction run (the first six fields are its identity, see `identity`)."""

    dataset: str
    data: str | None = None
    features_path: str | None = None
    seed: int = 0
    preset: str = "auto"
    quick: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    split_path: str | None = None
    feature_config: Any = None
    only: tuple[str, ...] | None = None
    bits: tuple[int, ...] | None = None
    quick_settings: QuickSettings = field(default_factory=QuickSettings)
    protocol: str | None = None  # the split's protocol (None: the dataset's default, "paper" for CIFAR-10)
    seeds: int | None = None  # training seeds of the headline rows (None: DEFAULT_SEEDS, 1 under --quick)

    def identity(self) -> dict[str, Any]:
        """What must not change between a run and its resumption (narrowing options may)."""
        features = self.feature_config
        return {"dataset": self.dataset, "data": self.data, "features": self.features_path, "seed": self.seed,
                "preset": self.preset, "quick": self.quick, "overrides": self.overrides, "split": self.split_path,
                "feature_config": asdict(features) if is_dataclass(features) else features,
                **({"protocol": self.protocol} if self.protocol is not None else {})}  # older runs have none

    def training_seeds(self) -> tuple[int, ...]:
        """The headline rows' training seeds: --seed, then the next ones (the split stays --seed's)."""
        count = self.seeds if self.seeds is not None else (1 if self.quick else DEFAULT_SEEDS)
        return tuple(range(self.seed, self.seed + max(1, count)))

    def bgan_overrides(self, variant: dict[str, Any]) -> dict[str, Any]:
        """Quick settings, then the user's overrides, then the variant's own fields."""
        return {**(self.quick_settings.overrides if self.quick else {}), **self.overrides, **variant}


@dataclass
class Cell:
    """One unit of work; `roles` are the (experiment, row, bits) table places its result fills."""

    id: str
    kind: str  # "baseline" | "bgan" | "convergence" | "figure2" | "timing"
    label: str
    params: dict[str, Any]
    roles: list[tuple[str, str, int]] = field(default_factory=list)


def parse_only(values: str | None) -> tuple[str, ...] | None:
    """"table3,figure2" -> ("table3", "figure2"); figure4/figure6/gallery mean table3."""
    if values is None:
        return None
    names = [v.strip().lower() for v in values.split(",") if v.strip()]
    unknown = [n for n in names if n not in EXPERIMENTS and n not in ALIASES]
    if unknown or not names:
        choices = ", ".join((*EXPERIMENTS, *ALIASES))
        raise InputError(f"--only {values!r}: unknown experiment(s) {unknown}; choose from {choices}")
    return tuple(dict.fromkeys(ALIASES.get(n, n) for n in names))


def experiment_bits(settings: ReproduceSettings, experiment: str) -> tuple[int, ...]:
    """The bit lengths an experiment runs at: --bits, else the quick bit length, else the paper's."""
    if settings.bits:
        return tuple(settings.bits)
    if settings.quick:
        return settings.quick_settings.bits
    return paper.TABLE2_BITS if experiment in ("table2", "table4") else paper.PAPER_BITS


def build_plan(settings: ReproduceSettings) -> list[Cell]:
    """The cells of the requested experiments, shared cells merged (their roles joined), in run order."""
    experiments = settings.only or EXPERIMENTS
    return _merge(_experiment_cells(settings, e, experiment_bits(settings, e)) for e in experiments)


def report_plan(settings: ReproduceSettings, requested: dict[str, list[int]]) -> list[Cell]:
    """Every cell any run into this folder asked for: `requested` maps experiment -> bit lengths."""
    groups = []
    for experiment, bits in requested.items():
        # one convergence run per bit length asked for (a run picks one of its bit lengths)
        lists = [(b,) for b in bits] if experiment == "figure5" else [tuple(bits)]
        groups += [_experiment_cells(settings, experiment, chosen) for chosen in lists]
    return _merge(groups)


def _merge(groups) -> list[Cell]:
    cells: dict[str, Cell] = {}
    for group in groups:
        for cell in group:
            if cell.id in cells:
                cells[cell.id].roles.extend(cell.roles)
            else:
                cells[cell.id] = cell
    return list(cells.values())


def _experiment_cells(settings: ReproduceSettings, experiment: str, bits: tuple[int, ...]) -> list[Cell]:
    if experiment == "table2":
        return [_bgan_cell(settings, experiment, row, b, v) for row, v in TABLE2_VARIANTS.items() for b in bits] + \
            _further_seeds(settings, experiment, "N+C+A", bits, FULL_MODEL)
    if experiment == "table3":
        return [_bgan_cell(settings, experiment, "bgan", b, FULL_MODEL) for b in bits] + [
            Cell(f"{method}-{b}b", "baseline", f"table3 {method} {b} bits", {"method": method, "bits": b},
                 [(experiment, method, b)]) for method in BASELINE_METHODS for b in bits] + \
            _further_seeds(settings, experiment, "bgan", bits, FULL_MODEL)
    if experiment == "table4":
        return [_bgan_cell(settings, experiment, row, b, v) for row, v in TABLE4_VARIANTS.items() for b in bits] + \
            _further_seeds(settings, experiment, "app", bits, TABLE4_VARIANTS["app"])
    if experiment == "table5":
        return [_bgan_cell(settings, experiment, "BGAN_s", b, SUPERVISED) for b in bits]
    if experiment == "table6":
        return [_bgan_cell(settings, experiment, "bgan", b, FULL_MODEL) for b in bits] + [
            Cell("timing", "timing", "table6 backbone timing", {}, [(experiment, "backbone", 0)])]
    if experiment == "figure2":
        return [Cell("figure2", "figure2", "figure2 neighbourhood precision", {}, [(experiment, "curve", 0)])]
    figure_bits = FIGURE_BITS if FIGURE_BITS in bits else bits[0]
    cell = _bgan_cell(settings, experiment, "convergence", figure_bits, FULL_MODEL)
    return [replace(cell, id="convergence-" + cell.id, kind="convergence")]


def _further_seeds(settings: ReproduceSettings, experiment: str, row: str, bits: tuple[int, ...],
                   variant: dict) -> list[Cell]:
    """A headline row's cells under the training seeds after --seed (the same cells in every table)."""
    return [_bgan_cell(settings, experiment, f"{row}{SEED_SUFFIX}{seed}", b, variant, seed)
            for seed in settings.training_seeds()[1:] for b in bits]


def _bgan_cell(settings: ReproduceSettings, experiment: str, row: str, n_bits: int, variant: dict,
               seed: int | None = None) -> Cell:
    """A BGAN training cell, identified by the digest of its resolved configuration (its seed included)."""
    overrides = codes_equivalent(settings.bgan_overrides(variant))
    config = bgan_hasher(settings, n_bits, overrides, seed).resolved_config().to_dict()
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    params = {"bits": n_bits, "overrides": overrides, "config": config, **({} if seed is None else {"seed": seed})}
    return Cell(f"bgan-{n_bits}b-{digest}", "bgan", f"{experiment} {row} {n_bits} bits", params,
                [(experiment, row, n_bits)])


def codes_equivalent(overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` with l_A dropped where it cannot reach the codes (Eq. 18's reading without l_C: the
    encoder descends l_N alone, so the run trains bit-identical codes to l_N's and is that cell)."""
    if overrides.get("use_adversarial") and overrides.get("use_neighborhood", True) and \
            not overrides.get("use_content", True) and not overrides.get("adversarial_reaches_encoder", False):
        return {**overrides, "use_adversarial": False}
    return overrides


def bgan_hasher(settings: ReproduceSettings, n_bits: int, overrides: dict[str, Any], seed: int | None = None):
    """The (unfitted) BGANHasher of a run's settings with a variant's `overrides` (trained under `seed`,
    default the run's --seed)."""
    from bganhash.bgan.estimator import BGANHasher  # torch

    return BGANHasher(n_bits, preset=settings.preset, random_state=settings.seed if seed is None else seed,
                      feature_config=settings.feature_config, **overrides)
