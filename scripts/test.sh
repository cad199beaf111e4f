#!/usr/bin/env bash
# Sets up .venv (idempotent) and runs the whole test suite, end-to-end engine tests included.
# Extra arguments go to pytest, e.g. `./scripts/test.sh tests/unit -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONHASHSEED=0 HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"
exec .venv/bin/python -m pytest "${@:-tests}"
