"""`--protocol` on `train` and `baselines`: the train-test split where the data has test images, a one-line
error where it has none, and the protocol named in what is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bganhash.cli import main


def write_cifar_like(root, per_class_train: int = 12, per_class_test: int = 4, classes: int = 3) -> None:
    rng = np.random.default_rng(0)
    for part, count in (("train", per_class_train), ("test", per_class_test)):
        for label in range(classes):
            folder = root / part / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                colour = np.zeros((32, 32, 3), np.uint8)
                colour[..., label] = 200
                noisy = np.clip(colour + rng.integers(0, 40, colour.shape), 0, 255).astype(np.uint8)
                Image.fromarray(noisy).save(folder / f"{i:03d}.png")


def test_baselines_refuse_train_test_on_data_without_test_images():
    result = CliRunner().invoke(main, ["baselines", "--dataset", "digits", "--protocol", "train-test",
                                       "--methods", "lsh", "--bits", "8"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "test" in result.output.lower()


@pytest.mark.slow
def test_baselines_under_the_train_test_protocol_query_the_test_images(tmp_path):
    write_cifar_like(tmp_path / "data")
    result = CliRunner().invoke(main, ["baselines", "--dataset", "folder", "--data", str(tmp_path / "data"),
                                       "--protocol", "train-test", "--methods", "lsh,itq", "--bits", "8",
                                       "--image-size", "32", "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    assert len(split["query"]) == 12  # the 3 x 4 test images


def test_baselines_report_map_at_1000_beside_map_all(tmp_path):
    """mAP@1000 (the train-test literature's measure) of the same codes, equal to the metric called directly."""
    from bganhash.metrics import mean_average_precision
    from bganhash.registry import create_hasher
    from bganhash.research.protocol import prepare_protocol

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["baselines", "--dataset", "digits", "--methods", "itq", "--bits", "16",
                                       "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    data = prepare_protocol("digits", progress=False)
    split = data.split
    assert len(split.database) > 1000  # so that the top 1,000 is not the whole ranking
    itq = create_hasher("itq", 16, random_state=0).fit(data.features[split.train])
    expected = mean_average_precision(itq.encode(data.features[split.query]), itq.encode(data.features[split.database]),
                                      data.labels[split.query], data.labels[split.database], 1000)
    assert document["map_at_1000"]["itq"]["16"] == pytest.approx(expected, abs=1e-12)
    assert document["map_at_1000"]["itq"]["16"] != pytest.approx(document["map"]["itq"]["16"], abs=1e-3)
    assert "mAP@1000" in (out / "table3.md").read_text()
