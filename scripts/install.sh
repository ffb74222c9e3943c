#!/usr/bin/env bash
# Install distrec and its pinned stack into a virtual environment (default .venv).
#
# torch 2.13, fbgemm 1.8.0 and torchrec 1.8.0 must match exactly (an ABI mismatch shows as
# "undefined symbol"). torchrec's metadata requires the CUDA `fbgemm-gpu`, so on CPU machines it
# is installed with --no-deps next to `fbgemm-gpu-cpu`; on GPU machines the CUDA wheel is used.
#   DISTREC_DEVICE=cpu|cuda   force the flavour (default: cuda when nvidia-smi sees a GPU)
set -euo pipefail

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
cd "$(dirname "$0")/.."

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install --quiet --upgrade pip

device="${DISTREC_DEVICE:-}"
if [ -z "$device" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then device=cuda; else device=cpu; fi
fi
case "$device" in
  cpu) fbgemm="fbgemm-gpu-cpu==1.8.0" ;;
  cuda) fbgemm="fbgemm-gpu==1.8.0" ;;
  *) echo "DISTREC_DEVICE must be cpu or cuda, got '$device'" >&2; exit 2 ;;
esac
echo "installing distrec for $device into $VENV"

python -m pip install --quiet "torch==2.13.0" "$fbgemm" \
  tensordict "torchmetrics==1.0.3" tqdm pyre-extensions iopath
python -m pip install --quiet --no-deps "torchrec==1.8.0"
python -m pip install --quiet -e ".[test]"
python - <<'PY'
import fbgemm_gpu, torch, torchrec  # noqa: F401  (fails loudly on an ABI mismatch)
import ray
print(f"torch {torch.__version__}, torchrec {torchrec.__version__}, ray {ray.__version__}: ok")
PY
