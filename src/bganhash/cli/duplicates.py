"""`bganhash duplicates`: groups of exact and near copies in an index."""

from __future__ import annotations

from pathlib import Path

import click

from bganhash.cli._common import emit
from bganhash.collection import Collection
from bganhash.collection.duplicates import (
    DEFAULT_CANDIDATES,
    DEFAULT_THRESHOLD,
    THRESHOLD_EXPLAINED,
    DuplicateReport,
    find_duplicates,
)


@click.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option("--threshold", type=click.FloatRange(-1.0, 1.0), default=DEFAULT_THRESHOLD, show_default=True,
              help=f"Near-copy threshold: the {THRESHOLD_EXPLAINED}.")
@click.option("--candidates", type=click.IntRange(1, 10_000), default=DEFAULT_CANDIDATES, show_default=True,
              help="Nearest codes (by Hamming distance) compared with each image; more finds copies whose codes "
                   "differ more, and takes longer.")
@click.option("--max-distance", type=click.IntRange(0), default=None,
              help="Also require codes at most this many bits apart. For an index built before it stored "
                   "features, the only test [default there: bits / 16].")
@click.option("--no-hash", "hash_files", is_flag=True, flag_value=False, default=True,
              help="Do not read the files: by default those sharing a size with another are hashed (sha256) to "
                   "find byte-identical copies.")
@click.option("--absolute", is_flag=True, help="Print full paths instead of paths under the indexed folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the groups as one JSON document.")
def duplicates(index_dir, threshold, candidates, max_distance, hash_files, absolute, as_json) -> None:
    """Find the groups of copies of the same picture in INDEX_DIR: exact copies (identical files or identical
    features) and near copies (re-encoded, resized, lightly cropped: features at least --threshold alike).

    Copies are joined into groups through any chain of near pairs. Each group's line says how alike its
    least alike members are (cosine similarity) and how far apart their codes are (Hamming distance).
    """
    with Collection.load(index_dir) as collection:
        report = find_duplicates(collection, threshold=threshold, candidates=candidates, max_distance=max_distance,
                                 hash_files=hash_files)
    document = {"index": str(index_dir), **report.to_dict()}
    emit(document, as_json, _text(index_dir, report, absolute, hash_files))


def _text(index_dir: Path, report: DuplicateReport, absolute: bool, hash_files: bool) -> str:
    """The report for people: a summary, what was compared, then each group and its paths."""
    exact = sum(group.kind == "exact" for group in report.groups)
    lines = [f"{index_dir}: {len(report.groups)} group(s) of copies among {report.n_images:,} images "
             f"({exact} exact, {len(report.groups) - exact} near; {report.n_copies} image(s) are a copy of another)"]
    if report.compared == "features":
        rule = f"cosine similarity of the stored features >= {report.threshold:g}"
        if report.max_distance is not None:
            rule += f" and codes at most {report.max_distance} bits apart"
    else:
        rule = (f"codes at most {report.max_distance} bits apart (this index stores no features, so the test is "
                "coarse; rebuild it for the similarity test)")
    lines.append(f"  near copies: {rule}, among each image's {report.candidates} nearest codes")
    files = ("files not read (--no-hash)" if not hash_files
             else f"identical files (sha256 of the {report.hashed_files} that share a size with another)"
             if report.hashed_files else "no two files share a size")
    exact = f"identical features and codes; {files}" if report.compared == "features" else files
    lines.append(f"  exact copies: {exact}")
    root = Path(report.root)
    lines.append(f"  paths {'in full' if absolute and root.is_dir() else f'under {report.root}'}")
    for number, group in enumerate(report.groups, 1):
        alike = [] if group.min_similarity is None else [f"similarity >= {group.min_similarity:.3f}"]
        details = ", ".join([f"{len(group)} images", *alike, f"hamming <= {group.max_distance}"])
        lines.append(f"\ngroup {number}: {group.kind}, {details}")
        for image_id, path in zip(group.ids, group.paths):
            shown = str(root / path) if absolute and root.is_dir() else path
            lines.append(f"  {shown}  (id {image_id})")
    return "\n".join(lines)
