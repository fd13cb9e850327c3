"""The protocol runner and its reports."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

from bganhash.research import paper
from bganhash.research.protocol import ProtocolData, ResultTable, run_baselines
from bganhash.research.tables import table_markdown, write_results


def clustered_protocol(rng, n_per_class=60, n_classes=6, dim=32) -> ProtocolData:
    """Well-separated Gaussian clusters with a 10-per-class query split."""
    centers = rng.normal(size=(n_classes, dim)) * 4
    labels = np.repeat(np.arange(n_classes), n_per_class)
    features = (centers[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32)
    query = np.concatenate([np.flatnonzero(labels == c)[:10] for c in range(n_classes)])
    database = np.setdiff1d(np.arange(len(labels)), query)
    split = SimpleNamespace(query=query, train=database, database=database, protocol="test")
    dataset = SimpleNamespace(name="clusters", labels=labels, root=None)
    return ProtocolData(dataset=dataset, features=features, split=split, feature_source="synthetic clusters")


def test_run_baselines_scores_every_cell_and_beats_chance(rng):
    data = clustered_protocol(rng)
    cells = []
    table = run_baselines(data, [8, 16], ["lsh", "itq"], seed=0, on_cell=lambda *cell: cells.append(cell))
    assert [(m, b) for m, b, _ in cells] == [("lsh", 8), ("lsh", 16), ("itq", 8), ("itq", 16)]
    assert set(table.scores) == {"lsh", "itq"}
    chance = 1 / 6
    assert table.scores["itq"][16] > 3 * chance
    assert table.metadata["n_query"] == 60 and table.metadata["n_database"] == 300


def test_run_baselines_is_deterministic_under_a_seed(rng):
    data = clustered_protocol(rng)
    first = run_baselines(data, [8], ["lsh", "sph"], seed=3).scores
    second = run_baselines(data, [8], ["lsh", "sph"], seed=3).scores
    assert first == second


def test_table_markdown_puts_paper_rows_under_ours():
    table = ResultTable(dataset="cifar10", bits=[12, 24, 32, 48],
                        metadata={"protocol": "paper", "seed": 0, "n_query": 1000, "n_train": 10000,
                                  "n_database": 59000, "features": "f", "data": "x/cifar10-jpg.zip"})
    for n_bits in table.bits:
        table.add("itq", n_bits, 0.25, 1.0)
    text = table_markdown(table)
    assert "| ITQ (ours) | 0.250 | 0.250 | 0.250 | 0.250 |" in text
    assert "| BGAN (paper) | 0.401 | 0.512 | 0.531 | 0.558 |" in text
    assert "| ITQ+VGG (paper) | 0.196 | 0.246 | 0.289 | 0.301 |" in text
    assert "JPEG copy" in text and "ties broken by database order" in text


def test_table_markdown_marks_bit_lengths_the_paper_lacks():
    table = ResultTable(dataset="cifar10", bits=[64], metadata={})
    table.add("lsh", 64, 0.2, 0.1)
    assert "| BGAN (paper) | – |" in table_markdown(table)


def test_write_results_round_trips_through_json(tmp_path):
    table = ResultTable(dataset="digits", bits=[8], metadata={"seed": 1})
    table.add("pcah", 8, 0.5, 0.2)
    json_path, md_path = write_results(table, tmp_path / "out", "table3")
    document = json.loads(json_path.read_text())
    assert document["map"] == {"pcah": {"8": 0.5}}
    assert document["paper"] == {}
    assert md_path.read_text().startswith("| Method |")


def test_paper_tables_are_the_published_numbers():
    assert paper.TABLE3["cifar10"]["BGAN"] == (0.401, 0.512, 0.531, 0.558)
    assert paper.TABLE2["N+C+A"] == (0.512, 0.531, 0.558)
    assert paper.TABLE4["tanh"] == (0.542, 0.577, 0.586)
    assert paper.TABLE5["BGAN"] == (0.866, 0.874, 0.876, 0.877)
    assert paper.paper_row(paper.TABLE3, "nuswide", "BGAN", 32) == 0.714
    assert paper.paper_row(paper.TABLE3, "cifar10", "BGAN", 64) is None
