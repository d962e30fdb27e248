#!/usr/bin/env bash
# Creates .venv with halfv-export (editable, every extra) and the shapes zoo package (zoo/), all pinned by
# constraints.txt; torch stays the CPU wheel. Idempotent: a second run changes nothing. Quiet: pip's and the
# build backend's output is shown only when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
quiet() {
  local log status=0
  log=$(mktemp)
  "$@" >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then cat "$log" >&2; fi
  rm -f "$log"
  return "$status"
}
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
quiet .venv/bin/python -m pip install -q --upgrade pip || true
# torch first, alone: the constraints file pins the CPU build (an unpinned torch pulls several GB of CUDA wheels).
quiet .venv/bin/python -m pip install -q -c constraints.txt torch
quiet .venv/bin/python -m pip install -q -c constraints.txt -e '.[export,lint,triton,plots,test]'
if [ -f zoo/pyproject.toml ]; then
  quiet .venv/bin/python -m pip install -q -c constraints.txt -e ./zoo
fi
echo "halfv-export installed in .venv ($(.venv/bin/halfv-export --version))"
