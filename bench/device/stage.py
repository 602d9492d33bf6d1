"""Stage archer's verl path (`archer[verl]`, rollout `hf`, no vLLM) for a lent GPU machine with no network.

The GPU machine's python3 is CPython 3.12 (linux x86-64) and already has torch 2.11.0+cu130,
transformers 5.17, numpy, pyarrow, rich, typer and accelerate, so only the rest travels. Files reach
it only inside the repository copy of a `run` call (64 MiB a call, ignored paths named in `carry`),
so this script:

1. walks the Requires-Dist of archer's own dependencies plus its `[verl]` extra (markers evaluated
   for CPython 3.12 on linux x86-64), at the versions installed in the running environment (the
   shared venv: GPU and CPU runs use the same versions), stopping at what the device already has;
2. downloads exactly those wheels (`pip download --no-deps --only-binary=:all:` for cp312 manylinux);
3. splits every wheel over the batch limit into parts and packs wheels and parts into batches of at
   most --batch-mib, one folder each (bench/device/wheels/batch-NN, one `carry` path per call);
4. prints the plan and writes it to bench/device/plan.json and plan.txt.

On the device, `bash bench/device/install.sh bench/device/wheels/batch-NN` for each batch (any
order) collects, joins, verifies and, after the last one, installs everything into /tmp/archer-site.
See bench/device/README.md.

Usage: python bench/device/stage.py [--device-freeze FILE] [--transformers carry|device] [--no-download]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "bench" / "device"
MIB = 1 << 20
CALL_LIMIT_MIB = 64  # what one `run` call carries, repository copy included

# CPython 3.12 on linux x86-64: the environment Requires-Dist markers are evaluated in
TARGET_ENV = {
    "implementation_name": "cpython",
    "implementation_version": "3.12.0",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": "3.12.0",
    "python_version": "3.12",
    "sys_platform": "linux",
}
PIP_TARGET = [
    "--only-binary=:all:",
    "--python-version", "3.12",
    "--implementation", "cp",
    "--abi", "cp312",
    "--platform", "manylinux2014_x86_64",
    "--platform", "manylinux_2_17_x86_64",
    "--platform", "manylinux_2_28_x86_64",
]  # fmt: skip

# What the device's python3 has (measured 2026-12, issue 15); their own dependencies come with them.
DEVICE_ROOTS = {"torch": "2.11.0", "transformers": "5.17", "numpy": None, "pyarrow": None}
DEVICE_ROOTS |= {"rich": None, "typer": None, "accelerate": None}
# Never carried whatever the device lacks: the CUDA stack comes with the device's torch build.
NEVER_CARRY = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|numpy|pyarrow)$")
# Requires-Dist that the verl path never imports and that would not work if carried.
DEFAULT_EXCLUDE = {
    # verl 0.9.1 lists it (video decoding) but imports it nowhere; its wheel is built for one torch
    # release (the venv's 2.13), not the device's 2.11, and needs FFmpeg libraries the device lacks.
    "torchcodec": "built for the venv's torch, not the device's 2.11; verl never imports it",
}

TF_CARRY = (
    "the venv's version, carried with its tokenizers (verl 0.9.1 and archer pin <5.11);"
    " on PYTHONPATH first, it shadows the device's 5.17"
)
TF_DEVICE = "the device's 5.17: outside verl 0.9.1's and archer's pin <5.11 (installed --no-deps: unchecked)"
AFTER_INSTALL = (
    "export PYTHONPATH=/tmp/archer-site:$PWD PATH=/tmp/archer-site/bin:$PATH;"
    " python3 -m archer train --preset quickstart-verl"
)


def archer_requirements() -> list[Requirement]:
    """archer's dependencies plus its `[verl]` extra, as pyproject.toml declares them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(s) for s in project["dependencies"] + project["optional-dependencies"]["verl"]]


def applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate(TARGET_ENV | {"extra": e}) for e in {""} | extras)


def local_dists() -> dict[str, md.Distribution]:
    return {canonicalize_name(d.metadata["Name"]): d for d in md.distributions()}


def requires(dist: md.Distribution, extras: set[str]) -> list[Requirement]:
    return [r for r in map(Requirement, dist.requires or []) if applies(r, extras)]


def device_closure(dists: dict[str, md.Distribution]) -> dict[str, str | None]:
    """The device roots and everything they require (from this environment's metadata: an estimate)."""
    have: dict[str, str | None] = dict(DEVICE_ROOTS)
    todo = list(DEVICE_ROOTS)
    while todo:
        dist = dists.get(todo.pop())
        for req in requires(dist, set()) if dist else []:
            name = canonicalize_name(req.name)
            if name not in have:
                have[name] = None
                todo.append(name)
    return have


