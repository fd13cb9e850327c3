"""File attacks on bganhash's loaders: corrupted saves, edited manifests, kills inside a checkpoint, hostile folders
and hostile inputs; every outcome counted.

Usage: python benchmarks/attacks/attack_files.py [--trials 200] [--seed 0] [--output FILE.json] [--markdown]

1. Writes one of each saved file kind in a temporary folder: a model directory (an ITQ pipeline: hasher.json,
   hasher.safetensors, pipeline.json), a BGAN training checkpoint (a tiny network, three stages), an index file
   (.bgidx), a collection (an LSH index of 12 generated images; 8x8 pixels stand in for the backbone's
   features, which the attacks do not concern) and a features .npy.
2. Random damage: --trials times per kind, one file of the save chosen at random gets a bit flipped, a byte
   changed or its tail cut off; the loader's outcome is counted as refused (InputError), identical (the same
   content loaded: a change that means nothing, e.g. JSON whitespace), silently different (loaded, other
   content: the defect) or crashed (any other exception: the defect).
3. Targeted attacks: edits of manifest fields (feature_config, "files": {}, "generation": "abc", a checksum
   stripped, a version lowered), a kill before each file of a checkpoint, links out of the folder and a named
   pipe in it, hostile .npy headers, huge and complex features, a huge k.
4. Prints a table (Markdown with --markdown) and, with --output, writes the counts as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bganhash._validation import InputError

OUTCOMES = ("refused", "identical", "silently different", "crashed")


# ---- the saved files ---------------------------------------------------------------------------------------


def pixel_features(dataset, config=None, **_):
    """8x8 pixels as features: a stand-in for the backbone (the attacks are on files, not on features)."""
    return (dataset.to_array(size=8).reshape(len(dataset), -1) / 255.0).astype(np.float32)


def write_images(folder: Path, count: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")


def build_collection_of(folder: Path, out: Path, **kwargs):
    import bganhash.features.extract as extract
    from bganhash.collection import BuildConfig, build_collection
    from bganhash.features.config import FeatureConfig

    real, extract.extract_features = extract.extract_features, pixel_features
    try:
        return build_collection(folder, out, config=BuildConfig(method="lsh", n_bits=16, thumbnail_size=16),
                                feature_config=FeatureConfig(image_size=32), progress=False, **kwargs)
    finally:
        extract.extract_features = real


def tiny_trainer(checkpoint_dir: Path | None = None, seed: int = 0):
    import scipy.sparse
    import torch

    from bganhash.bgan.config import make_config
    from bganhash.bgan.model import BGANNetworks
    from bganhash.bgan.train import Trainer, TrainingData

    config = make_config("cpu", 8, batch_size=16, epochs_per_stage=1, beta_schedule=(1.0, 2.0, 5.0),
                         head_hidden=(16,), width_factor=1 / 16, discriminator_dense=64)
    rng = np.random.default_rng(0)
    labels = np.arange(48) % 4
    features = (rng.standard_normal((4, 10))[labels] * 3 + rng.standard_normal((48, 10))).astype(np.float32)
    images = torch.rand(48, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    data = TrainingData(torch.from_numpy(features), images, scipy.sparse.csr_matrix(labels[:, None] == labels))
    torch.manual_seed(seed)
    return Trainer(config, BGANNetworks(config, 10, 8), data, checkpoint_dir=checkpoint_dir, progress=False)


class Kind:
    """One saved file kind: where it is, how to load it, and what a load must give back."""

    def __init__(self, name: str, path: Path, load: Callable[[Path], object], fingerprint: Callable[[object], object]):
        self.name, self.path, self.load, self.fingerprint = name, path, load, fingerprint
        self.expected = fingerprint(load(path))


def saved_kinds(base: Path) -> list[Kind]:
    """Write one save of each kind under `base`."""
    from bganhash.bgan.checkpoint import load_checkpoint
    from bganhash.collection import Collection
    from bganhash.features.cache import load_features
    from bganhash.features.config import FeatureConfig
    from bganhash.hashers import ITQ
    from bganhash.index import Index
    from bganhash.pipeline import ImagePipeline

    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 12)).astype(np.float32)
    ImagePipeline(ITQ(8, random_state=0).fit(X), FeatureConfig(image_size=32)).save(base / "model")
    (base / "features").mkdir()
    np.save(base / "features" / "X.npy", X)
    index = Index(16)
    index.add(np.where(rng.random((40, 16)) < 0.5, -1, 1))
    (base / "index").mkdir()
    index.save(base / "index" / "codes.bgidx")
    write_images(base / "photos", 12)
    build_collection_of(base / "photos", base / "photos.index")
    tiny_trainer(base / "checkpoint").fit()

    def collection(path):
        with Collection.load(path) as loaded:
            return (loaded.ids.tolist(), loaded.codes.tobytes(), loaded.paths, loaded.feature_config,
                    [loaded.thumbnail(int(i)) for i in loaded.ids], loaded.vectors.tobytes())

    def checkpoint(path):
        trainer = tiny_trainer(seed=7)
        history, next_stage = load_checkpoint(path, trainer.networks, trainer.optimizers, trainer.config)
        return history, next_stage, {k: v.clone() for k, v in trainer.networks.state_dict().items()}

    def checkpoint_fingerprint(loaded):
        history, next_stage, state = loaded
        return json.dumps(history, sort_keys=True), next_stage, b"".join(v.numpy().tobytes() for v in state.values())

    return [
        Kind("model directory", base / "model", ImagePipeline.load,
             lambda p: (p.feature_config, p.encode_features(X).tobytes())),
        Kind("training checkpoint", base / "checkpoint", checkpoint, checkpoint_fingerprint),
        Kind("index file", base / "index", lambda d: Index.load(d / "codes.bgidx"),
             lambda i: (i.backend, i.codes.tobytes(), i.ids.tobytes())),
        Kind("collection", base / "photos.index", collection, lambda c: c),
        # a features file is the user's own, unchecksummed: any finite float32 array of its shape is a fair load
        Kind("features .npy", base / "features", lambda d: load_features(d / "X.npy"),
             lambda f: (f.dtype.name, f.shape, bool(np.isfinite(f).all()))),
    ]


def damage(directory: Path, rng: random.Random) -> str:
    """Flip a bit, change a byte or cut the tail of one file under `directory`; returns what was done."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))
    path = rng.choice(files)
    data = bytearray(path.read_bytes())
    at = rng.randrange(len(data)) if data else 0
    how = rng.choice(["flip", "byte", "truncate"])
    if data and how == "flip":
        data[at] ^= 1 << rng.randrange(8)
    elif data and how == "byte":
        data[at] = (data[at] + rng.randrange(1, 256)) % 256
    else:
        del data[at:]
    path.write_bytes(bytes(data))
    return f"{how} at {at} of {path.name}"


