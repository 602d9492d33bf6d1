"""Stage vLLM 0.24.0 (verl 0.9.1's `vllm` extra) for the lent GPU machine, on top of stage.py's set.

stage.py carries archer[verl] (rollout `hf`). Issue 15's Run B also needs vLLM and what it imports. The
device already has vLLM's torch stack (torch 2.11.0+cu130, torchvision 0.26.0, torchaudio 2.11.0, triton
3.6.0), so this script:

1. resolves `vllm==0.24.0` for CPython 3.12 manylinux x86-64 with pip's own resolver (`pip install
   --dry-run --report`), the device's torch stack standing in as empty local wheels (so pip does not
   pull CUDA wheels the device has) and the shared venv's versions as constraints (so what both sets
   carry agrees; fastapi is the exception: vLLM needs <0.137, verl takes any);
2. carries what neither the device (its recorded package list) nor stage.py's set already has, minus
   EXCLUDED: kernel packages a dense bf16 model with vLLM's own FlashAttention never imports (MoE, MLA,
   CuTe-DSL and TileLang JIT stacks, FlashInfer's cubins; VLLM_USE_FLASHINFER_SAMPLER=0 on the device);
3. splits and packs the wheels like stage.py into bench/device/wheels/vllm/batch-NN (git-ignored), with
   their own manifest, installed on the device by install.sh into a second site folder:

     ARCHER_WHEELS=/tmp/archer-vllm-wheels ARCHER_SITE=/tmp/archer-vllm-site ARCHER_IMPORT_CHECK=0 \\
       bash bench/device/install.sh bench/device/wheels/vllm/batch-NN

   then PYTHONPATH=/tmp/archer-vllm-site:/tmp/archer-site:$PWD (the vLLM site first: its fastapi wins).

Usage: python bench/device/stage_vllm.py [--exclude NAME] [--carry-excluded NAME] [--no-download]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stage  # noqa: E402  (the sibling script: batches, downloads, the device's package list)

VLLM = "vllm==0.24.0"
# vLLM's wheels need newer manylinux tags than stage.py's set (llguidance: 2_31); the device: glibc >= 2.35.
PLATFORMS = ["--platform", "manylinux_2_27_x86_64", "--platform", "manylinux_2_31_x86_64",
             "--platform", "manylinux_2_34_x86_64", "--platform", "manylinux_2_35_x86_64"]  # fmt: skip
OUT = stage.HERE / "wheels" / "vllm"
# The device's CUDA torch stack: stand-ins so that pip resolves against it instead of downloading it.
DEVICE_TORCH = {"torch": "2.11.0", "torchvision": "0.26.0", "torchaudio": "2.11.0", "triton": "3.6.0"}
# Constraints taken from the venv except these (pip picks what vLLM accepts; the device's numpy stays).
UNCONSTRAINED = re.compile(r"^(fastapi|numpy|torch.*|triton|nvidia-.*|archer)$")
# Not excluded though TileLang uses it: apache-tvm-ffi, which xgrammar imports with vLLM's OpenAI server
# (the first H100 try stopped there: "No module named 'tvm_ffi'").
EXCLUDED = {
    "flashinfer-cubin": "FlashInfer kernels: unused with VLLM_USE_FLASHINFER_SAMPLER=0 and FlashAttention",
    "flashinfer-python": "same (vLLM checks for it and falls back)",
    "humming-kernels": "MoE/quantised GEMM kernels: a dense bf16 model does not import them",
    "tokenspeed-mla": "MLA attention (DeepSeek-style models)",
    "tokenspeed-triton": "MLA attention's Triton fork",
    "tilelang": "TileLang JIT kernels (MoE, sparse attention)",
    "z3-solver": "TileLang's solver",
    "torch-c-dlpack-ext": "TileLang/FlashInfer FFI",
    "quack-kernels": "CuTe-DSL kernels (Blackwell)",
    "nvidia-cutlass-dsl": "CuTe-DSL JIT (Blackwell kernels)",
    "nvidia-cutlass-dsl-libs-base": "CuTe-DSL JIT",
    "nvidia-cutlass-dsl-libs-cu13": "CuTe-DSL JIT",
    "cuda-python": "CuTe-DSL JIT",
    "cuda-tile": "CuTe-DSL JIT",
    "nvidia-cuda-tileiras": "CuTe-DSL JIT",
    "nvidia-nvvm": "CuTe-DSL JIT (a CUDA compiler)",
    "nvidia-cuda-nvcc": "CuTe-DSL JIT (a CUDA compiler)",
    "nvidia-cuda-crt": "CuTe-DSL JIT (a CUDA compiler)",
    "nvidia-cuda-cccl": "CuTe-DSL JIT (CUDA headers)",
}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def stand_in_wheel(folder: Path, name: str, version: str) -> None:
    """An empty wheel NAME-VERSION+device: pip sees the device's package, requires nothing."""
    dist, tag = f"{name}-{version}+device", "py3-none-any"
    files = {
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}+device\n",
        f"{dist}.dist-info/WHEEL": (
            f"Wheel-Version: 1.0\nGenerator: archer\nRoot-Is-Purelib: true\nTag: {tag}\n"
        ),
    }
    record = []
    with zipfile.ZipFile(folder / f"{dist}-{tag}.whl", "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
            digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(text)}")
        z.writestr(f"{dist}.dist-info/RECORD", "\n".join(record + [f"{dist}.dist-info/RECORD,,"]) + "\n")