def read_freeze(path: Path) -> dict[str, str | None]:
    """`pip list --format=freeze` (or `pip freeze`) output of the device: name -> version."""
    have: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            have[canonicalize_name(name)] = version
        elif " @ " in line:
            have[canonicalize_name(line.split(" @ ")[0])] = None
    return have


def walk(dists, device: dict[str, str | None], carry_transformers: bool, exclude: dict[str, str]):
    """Carried packages (name -> version, extras, required_by), what the device provides, conflicts."""
    carried: dict[str, dict] = {}
    provided: dict[str, list[str]] = defaultdict(list)
    skipped: dict[str, list[str]] = defaultdict(list)
    conflicts: list[str] = []
    missing: list[str] = []
    queue = [(req, "archer") for req in archer_requirements() if applies(req, set())]
    while queue:
        req, parent = queue.pop(0)
        name = canonicalize_name(req.name)
        on_device = name in device and not (carry_transformers and name == "transformers")
        if name in exclude:
            skipped[name].append(parent)
        elif on_device or NEVER_CARRY.match(name):
            provided[name].append(f"{parent} ({req.specifier or 'any'})")
            version = device.get(name)
            if version and not req.specifier.contains(version, prereleases=True):
                conflicts.append(f"device {name} {version} does not satisfy {parent}: {name}{req.specifier}")
        elif name not in dists:
            missing.append(f"{name} (required by {parent})")
        else:
            dist = dists[name]
            if not req.specifier.contains(dist.version, prereleases=True):
                conflicts.append(
                    f"pinned {name} {dist.version} does not satisfy {parent}: {name}{req.specifier}"
                )
            entry = carried.setdefault(name, {"version": dist.version, "extras": None, "required_by": []})
            entry["required_by"].append(parent)
            extras = set(req.extras) | (entry["extras"] or set())
            if entry["extras"] is None or extras != entry["extras"]:
                entry["extras"] = extras
                queue += [(r, name) for r in requires(dist, extras)]
    return carried, dict(provided), dict(skipped), conflicts, missing


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def build_pure_wheel(spec: str, dest: Path) -> None:
    """A release with no wheel on the index (sdist only): build it here; only a pure-Python one will do."""
    print(f"+ pip wheel --no-deps {spec} (no wheel on the index: built from its sdist)")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-w",
            tmp,
            spec,
        ]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode:
            sys.exit(f"stage.py: building {spec} failed:\n{run.stderr[-3000:]}")
        (built,) = Path(tmp).glob("*.whl")
        if not built.name.endswith("-none-any.whl"):
            sys.exit(f"stage.py: {spec} has no cp312 wheel and builds to a platform wheel: {built.name}")
        shutil.move(built, dest / built.name)


def download(pins: dict[str, str], dest: Path) -> dict[str, Path]:
    """One wheel per pinned name, from the package index (files already in dest are reused)."""
    dest.mkdir(parents=True, exist_ok=True)
    have = {}
    for f in dest.glob("*.whl"):
        name, version, *_ = parse_wheel_filename(f.name)
        have[(name, version)] = f
    todo = [f"{n}=={v}" for n, v in sorted(pins.items()) if (n, Version(v)) not in have]
    while todo:
        print(f"+ pip download --no-deps --only-binary=:all: (cp312 manylinux x86-64): {len(todo)} wheels")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            *PIP_TARGET,
            "-d",
            str(dest),
            *todo,
        ]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode == 0:
            break
        found = re.search(r"No matching distribution found for (\S+)", run.stderr)
        if not found or found.group(1) not in todo:
            sys.exit(f"stage.py: pip download failed:\n{run.stderr[-3000:]}")
        build_pure_wheel(found.group(1), dest)
        todo.remove(found.group(1))
    wheels = {}
    for f in sorted(dest.glob("*.whl")):
        name, version, *_ = parse_wheel_filename(f.name)
        if pins.get(name) and Version(pins[name]) == version:
            wheels[name] = f
    lost = sorted(set(pins) - set(wheels))
    if lost:
        sys.exit(f"stage.py: no cp312 manylinux wheel downloaded for: {', '.join(lost)}")
    return wheels


