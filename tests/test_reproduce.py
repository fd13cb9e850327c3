"""`bganhash reproduce`: the plan, resume, narrowing, and the whole command on digits and on small
datasets generated in the CIFAR-10, NUS-WIDE and MIRFlickr layouts."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bganhash._validation import InputError
from bganhash.cli._common import CleanErrors
from bganhash.cli.reproduce import reproduce
from bganhash.datasets import load_dataset, protocol_split
from bganhash.research import paper
from bganhash.research.cells import decode_array, encode_array
from bganhash.research.document import Document
from bganhash.research.plan import EXPERIMENTS, ReproduceSettings, build_plan, parse_only

# One bit length, two short beta stages and a small head keep each BGAN training to a second or two.
TINY = ("--quick", "--bits", "8", "--set", "beta_schedule=[1.0,10.0]", "--set", "head_hidden=[32]")
FILES = ("report.md", "report.html", "results.json", "split.json", "config.json", "versions.json", "run.json")


@click.group(cls=CleanErrors)
def _cli() -> None:
    """A group holding only the command under test (the lead registers it in bganhash.cli)."""


_cli.add_command(reproduce)


def run(*args: str):
    return CliRunner().invoke(_cli, ["reproduce", *map(str, args)])


def _labelled_features(labels: np.ndarray, rng, n_features: int = 48) -> np.ndarray:
    """Features that carry the labels (a class direction each) plus noise."""
    onehot = labels if labels.ndim == 2 else np.eye(int(labels.max()) + 1)[labels]
    directions = rng.normal(size=(onehot.shape[1], n_features))
    return (onehot @ directions + 0.3 * rng.normal(size=(len(labels), n_features))).astype(np.float32)


def _inputs(tmp_path: Path, dataset, rng, n_query: int, n_train: int) -> tuple[Path, Path]:
    """A features .npy and a small random split for `dataset` (the paper's split needs thousands)."""
    features, split = tmp_path / "features.npy", tmp_path / "split-in.json"
    np.save(features, _labelled_features(dataset.labels, rng))
    protocol_split(dataset, protocol="random", n_query=n_query, n_train=n_train).save(split)
    return features, split


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """The whole command on digits (a small split), run twice into one folder: (out, first, second)."""
    tmp = tmp_path_factory.mktemp("digits")
    features, split = _inputs(tmp, load_dataset("digits"), np.random.default_rng(0), 40, 300)
    out = tmp / "out"
    first = run("--dataset", "digits", "--features", features, "--split", split, "--out", out, *TINY)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    second = run("--dataset", "digits", "--features", features, "--split", split, "--out", out, *TINY)
    return out, first, second, mtimes, (features, split)


@pytest.mark.parametrize("text, expected", [
    ("table3", ("table3",)), ("figure4,gallery,figure6", ("table3",)), ("table2, figure5", ("table2", "figure5")),
])  # fmt: skip
def test_parse_only_maps_figures_to_their_tables(text, expected):
    assert parse_only(text) == expected


@pytest.mark.parametrize("text", ["table9", "", "table3,nope"])
def test_parse_only_rejects_unknown_experiments(text):
    with pytest.raises(InputError, match="choose from"):
        parse_only(text)


def test_plan_trains_a_configuration_shared_by_tables_once():
    plan = build_plan(ReproduceSettings(dataset="digits", preset="cpu"))
    roles = [role for cell in plan for role in cell.roles]
    assert len(roles) == len(set(roles))
    ids = [cell.id for cell in plan]
    assert len(ids) == len(set(ids))
    owner = {role: cell for cell in plan for role in cell.roles}
    # the full model is Table 2's N+C+A, Table 3's BGAN and Table 6's timing run
    assert owner[("table2", "N+C+A", 32)] is owner[("table3", "bgan", 32)] is owner[("table6", "bgan", 32)]
    # Table 4's app is the same training exactly when its resolved config equals the full model's
    same = owner[("table4", "app", 32)].params["config"] == owner[("table3", "bgan", 32)].params["config"]
    assert (owner[("table4", "app", 32)] is owner[("table3", "bgan", 32)]) == same
    assert owner[("table2", "N", 24)] is not owner[("table2", "N+C", 24)]
    # under Eq. 18, N+A trains l_N's codes (tests/test_bgan.py checks it): one cell; the authors' way is its own
    assert owner[("table2", "N+A", 24)] is owner[("table2", "N", 24)]
    assert owner[("table2", "N+A/authors", 24)] is not owner[("table2", "N", 24)]
    assert {b for (e, _, b) in roles if e == "table2"} == set(paper.TABLE2_BITS)
    assert {b for (e, _, b) in roles if e == "table3"} == set(paper.PAPER_BITS)
    assert {e for (e, _, _) in roles} == set(EXPERIMENTS)


def test_plan_narrows_to_only_and_bits():
    plan = build_plan(ReproduceSettings(dataset="digits", preset="cpu", only=("table3",), bits=(16,), seeds=1))
    assert sorted(cell.id for cell in plan if cell.kind == "baseline") == sorted(
        f"{m}-16b" for m in ("lsh", "pcah", "itq", "sh", "sph"))
    assert {role for cell in plan for role in cell.roles} == {("table3", m, 16) for m in
                                                              ("bgan", "lsh", "pcah", "itq", "sh", "sph")}


def test_plan_trains_the_headline_rows_under_three_seeds_once_each():
    plan = build_plan(ReproduceSettings(dataset="digits", preset="cpu"))
    owner = {role: cell for cell in plan for role in cell.roles}
    for seed in (1, 2):
        cell = owner[("table3", f"bgan/seed={seed}", 32)]
        assert cell is owner[("table2", f"N+C+A/seed={seed}", 32)]  # one training fills both tables
        assert cell.params["seed"] == seed and cell.params["config"]["train"]["seed"] == seed
        assert cell.id != owner[("table3", "bgan", 32)].id
    assert ("table3", "bgan/seed=3", 32) not in owner
    assert not any("/seed=" in row for cell in build_plan(ReproduceSettings(dataset="digits", quick=True))
                   for _, row, _ in cell.roles)  # --quick: one seed unless --seeds says otherwise
    two = build_plan(ReproduceSettings(dataset="digits", seed=5, seeds=2, only=("table3",), bits=(16,)))
    assert sorted(c.params["config"]["train"]["seed"] for c in two if c.kind == "bgan") == [5, 6]


def test_further_seeds_fold_into_mean_and_sample_std():
    from bganhash.research.results import fold_seeds, seed_value

    def result(seed, value):
        return {"config": {"train": {"seed": seed}}, "map": value, "map_at_1000": value + 0.1, "distinct_codes": 9}

    folded = fold_seeds({("table3", "bgan", 8): result(0, 0.40), ("table3", "bgan/seed=1", 8): result(1, 0.44),
                         ("table3", "bgan/seed=2", 8): result(2, 0.42), ("table3", "itq", 8): result(0, 0.3),
                         ("table2", "N+C+A/seed=1", 8): result(1, 0.5)})  # its first seed is not there yet
    assert set(folded) == {("table3", "bgan", 8), ("table3", "itq", 8)}
    bgan = folded[("table3", "bgan", 8)]
    assert [entry["seed"] for entry in bgan["per_seed"]] == [0, 1, 2]
    assert seed_value(bgan) == pytest.approx(0.42) and bgan["seeds_summary"]["map_std"] == pytest.approx(0.02)
    assert seed_value(bgan, "map_at_1000") == pytest.approx(0.52)
    assert seed_value(folded[("table3", "itq", 8)]) == 0.3 and "per_seed" not in folded[("table3", "itq", 8)]


def test_uint8_arrays_round_trip_through_json():
    array = np.random.default_rng(0).integers(0, 256, size=(3, 4, 5, 3), dtype=np.uint8)
    document = json.loads(json.dumps(encode_array(array)))
    assert np.array_equal(decode_array(document), array)


def test_html_is_self_contained_and_escaped(tmp_path):
    Image.new("RGB", (4, 3), (255, 0, 0)).save(tmp_path / "a.png")
    doc = Document()
    doc.heading(1, "Title <x>")
    doc.paragraph("some **bold** and `code` & more")
    doc.table(["a", "b"], [["1", "<2>"]])
    doc.image("a.png", "caption")
    page = doc.html(tmp_path, "t")
    assert "&lt;x&gt;" in page and "<strong>bold</strong>" in page and "<code>code</code>" in page
    assert "data:image/png;base64," in page and 'src="a.png"' not in page and "http" not in page
    markdown = doc.markdown()
    assert "| 1 | <2> |" in markdown and "![caption](a.png)" in markdown


@pytest.mark.slow
def test_digits_run_writes_every_file_and_our_numbers(digits_run):
    out, first, _, _, _ = digits_run
    assert first.exit_code == 0, first.output
    for name in FILES:
        assert (out / name).is_file(), name
    for name in ("figure2.png", "figure4-8bits.png", "figure5-8bits.png", "figure6.png", "gallery.png"):
        with Image.open(out / "figures" / name) as image:
            assert image.format == "PNG" and min(image.size) > 100
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert "QUICK RUN" in report and "Hamming distance, ties broken by database order" in report
    for method, row in results["tables"]["table3"]["ours"].items():
        assert f"{row['8']:.3f}" in report, method
    for row, values in results["tables"]["table2"]["rows"].items():
        assert values["8"]["map"] is not None, row
    collapsed = results["tables"]["table2"]["rows"]["C+A"]["8"]
    assert f"{collapsed['distinct_codes']} of {collapsed['n_database']} distinct codes" in report
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "<img src=\"figures" not in html
    assert "[cell 1/19]" in first.output and "elapsed" in first.output and "estimate" in first.output
    split = json.loads((out / "split.json").read_text())
    assert len(split["query"]) == 40 and len(split["train"]) == 300
    assert {"python", "torch", "numpy", "bganhash", "machine"} <= set(json.loads((out / "versions.json").read_text()))
    configs = json.loads((out / "config.json").read_text())["bgan"]
    assert configs and all(c["train"]["epochs_per_stage"] == 1 and c["n_bits"] == 8 for c in configs.values())


@pytest.mark.slow
def test_digits_report_names_its_protocol_preset_and_readings(digits_run):
    out, first, _, _, _ = digits_run
    assert first.exit_code == 0, first.output
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    for heading in ("Table 2", "Table 3", "Table 4", "Table 6"):
        line = next(line for line in report.splitlines() if line.startswith(f"## {heading}"))
        assert "random/quick protocol" in line, line  # the split's protocol, in every table
    rows = results["tables"]["table2"]["rows"]
    assert {"N+A/authors", "N+C+A/authors"} <= set(rows)
    assert "ℓN + ℓA (Eq. 18)" in report and "ℓN + ℓA (authors' way: ℓA reaches the encoder)" in report
    assert rows["N+A"]["8"]["map"] == rows["N"]["8"]["map"]  # under Eq. 18 ℓA never reaches the encoder
    assert rows["N+A/authors"]["8"]["map"] != rows["N+A"]["8"]["map"]
    cells = results["cells"].values()
    two_step = [c for c in cells if c.get("config", {}).get("loss", {}).get("activation") == "two_step"]
    assert two_step and all(c["config"]["loss"]["quantization_weight"] == 0.0 for c in two_step)
    at_1000 = results["tables"]["table3"]["ours_map_at_1000"]
    assert all(0 < at_1000[m]["8"] <= 1 for m in at_1000) and "mAP@1000" in report
    assert "Preset `cpu`" in report and "Preset `paper`" not in report and "momentum 0.9" in report
    assert "non-saturating" in report
    assert "not end to end" in report  # the features were given precomputed: said, not hidden


@pytest.mark.slow
def test_digits_second_run_recomputes_nothing(digits_run):
    out, first, second, mtimes, _ = digits_run
    assert second.exit_code == 0, second.output
    cells = 19  # Table 2 N+A shares N's cell (Eq. 18): 19 cells, as "[cell 1/19]" above
    assert f"{cells} cells (0 computed now, {cells} kept)" in second.output
    assert second.output.count("done earlier, kept") == cells
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == mtimes
    assert not (out / "checkpoints").exists()


@pytest.mark.slow
def test_resuming_with_other_settings_is_refused(digits_run):
    out, _, _, _, (features, split) = digits_run
    result = run("--dataset", "digits", "--features", features, "--split", split, "--out", out, "--seed", "1", *TINY)
    assert result.exit_code == 2 and "seed" in result.output and "another --out" in result.output


@pytest.mark.slow
def test_only_table3_narrows_the_run_and_the_report(tmp_path, rng):
    features, split = _inputs(tmp_path, load_dataset("digits"), rng, 40, 300)
    out = tmp_path / "out"
    result = run("--dataset", "digits", "--features", features, "--split", split, "--out", out,
                 "--only", "table3", "--jobs", "1", *TINY)  # in this process, where warnings reach the output
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.output  # a new cell is no failed resume ("starts from scratch")
    names = sorted(p.stem for p in (out / "cells").iterdir())
    assert len(names) == 6 and sum(n.startswith("bgan-8b-") for n in names) == 1
    report = (out / "report.md").read_text()
    assert "Table 3" in report and "Table 2" not in report and "Table 5" not in report


@pytest.mark.slow
def test_seeds_report_mean_and_std_with_every_seed_in_the_json(tmp_path, rng):
    features, split = _inputs(tmp_path, load_dataset("digits"), rng, 40, 300)
    out = tmp_path / "out"
    result = run("--dataset", "digits", "--features", features, "--split", split, "--out", out,
                 "--only", "table3", "--seeds", "2", *TINY)
    assert result.exit_code == 0, result.output
    table = json.loads((out / "results.json").read_text())["tables"]["table3"]
    runs = table["ours_per_seed"]["bgan"]["8"]
    assert [r["seed"] for r in runs] == [0, 1] and runs[0]["map"] != runs[1]["map"]
    assert table["ours"]["bgan"]["8"] == pytest.approx(np.mean([r["map"] for r in runs]))
    std = np.std([r["map"] for r in runs], ddof=1)
    report = (out / "report.md").read_text()
    assert f"{table['ours']['bgan']['8']:.3f} ± {std:.3f}" in report and "over 2 training seeds" in report


@pytest.mark.slow
def test_cells_in_worker_processes_give_the_numbers_of_a_serial_run(tmp_path, rng):
    features, split = _inputs(tmp_path, load_dataset("digits"), rng, 40, 300)
    tables = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        result = run("--dataset", "digits", "--features", features, "--split", split, "--out", out,
                     "--only", "table3", "--jobs", jobs, *TINY)
        assert result.exit_code == 0, result.output
        tables[jobs] = json.loads((out / "results.json").read_text())["tables"]["table3"]["ours"]
    assert "done in" in result.output and "timing" not in result.output  # table3 has no timing cell
    assert tables["1"] == tables["2"] and tables["1"]["bgan"]["8"] > 0


def _cifar10_zip(path: Path, rng, per_class: int = 8) -> None:
    """A CIFAR-10 JPEG zip in the official image-folder layout: train/<class>/*.jpg, 16x16."""
    from bganhash.datasets import CIFAR10_CLASSES

    with zipfile.ZipFile(path, "w") as archive:
        for label, name in enumerate(CIFAR10_CLASSES):
            for i in range(per_class):
                buffer = io.BytesIO()
                colour = rng.integers(0, 256, size=3, dtype=np.uint8) // 4 + np.uint8(20 * label)
                Image.fromarray(np.broadcast_to(colour, (16, 16, 3)).copy()).save(buffer, format="JPEG")
                archive.writestr(f"cifar10/train/{name}/{i:04d}.jpg", buffer.getvalue())


@pytest.mark.slow
def test_cifar10_layout_puts_the_papers_numbers_beside_ours(tmp_path, rng):
    data = tmp_path / "cifar10-jpg.zip"
    _cifar10_zip(data, rng)
    features, split = _inputs(tmp_path, load_dataset("cifar10", data), rng, 20, 50)
    out = tmp_path / "out"
    result = run("--dataset", "cifar10", "--data", data, "--features", features, "--split", split, "--out", out,
                 "--only", "table2,table3,table4,table5,table6", *TINY[:1], "--bits", "24", *TINY[3:])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "CIFAR-10 (JPEG copy)" in report
    for row, values in paper.TABLE3["cifar10"].items():
        assert f"| {row} (paper) | {values[paper.PAPER_BITS.index(24)]:.3f} |" in report
    for table, bits in ((paper.TABLE2, paper.TABLE2_BITS), (paper.TABLE4, paper.TABLE4_BITS)):
        for values in table.values():
            if values[0] is not None:
                assert f"{values[bits.index(24)]:.3f}" in report
    for row, values in paper.TABLE5.items():
        assert f"| {row} (paper) | {values[paper.PAPER_BITS.index(24)]:.3f} |" in report
    assert "– (codes collapse)" in report and paper.TABLE6["BGAN"]["training"] in report
    assert "one training run of the full model each, trained " in report and " thread each." in report
    ours = json.loads((out / "results.json").read_text())["tables"]["table3"]["ours"]["itq"]["24"]
    assert f"| ITQ (ours) | {ours:.3f} |" in report


def _nuswide(root: Path, rng, n_images: int = 60) -> None:
    """NUS-WIDE's layout: ImageList/Imagelist.txt, Groundtruth/AllLabels/Labels_<c>.txt, Flickr/<dir>/<file>."""
    concepts = [f"concept{k:02d}" for k in range(21)]
    labels = (rng.random((n_images, 21)) < 0.15).astype(np.uint8)
    labels[np.arange(n_images), rng.integers(0, 21, n_images)] = 1
    members = [f"{concepts[i % 21]}/{i:04d}_{1000 + i}.jpg" for i in range(n_images)]
    (root / "ImageList").mkdir(parents=True)
    (root / "ImageList" / "Imagelist.txt").write_text("\r\n".join(m.replace("/", "\\") for m in members) + "\r\n")
    (root / "Groundtruth" / "AllLabels").mkdir(parents=True)
    for column, name in enumerate(concepts):
        (root / "Groundtruth" / "AllLabels" / f"Labels_{name}.txt").write_text(
            "\r\n".join(str(v) for v in labels[:, column]) + "\r\n")
    for i, member in enumerate(members):
        _image(root / "Flickr" / member, rng, (16 + 4 * (i % 3), 16))


def _mirflickr(root: Path, rng, n_images: int = 60) -> None:
    """MIRFlickr-25K's layout: mirflickr/im<id>.jpg and mirflickr25k_annotations_v080/<concept>.txt."""
    for image_id in range(1, n_images + 1):
        _image(root / "mirflickr" / f"im{image_id}.jpg", rng, (20, 16 + 4 * (image_id % 2)))
    annotations = root / "mirflickr25k_annotations_v080"
    annotations.mkdir()
    for concept in ("sky", "water", "people", "night", "tree"):
        ids = sorted(rng.choice(np.arange(1, n_images + 1), size=n_images // 3, replace=False))
        (annotations / f"{concept}.txt").write_text("\r\n".join(map(str, ids)) + "\r\n")


def _image(path: Path, rng, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.mark.slow
@pytest.mark.parametrize("name, make, bgan_row", [("nuswide", _nuswide, "BGAN"), ("mirflickr", _mirflickr, "BGAN")])
def test_multilabel_datasets_run_through_the_same_command(tmp_path, rng, name, make, bgan_row):
    root = tmp_path / name
    make(root, rng)
    dataset = load_dataset(name, root)
    assert dataset.multilabel
    features, split = _inputs(tmp_path, dataset, rng, 10, 40)
    out = tmp_path / "out"
    result = run("--dataset", name, "--data", root, "--features", features, "--split", split, "--out", out, *TINY[:1],
                 "--bits", "32", *TINY[3:])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    published = paper.TABLE3[name][bgan_row][paper.PAPER_BITS.index(32)]
    assert f"| {bgan_row} (paper) | {published:.3f} |" in report
    assert (out / "figures" / "gallery.png").is_file() and (out / "figures" / "figure6.png").is_file()
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["tables"]["table3"]["ours"]["bgan"]["32"] <= 1.0


def test_table6_adds_the_feature_extraction_to_the_training_time():
    from bganhash.research.tables import table6

    bgan = {"fit_seconds": 120.0, "encode_ms_per_image": 0.01, "config": {"network": {"encoder": "head"},
                                                                          "train": {"num_threads": 1}}}
    timing = {"backbone_ms_per_image": 2.0, "extraction": {"seconds": 2400.0, "n_images": 60000, "cached": True}}
    doc = Document()
    numbers = table6(doc, {("table6", "bgan", 32): bgan, ("table6", "backbone", 0): timing}, "cifar10",
                     {"machine": "test machine", "split": {"protocol": "paper"}})
    assert numbers["ours"]["32"]["end_to_end_seconds"] == 2520.0
    markdown = doc.markdown()
    assert "42.0 min = 40.0 extraction + 2.0 training" in markdown and "60,000 images" in markdown
    assert "5h" in markdown and "(paper protocol)" in markdown


def test_report_states_the_set_values_that_change_the_preset():
    from bganhash.research.document import Document
    from bganhash.research.report import _run_section

    info = {"split": {"protocol": "paper", "query": 1, "train": 2, "database": 3}, "seed": 0, "ranking": "r",
            "features": "f", "presets": ["paper"], "machine": "m", "date": "d", "dataset": "cifar10", "data": None,
            "overrides": {"hash_batchnorm": True, "lr": 0.001}}
    doc = Document()
    _run_section(doc, info)
    text = " ".join(str(block) for block in doc.blocks)
    assert "Changed from the preset for every BGAN cell (`--set`): `hash_batchnorm=true`, `lr=0.001`." in text
    doc = Document()
    _run_section(doc, {**info, "overrides": {}})
    assert "Changed from the preset" not in " ".join(str(block) for block in doc.blocks)


def test_table3_under_the_train_test_protocol_says_the_papers_rows_are_another_protocol():
    from bganhash.research.tables import table3

    results = {("table3", method, 12): {"map": 0.3, "map_at_1000": 0.5} for method in ("bgan", "itq")}
    caveat = "not this run's train-test protocol"
    for protocol, expected in (("train-test", True), ("paper", False)):
        doc = Document()
        table3(doc, results, "cifar10", {"dataset_label": "CIFAR-10", "split": {"protocol": protocol}})
        markdown = doc.markdown()
        assert f"mAP@all, {protocol} protocol" in markdown and "| BGAN (paper) | 0.401 |" in markdown
        assert (caveat in markdown) is expected
