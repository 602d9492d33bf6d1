"""bench/device: the wheel set for the offline GPU machine, its batches, and install.sh's join + install."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "bench" / "device" / "install.sh"
spec = importlib.util.spec_from_file_location("device_stage", ROOT / "bench" / "device" / "stage.py")
stage = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stage)


def make_wheel(folder: Path, name: str, blob: bytes) -> Path:
    """A pure-Python wheel `name` 1.0 holding module `name` (VALUE = name) and name/blob.bin."""
    files = {
        f"{name}/__init__.py": f"VALUE = {name!r}\n".encode(),
        f"{name}/blob.bin": blob,
        f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        f"{name}-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}\n"
        for p, d in files.items()
    )
    files[f"{name}-1.0.dist-info/RECORD"] = (record + f"{name}-1.0.dist-info/RECORD,,\n").encode()
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for p, d in files.items():
            z.writestr(p, d)
    return path


def install(batch: Path, tmp: Path, **env) -> subprocess.CompletedProcess:
    env = os.environ | {"ARCHER_WHEELS": str(tmp / "wheels"), "ARCHER_SITE": str(tmp / "site")} | env
    env |= {"ARCHER_IMPORT_CHECK": "0", "PYTHON": sys.executable}
    return subprocess.run(["bash", str(INSTALL), str(batch)], env=env, capture_output=True, text=True)


@pytest.fixture
def staged(tmp_path):
    dl = tmp_path / "dl"
    dl.mkdir()
    wheels = [
        make_wheel(dl, n, os.urandom(size)) for n, size in [("alpha", 3000), ("beta", 5000), ("gamma", 20000)]
    ]
    return wheels, stage.write_batches(wheels, 8192, tmp_path / "out")


def test_batches_hold_at_most_the_cap_and_split_what_is_larger(staged):
    wheels, batches = staged
    assert all(b["bytes"] <= 8192 for b in batches)
    assert all(sum(f.stat().st_size for f in b["folder"].glob("*.whl*")) == b["bytes"] for b in batches)
    files = sorted(f for b in batches for f in b["files"])
    gamma = wheels[2].name
    parts = [f"{gamma}.part{k:02d}-of-03" for k in (1, 2, 3)]
    assert files == sorted([wheels[0].name, wheels[1].name, *parts])
    joined = b"".join(
        next(b["folder"] for b in batches if p in b["files"]).joinpath(p).read_bytes() for p in parts
    )
    assert joined == wheels[2].read_bytes()
    manifest = (batches[0]["folder"] / "archer-wheels.sha256").read_text().splitlines()
    assert [line.split()[1] for line in manifest] == [w.name for w in wheels]


@pytest.mark.parametrize("no_pip", ["0", "1"])
def test_install_sh_waits_for_every_batch_then_installs_once(staged, tmp_path, no_pip):
    wheels, batches = staged
    for b in reversed(batches[1:]):
        run = install(b["folder"], tmp_path, ARCHER_NO_PIP=no_pip)
        assert run.returncode == 0, run.stderr
        assert "still to come" in run.stdout and not (tmp_path / "site").exists()
    run = install(batches[0]["folder"], tmp_path, ARCHER_NO_PIP=no_pip)
    assert run.returncode == 0, run.stderr
    assert (
        "joined gamma-1.0-py3-none-any.whl from 3 parts" in run.stdout and "installed 3 wheels" in run.stdout
    )
    check = (
        "import alpha, gamma; print(gamma.VALUE, len(open(gamma.__file__[:-11] + 'blob.bin', 'rb').read()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", check],
        env=os.environ | {"PYTHONPATH": str(tmp_path / "site")},
        capture_output=True,
    )
    assert out.stdout.decode().split() == ["gamma", "20000"], out.stderr
    again = install(batches[0]["folder"], tmp_path, ARCHER_NO_PIP=no_pip)
    assert again.returncode == 0 and "already installed" in again.stdout


def test_install_sh_rejects_a_corrupt_part(staged, tmp_path):
    _, batches = staged
    part = next(f for b in batches for f in b["folder"].glob("*.part02-of-03"))
    part.write_bytes(b"x" + part.read_bytes()[1:])
    runs = [install(b["folder"], tmp_path) for b in batches]
    assert runs[-1].returncode == 1 and "joined wrong" in runs[-1].stderr  # all parts are there by then
    assert not (tmp_path / "site").exists()


def test_install_sh_says_when_a_batch_was_not_carried(tmp_path):
    run = install(tmp_path / "bench/device/wheels/batch-09", tmp_path)
    assert run.returncode == 2 and "carry list" in run.stderr


def test_markers_are_evaluated_for_cpython_312_on_linux():
    assert not stage.applies(Requirement('tomli; python_version < "3.11"'), set())
    assert stage.applies(Requirement('typing-extensions; python_version < "3.13"'), set())
    assert not stage.applies(Requirement('colorama; platform_system == "Windows"'), set())
    assert stage.applies(Requirement('aiohttp; extra == "default"'), {"default"})
    assert not stage.applies(Requirement('aiohttp; extra == "default"'), set())


@pytest.mark.verl
def test_the_carried_set_is_verl_and_what_the_device_lacks():
    pytest.importorskip("verl", reason="the verl extra is not installed: pip install -e '.[verl]'")
    dists = stage.local_dists()
    device = stage.device_closure(dists)
    device.pop("tokenizers")
    carried, provided, skipped, conflicts, missing = stage.walk(dists, device, True, stage.DEFAULT_EXCLUDE)
    assert not missing and not conflicts
    for name in ["verl", "ray", "omegaconf", "hydra-core", "tensordict", "transferqueue", "transformers"]:
        assert carried[name]["version"] == dists[name].version
    assert "aiohttp" in carried  # through ray[default]
    assert {"torch", "numpy", "pyarrow", "rich", "typer", "accelerate"} <= set(provided)
    assert not {"torch", "numpy", "pyarrow", "torchcodec"} & set(carried)
    assert "torchcodec" in skipped


def test_vllm_stand_in_wheels_let_pip_resolve_against_the_devices_torch(tmp_path):
    """stage_vllm.py resolves vLLM with the device's torch stack as empty local wheels: pip must take
    the stand-in (torch==2.11.0 satisfied, nothing of CUDA pulled) — checked offline with a package
    that requires torch."""
    sys.path.insert(0, str(ROOT / "bench" / "device"))
    try:
        sv_spec = importlib.util.spec_from_file_location(
            "stage_vllm", ROOT / "bench" / "device" / "stage_vllm.py"
        )
        sv = importlib.util.module_from_spec(sv_spec)
        sv_spec.loader.exec_module(sv)
    finally:
        sys.path.pop(0)
    links = tmp_path / "links"
    links.mkdir()
    sv.stand_in_wheel(links, "torch", "2.11.0")
    wheel = make_wheel(links, "needs_torch", b"x")  # then give it a torch requirement
    with zipfile.ZipFile(wheel) as z:
        files = {n: z.read(n) for n in z.namelist()}
    meta = "needs_torch-1.0.dist-info/METADATA"
    files[meta] += b"Requires-Dist: torch==2.11.0\n"
    files.pop("needs_torch-1.0.dist-info/RECORD")
    with zipfile.ZipFile(wheel, "w") as z:
        for n, d in files.items():
            z.writestr(n, d)
        z.writestr("needs_torch-1.0.dist-info/RECORD", "")
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-index", "-q",
           "--find-links", str(links), "--report", str(report), "needs_torch"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    import json

    got = {i["metadata"]["name"]: i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert got == {"needs_torch": "1.0", "torch": "2.11.0+device"}
    assert "apache-tvm-ffi" not in sv.EXCLUDED  # xgrammar imports it (found on the H100)
