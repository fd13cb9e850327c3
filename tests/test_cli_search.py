"""`bganhash index`, `search` and `serve` through click's runner, as a user would type them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bganhash.cli._common import CleanErrors
from bganhash.cli.search import index, search, serve

FAST = ["--method", "lsh", "--bits", "16", "--image-size", "32"]


@pytest.fixture(scope="module")
def cli() -> click.Group:
    """The real `bganhash` group when it has these commands, else one built the same way."""
    from bganhash.cli import main

    if {"index", "search", "serve"} <= set(main.commands):
        return main
    return CleanErrors(commands={"index": index, "search": search, "serve": serve})


def run(cli: click.Group, *args: object) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def make_photos(folder: Path) -> Path:
    """The `photos` fixture's folder: 12 JPEGs of random colours and sizes (4 at the top, 8 in trip/) and a
    corrupt PNG."""
    rng = np.random.default_rng(0)
    (folder / "trip").mkdir(parents=True)
    for i in range(12):
        colour = rng.integers(0, 256, 3)
        image = np.clip(colour + rng.normal(0, 30, (24 + i, 30, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / ("trip" if i % 3 else ".") / f"img{i:02d}.jpg", quality=90)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return folder


@pytest.fixture(scope="module")
def shared(cli, tmp_path_factory) -> tuple[Path, Path]:
    """(photos, index) built once for the tests that only search."""
    base = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BGANHASH_CACHE", str(base / "cache"))
        photos = make_photos(base / "photos")
        assert run(cli, "index", photos, "--out", base / "pics.index", *FAST).exit_code == 0
    return photos, base / "pics.index"


@pytest.fixture
def indexed(cli, photos, tmp_path) -> Path:
    out = tmp_path / "pics.index"
    result = run(cli, "index", photos, "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    return out


def test_index_prints_a_summary_and_lists_unreadable_files(cli, photos, tmp_path):
    out = tmp_path / "pics.index"
    result = run(cli, "index", photos, "--out", out, *FAST, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["n_images"], summary["added"], summary["generation"]) == (12, 12, 1)
    assert summary["trained"] and summary["trained_on"] == 12 and summary["n_bits"] > 0 and summary["method"]
    assert 0 < summary["distinct_codes"] <= 12 and len(summary["bit_balance"]) == 2
    assert [entry["path"] for entry in summary["unreadable"]] == ["corrupt.png"]
    text = run(cli, "index", photos, "--out", out, "--update")
    assert text.exit_code == 0 and "12 images (0 added, 0 removed, 12 unchanged)" in text.stdout
    assert "corrupt.png" in text.stdout and "kept its" in text.stdout and "distinct for 12 images" in text.stdout


def json_lines(result) -> list[dict]:
    """The records of a --json search: one JSON object per line."""
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_search_finds_an_indexed_image_first(cli, shared):
    photos, indexed = shared
    [record] = json_lines(run(cli, "search", indexed, photos / "trip" / "img04.jpg", "-k", "3", "--json"))
    matches = record["results"]
    assert len(matches) == 3 and matches[0]["path"] == "trip/img04.jpg" and matches[0]["distance"] == 0
    assert [m["rank"] for m in matches] == [1, 2, 3] and record["root"] == str(photos.resolve())
    assert Path(matches[0]["file"]) == (photos / "trip" / "img04.jpg").resolve() and record["n_bits"] == 16
    text = run(cli, "search", indexed, photos / "trip" / "img04.jpg", "-k", "2").stdout.splitlines()
    legend, name, header, first = text[:4]
    assert f"images under {photos.resolve()}" in legend and "hamming = bits of the 16-bit code" in legend
    assert "cosine = similarity" in legend
    assert name.endswith("img04.jpg") and "hamming" in header and "cosine" in header and str(photos) in header
    assert "trip/img04.jpg" in first and "1.000" in first and len(text) == 5
    absolute = run(cli, "search", indexed, photos / "trip" / "img04.jpg", "-k", "1", "--absolute").stdout
    assert "full path" in absolute and str((photos / "trip" / "img04.jpg").resolve()) in absolute


def test_a_folder_query_searches_each_image_and_skips_bad_ones(cli, shared):
    photos, indexed = shared
    records = json_lines(run(cli, "search", indexed, photos / "trip", "-k", "1", "--json"))
    assert len(records) == 8
    assert all(q["results"][0]["path"] == Path(q["query"]).relative_to(photos).as_posix() for q in records)
    mixed = json_lines(run(cli, "search", indexed, photos, "-k", "1", "--json"))
    assert [Path(r["query"]).name for r in mixed if "skipped" in r] == ["corrupt.png"]
    assert len([r for r in mixed if "results" in r]) == 12


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"just text", "not an image"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10", "truncated"),
])  # fmt: skip
def test_a_bad_query_file_is_a_one_line_error_with_exit_code_2(cli, shared, tmp_path, content, message):
    indexed = shared[1]
    query = tmp_path / "query.png"
    query.write_bytes(content)
    result = run(cli, "search", indexed, query)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ") and message in result.stderr


def test_missing_query_index_or_folder_are_exit_code_2(cli, shared, tmp_path):
    indexed = shared[1]
    assert run(cli, "search", indexed, tmp_path / "nope.jpg").exit_code == 2
    assert run(cli, "search", tmp_path / "nope.index", tmp_path / "nope.jpg").exit_code == 2
    missing = run(cli, "index", tmp_path / "no-photos", "--out", tmp_path / "x.index", *FAST)
    assert missing.exit_code == 2 and "does not exist" in missing.stderr


def test_a_corrupted_index_is_refused_by_search_and_serve(cli, indexed, photos):
    manifest = json.loads((indexed / "manifest.json").read_text())
    codes = indexed / manifest["codes"]
    codes.write_bytes(codes.read_bytes()[:-1] + b"\x00")
    for args in (["search", indexed, photos / "trip" / "img01.jpg"], ["serve", indexed, "--port", "0"]):
        result = run(cli, *args)
        assert result.exit_code == 2 and "checksum" in result.stderr


def test_update_refuses_an_index_that_does_not_exist(cli, photos, tmp_path):
    result = run(cli, "index", photos, "--out", tmp_path / "new.index", "--update", *FAST)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "holds no index yet; leave out --update" in result.stderr and not (tmp_path / "new.index").exists()


@pytest.mark.parametrize("bits, message", [
    ("abc", "'abc' is not a whole number of bits; give a code length from 8 to 1024"),
    ("4", "4 bits is out of range"),
])  # fmt: skip
def test_a_bad_bit_count_says_what_a_code_length_is(cli, photos, tmp_path, bits, message):
    result = run(cli, "index", photos, "--out", tmp_path / "x.index", "--bits", bits)
    assert result.exit_code == 2 and message in result.stderr and "valid integer range" not in result.stderr


def test_index_help_lists_the_backbones_and_serve_help_explains_the_port(cli):
    def help_of(command: str) -> str:  # the help text with its line wrapping undone
        return " ".join(run(cli, command, "--help").stdout.split())

    index_help = help_of("index")
    assert "efficientnet_lite0: EfficientNet-Lite0" in index_help and "efficientnet_lite2:" in index_help
    assert "TCP port" in help_of("serve")
    search_help = help_of("search")
    assert "approximate for ivf, hnsw and mih" in search_help and "JSON Lines" in search_help


def test_a_missing_model_folder_is_named_in_cli_words(cli, photos, tmp_path):
    result = run(cli, "index", photos, "--out", tmp_path / "x.index", "--model", tmp_path / "no-model")
    assert result.exit_code == 2 and "--model" in result.stderr and "bganhash train" in result.stderr
    assert "save()" not in result.stderr


def test_indexing_over_an_existing_index_needs_update(cli, indexed, photos):
    again = run(cli, "index", photos, "--out", indexed, *FAST)
    assert again.exit_code == 2 and "--update" in again.stderr
    Image.new("RGB", (20, 20), (0, 200, 0)).save(photos / "new.png")
    (photos / "img00.jpg").unlink()
    updated = json.loads(run(cli, "index", photos, "--out", indexed, "--update", "--json").stdout)
    assert (updated["added"], updated["removed"], updated["n_images"]) == (1, 1, 12)


def test_serve_binds_to_loopback_unless_told_otherwise(cli):
    result = run(cli, "serve", "--help")
    assert result.exit_code == 0 and "127.0.0.1" in result.stdout
    assert serve.params[[p.name for p in serve.params].index("host")].default == "127.0.0.1"


def test_index_with_a_backend_and_search_uses_what_the_index_holds(cli, photos, tmp_path):
    pytest.importorskip("faiss")
    out = tmp_path / "graph.index"
    built = run(cli, "index", photos, "--out", out, *FAST, "--backend", "hnsw:8", "--json")
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["backend"] == "hnsw:8,ef=128,efc=200"
    [record] = json_lines(run(cli, "search", out, photos / "trip" / "img04.jpg", "-k", "3", "--json"))
    assert record["backend"] == "hnsw:8,ef=128,efc=200"
    assert record["results"][0]["path"] == "trip/img04.jpg"


def test_an_ivf_index_with_more_lists_than_photos_is_refused_with_the_fix(cli, photos, tmp_path):
    pytest.importorskip("faiss")
    result = run(cli, "index", photos, "--out", tmp_path / "x.index", *FAST, "--backend", "ivf:1024")
    assert result.exit_code == 2 and "needs at least 1024 of them" in result.stderr, result.output
    assert "use fewer lists" in result.stderr and not (tmp_path / "x.index").exists()
    built = run(cli, "index", photos, "--out", tmp_path / "y.index", *FAST, "--backend", "ivf:2,nprobe=2", "--json")
    assert built.exit_code == 0 and json.loads(built.stdout)["backend"] == "ivf:2,nprobe=2", built.output
    [found] = json_lines(run(cli, "search", tmp_path / "y.index", photos / "trip" / "img04.jpg", "-k", "1", "--json"))
    assert found["results"][0]["path"] == "trip/img04.jpg"


@pytest.mark.parametrize("backend, message", [
    ("annoy", "unknown kind 'annoy'"),
    ("hnsw:x", "whole number M >= 2"),
    ("hnsw:32,ef=0", "ef=0 must be a whole number >= 1"),
    ("mih:4,depth=2", "mih has no option 'depth'"),
])  # fmt: skip
def test_a_malformed_backend_is_a_one_line_error_with_exit_code_2(cli, photos, tmp_path, backend, message):
    result = run(cli, "index", photos, "--out", tmp_path / "x.index", *FAST, "--backend", backend)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ") and message in result.stderr
    assert not (tmp_path / "x.index").exists()


def test_index_help_names_the_backends(cli):
    result = run(cli, "index", "--help")
    assert result.exit_code == 0 and "--backend" in result.stdout and "hnsw:32" in result.stdout
    assert "ivf:1024" in result.stdout


def test_serve_passes_each_allowed_host_to_the_service(cli, monkeypatch, tmp_path):
    import bganhash.serve.app as app_module

    calls = []
    monkeypatch.setattr(app_module, "serve", lambda *args, **kwargs: calls.append((args, kwargs)))
    result = run(cli, "serve", tmp_path / "pics.index", "--allowed-host", "photos.lan",
                 "--allowed-host", "*", "--port", "0")
    assert result.exit_code == 0, result.output
    [(args, kwargs)] = calls
    assert kwargs["allowed_hosts"] == ["photos.lan", "*"] and args[1:] == ("127.0.0.1", 0)
    run(cli, "serve", tmp_path / "pics.index")
    assert calls[1][1]["allowed_hosts"] == []
    assert "--allowed-host" in run(cli, "serve", "--help").stdout


@pytest.mark.parametrize("value", ["89478486", "0"])
def test_serve_max_pixels_out_of_range_is_a_one_line_error(cli, shared, value):
    result = run(cli, "serve", shared[1], "--max-pixels", value)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert result.stderr.startswith("Error: --max-pixels") and "1 to 89,478,485" in result.stderr


def test_a_local_query_over_the_upload_pixel_limit_is_searched(cli, shared, tmp_path):
    query = tmp_path / "big.jpg"
    Image.new("RGB", (7800, 7800), (200, 40, 40)).save(query, quality=50)  # 60.8 MP, a few hundred KB
    assert 7800 * 7800 > 50_000_000
    [record] = json_lines(run(cli, "search", shared[1], query, "-k", "2", "--json"))
    assert record["query"] == str(query) and len(record["results"]) == 2


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes and symbolic links need POSIX")
def test_index_text_lists_skipped_links_and_pipes_apart_from_unreadable_files(cli, photos, tmp_path):
    Image.new("RGB", (20, 20), (9, 9, 9)).save(tmp_path / "outside.jpg")
    (photos / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    os.mkfifo(photos / "pipe.jpg")
    result = run(cli, "index", photos, "--out", tmp_path / "pics.index", *FAST)
    assert result.exit_code == 0, result.output
    assert "1 unreadable file(s), 2 skipped" in result.stdout
    lines = result.stdout.splitlines()
    assert any(line.strip().startswith("unreadable: corrupt.png") for line in lines)
    assert any(line.strip().startswith("skipped: pipe.jpg (a named pipe") for line in lines)
    assert any(line.strip().startswith("skipped: link.jpg (a symbolic link") for line in lines)
