"""The installed environment is the locked one: the next incompatible release fails here, by name.

A torchaudio release once broke a fresh install (`undefined symbol` at import) while CI stayed green
on an old environment; these tests make that one failure that names the package.
"""
from __future__ import annotations

import importlib
import importlib.metadata as metadata
import re
from pathlib import Path

import pytest
from packaging.version import Version

from tests.conftest import ROOT

LOCK = ROOT / "requirements.lock"
# The design card's runtime packages (import name, distribution name) plus what the code imports directly.
RUNTIME = [("lightning", "lightning"), ("torch", "torch"), ("torchaudio", "torchaudio"),
           ("torchmetrics", "torchmetrics"), ("wandb", "wandb"), ("omegaconf", "omegaconf"),
           ("sklearn", "scikit-learn"), ("faiss", "faiss-cpu"), ("hydra", "hydra-core"),
           ("soundfile", "soundfile"), ("pytorch_metric_learning", "pytorch-metric-learning"),
           ("resemblyzer", "resemblyzer")]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """{canonical distribution name: pinned version} of a pip-freeze style lock file."""
    pins = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if not m:
            raise ValueError(f"{path}:{lineno}: expected 'name==version', got {line!r}")
        pins[_canonical(m.group(1))] = m.group(2)
    return pins


def test_lock_pins_every_design_card_package_exactly():
    pins = read_lock()
    missing = [dist for _, dist in RUNTIME if _canonical(dist) not in pins]
    assert not missing, f"requirements.lock does not pin {missing}; regenerate it with scripts/update_lock.sh"


@pytest.mark.parametrize("module, dist", RUNTIME, ids=[d for _, d in RUNTIME])
def test_runtime_dependency_imports(module, dist):
    importlib.import_module(module)


def test_torch_and_torchaudio_are_a_matching_pair():
    import torch
    import torchaudio
    import torchaudio.functional as F

    base = lambda v: Version(v.split("+")[0]).release[:2]  # noqa: E731
    assert base(torchaudio.__version__) == base(torch.__version__), (
        f"torchaudio {torchaudio.__version__} was not built for torch {torch.__version__}")
    out = F.resample(torch.randn(2, 16000), 16000, 8000)
    assert out.shape == (2, 8000) and torch.isfinite(out).all()


def test_installed_versions_are_the_locked_ones():
    pins = read_lock()
    wrong = []
    for dist in sorted(pins):
        try:
            installed = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue  # a constraint only applies where the package is needed (e.g. CUDA wheels on Linux)
        if Version(installed.split("+")[0]) != Version(pins[dist].split("+")[0]):
            wrong.append(f"{dist} {installed} installed, lock pins {pins[dist]}")
    assert not wrong, ("environment differs from requirements.lock: " + "; ".join(wrong) +
                       ". Install through the lock (README) or regenerate it with scripts/update_lock.sh")
    for _, dist in RUNTIME:
        metadata.version(dist)  # raises PackageNotFoundError naming a design-card package that is missing


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [l.strip() for l in quick_start.strip().splitlines() if l.strip()]
    assert len(lines) == 2, f"the Quick start must be two command lines, found {len(lines)}"
    assert all("-c requirements.lock" in l for l in lines), "both Quick start lines must install through the lock"
    ci = (ROOT / ".ci" / "run").read_text()
    assert lines[1] in ci, ".ci/run must call the README's test command (Quick start, line 2) verbatim"
