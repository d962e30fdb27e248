#!/usr/bin/env bash
# Sets up (if needed) and runs the whole test suite (slow, triton and zoo tests included). This is the README's
# test command; CI (.ci/run) runs it, then the runtime tests under numpy 2. The fast loop: add -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
