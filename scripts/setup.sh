#!/usr/bin/env bash
# Creates .venv and installs halfv-export with pinned dependencies (torch stays the CPU wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# The constraints file pins torch==2.13.0: an unpinned torch would pull several GB of CUDA wheels.
.venv/bin/python -m pip install -q -c constraints.txt torch==2.13.0
.venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'
echo "halfv-export installed in .venv ($(.venv/bin/halfv-export --version))"
