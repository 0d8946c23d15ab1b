"""The published numbers ship inside the package: a wheel holds them and an unpacked wheel finds them, with no repository around."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ["iaf_repro/reference/targets.csv", "iaf_repro/reference/bench_reference.csv"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    "A wheel built offline from a copy of the package's sources (setup.py, settings.ini, README.md, iaf_repro/), outside the repository."
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("setup.py", "settings.ini", "README.md"): shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "iaf_repro", src / "iaf_repro", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(out)],
                          capture_output=True, text=True, env=env, cwd=src)
    if done.returncode: pytest.skip(f"cannot build a wheel here: {done.stderr[-500:]}")
    return next(out.glob("iaf_repro-*.whl"))


def test_the_wheel_holds_the_reference_data(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert set(DATA) <= names
        assert z.read(DATA[0]) == (ROOT / DATA[0]).read_bytes()


def test_an_installed_package_finds_its_reference_data_without_the_repository(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z: z.extractall(site)
    code = ("from iaf_repro.experiments import TARGETS, published; from iaf_repro.bench import REFERENCE; "
            "print(TARGETS); print(REFERENCE); print(published('table1', 'dynamic', 'diag')['published_source'])")
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    targets, reference, source = done.stdout.split()
    assert Path(targets) == site / DATA[0] and Path(reference) == site / DATA[1]
    assert source == "paper-T1"
