#!/usr/bin/env bash
# Install torch into the venv BEFORE anything else can pull it in.
#   $1: the pip executable    $2: the torch spec (default torch==2.13.0)
# Order of preference:
#   1. already installed at that spec: nothing to do;
#   2. a wheel on a local find-links directory (PIP_FIND_LINKS), without asking any index;
#   3. no NVIDIA GPU: the CPU build from the PyTorch CPU index; where that index is unreachable,
#      pip's configured index (on our CI machines it serves the CPU build from local disk);
#   4. a GPU: the default (CUDA) build from PyPI.
set -euo pipefail
pip="$1"
spec="${2:-torch==2.13.0}"
version="${spec#torch==}"
installed=$("$pip" show torch 2>/dev/null | sed -n 's/^Version: //p' || true)
if [ -n "$installed" ] && [ "${installed%%+*}" = "${version%%+*}" ]; then
  exit 0
fi
if "$pip" install --quiet --no-index "$spec" 2>/dev/null; then
  exit 0
fi
if ! command -v nvidia-smi >/dev/null 2>&1; then
  # No retries: where that index is unreachable (registries-only networks) this fails in seconds.
  if timeout 300 "$pip" install --quiet --retries 0 --timeout 10 --index-url https://download.pytorch.org/whl/cpu "$spec"; then
    exit 0
  fi
  echo "install_torch: the CPU index was not reachable; falling back to PyPI's $spec" >&2
fi
"$pip" install --quiet "$spec"