def pack(items: list[tuple[str, int]], cap: int) -> list[list[tuple[str, int]]]:
    """First-fit decreasing: few batches, each at most cap bytes."""
    bins: list[list[tuple[str, int]]] = []
    for item in sorted(items, key=lambda it: -it[1]):
        for b in bins:
            if sum(s for _, s in b) + item[1] <= cap:
                b.append(item)
                break
        else:
            bins.append([item])
    return bins


PART = re.compile(r"^(?P<wheel>.+\.whl)\.part(?P<k>\d+)-of-(?P<n>\d+)$")


def write_batches(wheels: list[Path], cap: int, out: Path) -> list[dict]:
    """out/batch-NN folders of at most cap bytes of wheels and parts (NAME.whl.partKK-of-NN, cap bytes
    each) plus the sha256 manifest of all wheels, which install.sh checks; old batch folders go."""
    items, sources = [], {}
    for path in sorted(wheels, key=lambda p: p.name):
        size, n = path.stat().st_size, math.ceil(path.stat().st_size / cap)
        names = [path.name] if n == 1 else [f"{path.name}.part{i + 1:02d}-of-{n:02d}" for i in range(n)]
        items += [(name, min(cap, size - i * cap)) for i, name in enumerate(names)]
        sources[path.name] = path
    manifest = "".join(f"{sha256(p)}  {p.name}\n" for p in sorted(wheels, key=lambda p: p.name))
    for old in out.glob("batch-*"):
        shutil.rmtree(old)
    batches = []
    for i, content in enumerate(pack(items, cap), 1):
        folder = out / f"batch-{i:02d}"
        folder.mkdir(parents=True)
        for item, _ in content:
            part = PART.match(item)
            if part:
                with sources[part["wheel"]].open("rb") as f:
                    f.seek((int(part["k"]) - 1) * cap)
                    (folder / item).write_bytes(f.read(cap))
            else:
                try:
                    os.link(sources[item], folder / item)
                except OSError:
                    shutil.copy2(sources[item], folder / item)
        (folder / "archer-wheels.sha256").write_text(manifest)
        files = sorted(item for item, _ in content)
        batches.append({"batch": i, "folder": folder, "bytes": sum(s for _, s in content), "files": files})
    return batches


