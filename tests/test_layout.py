"""The package's shape: a light import, no import cycles, modules of a readable size."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "bganhash"
CYCLES_TOOL = REPO_ROOT.parent / "shared" / "tools" / "import_cycles.py"
MAX_MODULE_LINES = 450


def loads_torch(code: str) -> bool:
    """Whether running `code` in a fresh interpreter imports torch."""
    probe = f"{code}\nimport sys\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return result.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("code", [
    "import bganhash",
    "from bganhash import Index, InputError",
    "import bganhash.codes, bganhash.metrics, bganhash.registry, bganhash.pipeline, bganhash.collection",
    "from bganhash.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    "from bganhash.cli import main\ntry:\n    main(['index', '--help'])\nexcept SystemExit:\n    pass",
])
def test_light_imports_load_no_torch(code):
    assert not loads_torch(code)


def test_bganhasher_is_imported_on_first_access():
    assert loads_torch("import bganhash\nbganhash.BGANHasher")
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        import bganhash

        bganhash.nothing  # noqa: B018


def test_no_module_is_too_long():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long


def test_no_import_cycles():
    if not CYCLES_TOOL.is_file():
        pytest.skip(f"needs {CYCLES_TOOL} (the project's shared tools), absent on this machine")
    result = subprocess.run([sys.executable, str(CYCLES_TOOL), "src", "bganhash"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_loading_a_saved_baseline_loads_no_torch(tmp_path):
    code = (f"import numpy as np\nfrom bganhash.hashers import ITQ\n"
            f"ITQ(8, random_state=0).fit(np.random.default_rng(0).normal(size=(50, 16))).save({str(tmp_path)!r})\n"
            f"from bganhash.registry import load_hasher\nassert type(load_hasher({str(tmp_path)!r})).__name__ == 'ITQ'")
    assert not loads_torch(code)