def resolve() -> dict[str, str]:
    """name -> version of vLLM and everything it needs, resolved by pip for the device's platform."""
    venv = {norm(d.metadata["Name"]): d.version for d in stage.md.distributions()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "links").mkdir()
        for name, version in DEVICE_TORCH.items():
            stand_in_wheel(tmp / "links", name, version)
        cons = [f"{n}=={v}" for n, v in sorted(venv.items()) if not UNCONSTRAINED.match(n)]
        cons += [f"{n}=={v}+device" for n, v in DEVICE_TORCH.items()]
        (tmp / "constraints.txt").write_text("\n".join(cons) + "\n")
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
               "--report", str(tmp / "report.json"), "--find-links", str(tmp / "links"),
               *stage.PIP_TARGET, *PLATFORMS, "--platform", "any",
               "--target", str(tmp / "target"), "-c", str(tmp / "constraints.txt"), VLLM]  # fmt: skip
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode:
            err = "\n".join(ln for ln in run.stderr.splitlines() if "is ignored" not in ln)
            sys.exit(f"stage_vllm.py: pip could not resolve {VLLM}:\n{err[-3000:]}")
        report = json.loads((tmp / "report.json").read_text())
    return {norm(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}


def verl_set() -> dict[str, str]:
    """What stage.py's plan carries (name -> version), from bench/device/plan.json."""
    plan = stage.HERE / "plan.json"
    if not plan.exists():
        sys.exit("stage_vllm.py: run bench/device/stage.py first (its plan.json says what it carries)")
    return {norm(w["name"]): w["version"] for w in json.loads(plan.read_text())["wheels"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exclude", action="append", default=[], help="another package not to carry")
    p.add_argument("--carry-excluded", action="append", default=[], help="carry one of EXCLUDED after all")
    p.add_argument("--batch-mib", type=float, default=None, help="default: as stage.py's")
    p.add_argument("--no-download", action="store_true", help="print the package set only")
    args = p.parse_args()

    resolved = resolve()
    device = {norm(n): v for n, v in stage.read_freeze(stage.RECORDED_FREEZE).items()}
    verl = verl_set()
    excluded = {n: why for n, why in EXCLUDED.items() if n not in map(norm, args.carry_excluded)}
    excluded |= {norm(n): "--exclude" for n in args.exclude}
    carry, provided, skipped = {}, [], []
    for name, version in sorted(resolved.items()):
        if "+device" in version or name in device:
            provided.append(f"{name} (device {device.get(name, version)}; vLLM resolved {version})")
        elif verl.get(name) == version:
            provided.append(f"{name} {version} (stage.py's set)")
        elif name in excluded:
            skipped.append(f"{name} {version}: {excluded[name]}")
        else:
            carry[name] = version
    print(f"{VLLM}: {len(resolved)} packages resolved; carried {len(carry)}, provided {len(provided)},"
          f" excluded {len(skipped)}")  # fmt: skip
    for line in skipped:
        print(f"excluded: {line}")
    if args.no_download:
        print("\n".join(f"carry: {n}=={v}" for n, v in carry.items()))
        return
    stage.PIP_TARGET = stage.PIP_TARGET + PLATFORMS
    wheels = stage.download(carry, OUT / "dl")
    if args.batch_mib is None:
        args.batch_mib = stage.default_batch_mib(stage.tree_bytes())
    cap = int(args.batch_mib * stage.MIB)
    batches = stage.write_batches(list(wheels.values()), cap, OUT)
    total = sum(w.stat().st_size for w in wheels.values())
    lines = [
        f"{len(wheels)} wheels, {total / stage.MIB:.1f} MiB,"
        f" {len(batches)} batches of <= {args.batch_mib} MiB"
    ]
    env = "ARCHER_WHEELS=/tmp/archer-vllm-wheels ARCHER_SITE=/tmp/archer-vllm-site ARCHER_IMPORT_CHECK=0"
    for b in batches:
        rel = b["folder"].relative_to(stage.ROOT).as_posix()
        lines.append(f"batch {b['batch']:02d}: {b['bytes'] / stage.MIB:.1f} MiB, {len(b['files'])} files")
        lines.append(f"  carry:   {json.dumps([rel])}")
        lines.append(f"  command: {env} bash bench/device/install.sh {rel}")
    lines.append(
        "then: PYTHONPATH=/tmp/archer-vllm-site:/tmp/archer-site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 ..."
    )
    text = "\n".join(lines) + "\n"
    (stage.HERE / "plan-vllm.txt").write_text(text + "".join(f"excluded: {s}\n" for s in skipped))
    print(text, end="")


if __name__ == "__main__":
    main()