def tree_bytes() -> int:
    """Bytes of what every call copies anyway: tracked files and untracked ones git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout  # fmt: skip
    return sum((ROOT / p).stat().st_size for p in out.decode().split("\0") if p and (ROOT / p).is_file())


def stage(args) -> dict:
    dists = local_dists()
    if "verl" not in dists:
        sys.exit("stage.py: run it with the python that has archer[verl] installed (the shared venv)")
    device = read_freeze(args.device_freeze) if args.device_freeze else device_closure(dists)
    for name in args.carry:  # carry the venv's version even though the device has one
        device.pop(canonicalize_name(name), None)
    exclude = DEFAULT_EXCLUDE | {canonicalize_name(n): "--exclude" for n in args.exclude}
    carry_tf = args.transformers == "carry"
    if carry_tf:  # transformers 5.10 refuses at import a tokenizers > 0.23.0 (5.17 comes with a newer one)
        device.pop("tokenizers", None)
    while True:  # a device package too old or new for what is carried: carry the venv's version instead
        carried, provided, skipped, conflicts, missing = walk(dists, device, carry_tf, exclude)
        clash = {
            c.split()[1] for c in conflicts if c.startswith("device ") and not NEVER_CARRY.match(c.split()[1])
        }
        if not clash - {"transformers"}:
            break
        print("\n".join(f"{c}: carried instead" for c in conflicts if c.split()[1] in clash))
        for name in clash - {"transformers"}:
            device.pop(name)
    if missing:
        sys.exit("stage.py: required but not installed here, so no pinned version: " + "; ".join(missing))

    out = args.out.resolve()
    check = ["git", "check-ignore", "-q", str(out / "batch-01")]
    ignored = subprocess.run(check, cwd=ROOT, stderr=subprocess.DEVNULL).returncode == 0
    if not out.is_relative_to(ROOT) or not ignored:
        sys.exit(
            f"stage.py: --out {args.out} must be a git-ignored folder of this repository (calls carry those)"
        )
    pins = {n: c["version"] for n, c in carried.items()}
    wheels = download(pins, out / "dl") if not args.no_download else {}
    if args.no_download:
        return {"carried": pins, "provided": provided, "conflicts": conflicts}

    tree = tree_bytes()
    if args.batch_mib is None:
        args.batch_mib = default_batch_mib(tree)
    cap = int(args.batch_mib * MIB)
    if cap + tree > CALL_LIMIT_MIB * MIB:
        print(
            f"warning: a {args.batch_mib} MiB batch plus the {tree / MIB:.1f} MiB tree"
            f" exceeds what one call carries ({CALL_LIMIT_MIB} MiB)"
        )
    batches = write_batches(list(wheels.values()), cap, out)
    for b in batches:
        rel = b.pop("folder").relative_to(ROOT).as_posix()
        b |= {"carry": [rel], "command": f"bash bench/device/install.sh {rel}"}
    records = []
    for name, path in sorted(wheels.items()):
        c = carried[name]
        records.append(
            {"name": name, "version": c["version"], "file": path.name, "bytes": path.stat().st_size,
             "parts": math.ceil(path.stat().st_size / cap), "required_by": sorted(set(c["required_by"]))}
        )  # fmt: skip
    return {
        "target": "CPython 3.12, manylinux x86-64 (cp312)",
        "device_packages": "--device-freeze " + str(args.device_freeze)
        if args.device_freeze
        else "estimated: " + ", ".join(sorted(DEVICE_ROOTS)) + " and what they require",
        "transformers": TF_CARRY if carry_tf else TF_DEVICE,
        "batch_limit_mib": args.batch_mib,
        "tree_mib": round(tree / MIB, 2),
        "total_bytes": sum(r["bytes"] for r in records),
        "wheels": records,
        "excluded": {n: {"why": exclude[n], "required_by": p} for n, p in skipped.items()},
        "provided_by_device": {n: sorted(set(p)) for n, p in sorted(provided.items())},
        "conflicts": conflicts,
        "batches": batches,
        "after_install": AFTER_INSTALL,
    }


def render(plan: dict) -> str:
    lines = [
        f"archer[verl] for {plan['target']}: {len(plan['wheels'])} wheels, "
        f"{plan['total_bytes'] / MIB:.1f} MiB, {len(plan['batches'])} batches of <= "
        f"{plan['batch_limit_mib']} MiB (+ {plan['tree_mib']} MiB repository copy per call)",
        f"device packages: {plan['device_packages']}",
        f"transformers: {plan['transformers']}",
    ]
    for name, e in plan["excluded"].items():
        lines.append(f"excluded: {name} ({e['why']})")
    for c in plan["conflicts"]:
        lines.append(f"CONFLICT: {c}")
    for w in plan["wheels"]:
        split = f"  split in {w['parts']}" if w["parts"] > 1 else ""
        lines.append(f"  {w['bytes'] / MIB:7.2f} MiB  {w['file']}{split}")
    for b in plan["batches"]:
        lines.append(f"batch {b['batch']:02d}: {b['bytes'] / MIB:.1f} MiB, {len(b['files'])} files")
        lines.append(f"  carry:   {json.dumps(b['carry'])}")
        lines.append(f"  command: {b['command']}")
    lines.append(f"then: {plan['after_install']}")
    return "\n".join(lines) + "\n"


RECORDED_FREEZE = HERE / "device-freeze-h100-2026-12-07.txt"


def default_batch_mib(tree: int) -> float:
    """The largest batch one call carries beside the repository copy, with a margin for what the
    call counts besides tracked files (a 60 MiB batch with a 3.8 MiB tree was refused)."""
    return float(int(CALL_LIMIT_MIB - tree / MIB - 4))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out", type=Path, default=HERE / "wheels", help="download and batch folder (git-ignored)"
    )
    p.add_argument(
        "--batch-mib",
        type=float,
        default=None,
        help="most MiB of wheels carried in one call (default: what the call limit leaves beside the"
        " repository copy, less a 4 MiB margin: a 60 MiB batch with a 3.8 MiB tree was refused)",
    )
    p.add_argument(
        "--device-freeze",
        type=Path,
        default=RECORDED_FREEZE if RECORDED_FREEZE.exists() else None,
        help="the device's package list (install.sh writes it to $OUT/device-freeze.txt); default: the "
        "one recorded on the lent H100 on 2026-12-07",
    )
    p.add_argument("--transformers", choices=["carry", "device"], default="carry")
    p.add_argument("--carry", action="append", default=[], help="carry a package the device has (repeatable)")
    p.add_argument("--exclude", action="append", default=[], help="a package not to carry (repeatable)")
    p.add_argument("--no-download", action="store_true", help="print the package set only")
    args = p.parse_args()
    plan = stage(args)
    if args.no_download:
        print(json.dumps(plan, indent=1))
        return
    text = render(plan)
    (HERE / "plan.json").write_text(json.dumps(plan, indent=1) + "\n")
    (HERE / "plan.txt").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