def outcome(kind: Kind, path: Path) -> tuple[str, str]:
    """Load `path` as `kind`: (outcome, detail)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = kind.fingerprint(kind.load(path))
    except InputError as exc:
        return "refused", str(exc)[:120]
    except Exception as exc:  # the defect this script looks for
        return "crashed", f"{type(exc).__name__}: {exc}"[:200]
    return ("identical" if loaded == kind.expected else "silently different"), ""


def random_damage(kinds: list[Kind], trials: int, seed: int) -> list[dict]:
    rows = []
    for kind in kinds:
        rng, counts, examples = random.Random(seed), Counter(), {}
        for _ in range(trials):
            with tempfile.TemporaryDirectory() as scratch:
                copy = Path(shutil.copytree(kind.path, Path(scratch) / kind.path.name))
                what = damage(copy, rng)
                result, detail = outcome(kind, copy)
                counts[result] += 1
                if result in ("silently different", "crashed"):
                    examples.setdefault(result, f"{what}: {detail}")
        rows.append({"attack": f"random byte damage: {kind.name}", "tried": trials, **{o: counts[o] for o in OUTCOMES},
                     "examples": examples})
    return rows


# ---- targeted attacks ------------------------------------------------------------------------------------------


def targeted(base: Path, kinds: list[Kind]) -> list[dict]:
    """Each targeted attack once (the checkpoint kill at each of its files): rows of outcome counts."""
    by_name = {kind.name: kind for kind in kinds}
    rows = []

    def edit_json(kind: Kind, relative: str, change: Callable[[dict], object], label: str) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            copy = Path(shutil.copytree(kind.path, Path(scratch) / kind.path.name))
            document = json.loads((copy / relative).read_text())
            change(document)
            (copy / relative).write_text(json.dumps(document))
            record(label, [outcome(kind, copy)])

    def record(label: str, results: list[tuple[str, str]]) -> None:
        counts = Counter(result for result, _ in results)
        rows.append({"attack": label, "tried": len(results), **{o: counts[o] for o in OUTCOMES},
                     "examples": {r: d for r, d in results if r != "identical"}})

    model, collection = by_name["model directory"], by_name["collection"]
    for field, value in (("image_size", 225), ("resize", "stretch"), ("backbone", "resnet50")):
        edit_json(model, "pipeline.json", lambda d, f=field, v=value: d["feature_config"].update({f: v}),
                  f"model: pipeline.json feature_config.{field} edited")
    edit_json(model, "hasher.json", lambda d: d.pop("sha256", None), "model: hasher.json checksum stripped")
    edit_json(model, "hasher.json", lambda d: d.update(format_version=1), "model: hasher.json version lowered to 1")
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(shutil.copytree(model.path, Path(scratch) / "model"))
        (copy / "pipeline.json").unlink()
        record("model: pipeline.json deleted", [outcome(model, copy)])
    for label, change in (("feature_config.image_size edited", lambda m: m["feature_config"].update(image_size=225)),
                          ('"files": {}', lambda m: m.update(files={})),
                          ('"generation": "abc"', lambda m: m.update(generation="abc")),
                          ("checksum stripped", lambda m: m.pop("sha256", None)),
                          ("version lowered to 2", lambda m: m.update(format_version=2))):
        edit_json(collection, "manifest.json", change, f"collection: manifest {label}")
    rows.append(checkpoint_kills())
    rows.extend(hostile_folder(base))
    rows.extend(hostile_inputs(base))
    return rows


def checkpoint_kills() -> dict:
    """A kill before each of the 6 writes of the second checkpoint; the resume must equal an uninterrupted run."""
    import torch

    from bganhash.bgan import checkpoint

    reference = tiny_trainer()
    reference.fit()
    expected = reference.networks.state_dict()
    results = []
    for killed_at in range(1, 7):
        with tempfile.TemporaryDirectory() as scratch:
            originals = {n: getattr(checkpoint, n) for n in ("write_tensors", "write_json", "write_verified_json")
                         if hasattr(checkpoint, n)}  # (bganhash before checksums had no write_verified_json)
            count = {"n": 0, "die_at": 6 + killed_at}  # the first checkpoint's 6 writes, then the kill

            def dying(original, count=count):
                def write(*args, **kwargs):
                    count["n"] += 1
                    if count["n"] == count["die_at"]:
                        raise KeyboardInterrupt  # the process dies here
                    return original(*args, **kwargs)
                return write

            for name, original in originals.items():
                setattr(checkpoint, name, dying(original))
            try:
                tiny_trainer(Path(scratch)).fit()
            except KeyboardInterrupt:
                pass
            finally:
                for name, original in originals.items():
                    setattr(checkpoint, name, original)
            try:
                resumed = tiny_trainer(Path(scratch), seed=99)
                resumed.fit(resume=True)
                state = resumed.networks.state_dict()
                same = all(torch.equal(state[k], v) for k, v in expected.items())
                results.append(("identical" if same else "silently different", ""))
            except InputError as exc:
                results.append(("refused", str(exc)[:120]))
    counts = Counter(r for r, _ in results)
    return {"attack": "checkpoint: kill before each file of a checkpoint, then --resume", "tried": len(results),
            **{o: counts[o] for o in OUTCOMES}, "examples": {r: d for r, d in results if r != "identical"}}


def hostile_folder(base: Path) -> list[dict]:
    """A folder with a link to an outside picture, a link to an outside folder and a named pipe called pipe.jpg."""
    from bganhash.collection import Collection

    folder, outside = base / "hostile", base / "outside"
    write_images(folder, 6)
    write_images(outside, 1, seed=1)
    os.symlink(outside / "0000.png", folder / "secret.png")
    os.symlink(outside, folder / "linked")
    os.mkfifo(folder / "pipe.jpg")

    def hang(*_):
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(120)
    try:
        summary = build_collection_of(folder, base / "hostile.index")
        result = ("refused", "") if {p for p, _ in summary.unreadable} >= {"secret.png", "linked", "pipe.jpg"} \
            else ("silently different", str(summary.unreadable))
    except TimeoutError:
        result = ("crashed", "index hangs")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    rows = [{"attack": "index: folder with links out of it and a named pipe (skipped and reported)", "tried": 3,
             **{o: (3 if o == result[0] else 0) for o in OUTCOMES}, "examples": {}}]
    # an index built before links were checked: make an indexed file a link out of the folder
    (folder / "0001.png").unlink()
    os.symlink(outside / "0000.png", folder / "0001.png")
    results = []
    with Collection.load(base / "hostile.index") as collection:
        image_id = next(int(i) for i in collection.ids if collection.path_of(int(i)) == "0001.png")
        for serve in (collection.thumbnail, collection.original):
            try:
                serve(image_id)
                results.append("silently different")
            except InputError:
                results.append("refused")
    counts = Counter(results)
    rows.append({"attack": "collection: thumbnail and original of an indexed file turned into a link out", "tried": 2,
                 **{o: counts[o] for o in OUTCOMES}, "examples": {}})
    return rows


def hostile_inputs(base: Path) -> list[dict]:
    """Hostile .npy files and arrays given to the loaders, hashers and the index."""
    import io

    from bganhash.features.cache import load_features
    from bganhash.hashers import ITQ, PCAH, SH
    from bganhash.index import Index

    def npy(name: str, data: bytes) -> Callable[[], object]:
        (base / name).write_bytes(data)
        return lambda: load_features(base / name)

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 64)})
    complex_file = io.BytesIO()
    np.save(complex_file, np.ones((4, 4), np.complex64))
    X = np.random.default_rng(0).standard_normal((50, 16))
    index = Index(64)
    index.add(np.ones((50, 64)))
    attacks = {
        ".npy header claiming (10**12, 64)": npy("huge.npy", header.getvalue() + b"\0" * 64),
        "0-byte .npy": npy("empty.npy", b""),
        "complex .npy": npy("complex.npy", complex_file.getvalue()),
        **{f"{h.__name__}.fit on features of 1e30": (lambda h=h: h(8).fit(X * 1e30)) for h in (ITQ, PCAH, SH)},
        "ITQ.fit on complex features": lambda: ITQ(8).fit(X + 1j),
        "Index.search(k=10**8) on 50 codes (identical: capped at 50 columns)":
            lambda: None if index.search(np.ones((1, 64)), 10**8)[1].shape == (1, 50) else 1 / 0,
    }
    rows = []
    for label, attack in attacks.items():
        try:
            attack()
            result = "identical" if label.startswith("Index") else "silently different"
        except InputError:
            result = "refused"
        except Exception as exc:  # noqa: BLE001 - the defect counted
            result = f"crashed ({type(exc).__name__})"
        rows.append({"attack": label, "tried": 1, **{o: int(result == o) for o in OUTCOMES},
                     "examples": {} if result in OUTCOMES else {"crashed": result}})
        if result.startswith("crashed"):
            rows[-1]["crashed"] = 1
    return rows


def print_table(rows: list[dict], markdown: bool) -> None:
    if markdown:
        print("| attack | tried | refused (InputError) | loaded identical | silently different | crashed |")
        print("|---|---:|---:|---:|---:|---:|")
        for row in rows:
            print(f"| {row['attack']} | {row['tried']} | " + " | ".join(str(row[o]) for o in OUTCOMES) + " |")
        return
    for row in rows:
        print(f"{row['attack'][:78]:<78} {row['tried']:>5}  " + "  ".join(f"{o}={row[o]}" for o in OUTCOMES))
        for what, example in row["examples"].items():
            print(f"    {what}: {example}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200, help="random damages per saved file kind (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="write the counts as JSON")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        kinds = saved_kinds(base)
        rows = random_damage(kinds, args.trials, args.seed) + targeted(base, kinds)
    print_table(rows, args.markdown)
    if args.output:
        args.output.write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if any(row["silently different"] or row["crashed"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
