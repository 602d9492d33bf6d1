#!/usr/bin/env bash
# The GPU-side half of bench/device/stage.py. Run once per carried batch, in any order, on the device:
#   bash bench/device/install.sh bench/device/wheels/batch-NN [more batch folders]
# It copies the batch into $ARCHER_WHEELS, joins a split wheel once all its parts are there, and, once
# every wheel of the manifest is there with the right sha256, installs them all (no index, no deps) into
# $ARCHER_SITE (a new folder, renamed into place), then checks that verl, ray and omegaconf import.
# Idempotent: a second run after the install only re-checks the imports.
# Use afterwards: export PYTHONPATH=/tmp/archer-site:$PWD (the site first: its transformers wins).
set -euo pipefail
shopt -s nullglob
wheels=${ARCHER_WHEELS:-/tmp/archer-wheels}
site=${ARCHER_SITE:-/tmp/archer-site}
py=${PYTHON:-python3}
manifest=archer-wheels.sha256

[ $# -ge 1 ] || { echo "usage: bash bench/device/install.sh BATCH_FOLDER..." >&2; exit 2; }
# what the device's python has, for `stage.py --device-freeze` (returned from the call's $OUT)
freeze=${ARCHER_FREEZE_OUT:-${OUT:+$OUT/device-freeze.txt}}
if [ -n "$freeze" ]; then
  PYTHONPATH= "$py" -c 'import importlib.metadata as m, sys
print(f"# python {sys.version.split()[0]}")
print("\n".join(sorted(f"{d.name}=={d.version}" for d in m.distributions())))' > "$freeze"
fi
mkdir -p "$wheels"
for batch in "$@"; do
  if [ ! -f "$batch/$manifest" ]; then
    echo "install.sh: $batch is not a staged batch (was it named in the call's carry list?)" >&2
    exit 2
  fi
  cp -f "$batch"/* "$wheels"/
  echo "copied $(ls "$batch" | wc -l) files from $batch"
done
cd "$wheels"

# join split wheels: NAME.whl.partKK-of-NN, all NN of them present
missing=0
while read -r sum wheel; do
  if [ ! -f "$wheel" ]; then
    parts=("$wheel".part*-of-*)
    total=0
    [ ${#parts[@]} -gt 0 ] && total=$((10#${parts[0]##*-of-}))
    if [ "$total" -gt 0 ] && [ ${#parts[@]} -eq "$total" ]; then
      cat "${parts[@]}" > "$wheel.joining"
      echo "$sum  $wheel.joining" | sha256sum -c --quiet - || { echo "install.sh: $wheel joined wrong" >&2; exit 1; }
      mv "$wheel.joining" "$wheel" && rm -f "${parts[@]}"
      echo "joined $wheel from $total parts"
    else
      missing=$((missing + 1))
      if [ "$total" -gt 0 ]; then echo "waiting for $wheel: ${#parts[@]} of $total parts here"; fi
    fi
  fi
done < "$manifest"
if [ "$missing" -gt 0 ]; then
  echo "$missing wheel(s) still to come: carry the other batches"
  exit 0
fi
sha256sum -c --quiet "$manifest" || { echo "install.sh: a wheel in $wheels has the wrong sha256" >&2; exit 1; }

if cmp -s "$manifest" "$site/.archer-wheels.sha256"; then
  echo "already installed in $site"
else
  rm -rf "$site.new"
  start=$(date +%s)
  if [ "${ARCHER_NO_PIP:-0}" != 1 ] && "$py" -m pip --version > /dev/null 2>&1; then
    # shellcheck disable=SC2086  # PIP_INSTALL_EXTRA holds several options
    "$py" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check ${PIP_INSTALL_EXTRA:-} \
      --target "$site.new" $(awk '{print $2}' "$manifest")
  else  # no pip: a wheel is a zip; unpack each, its .data/purelib and .data/platlib into the root
    echo "no pip for $py: unpacking the wheels"
    "$py" - "$site.new" $(awk '{print $2}' "$manifest") <<'PY'
import shutil, sys, zipfile
from pathlib import Path

site = Path(sys.argv[1])
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            parts = info.filename.split("/")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue  # scripts and headers: not needed on PYTHONPATH
                parts = parts[2:]
            if info.is_dir():
                continue
            target = site.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            if info.external_attr >> 16:
                target.chmod((info.external_attr >> 16) & 0o777)
PY
  fi
  cp "$manifest" "$site.new/.archer-wheels.sha256"
  rm -rf "$site" && mv "$site.new" "$site"
  echo "installed $(wc -l < "$manifest") wheels into $site in $(($(date +%s) - start)) s"
fi

if [ "${ARCHER_IMPORT_CHECK:-1}" = 1 ]; then
  PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" "$py" -c '
import omegaconf, ray, torch, transformers, verl
print("import check: verl", verl.__version__, "ray", ray.__version__, "omegaconf", omegaconf.__version__,
      "transformers", transformers.__version__, "torch", torch.__version__, "cuda", torch.cuda.is_available())'
fi
