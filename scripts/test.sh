#!/usr/bin/env bash
# The test suite. Real-data tests run when READINGNOTES_DATA names ../shared/data (else they skip).
# pytest's "no tests collected" (exit 5) fails like any other error. `--no-loadscope-reorder`:
# xdist hands out test groups in collection order (tests/contract's long runs first) instead
# of largest-count first, which left the contract's few-test, minutes-long groups for the end.
. "$(dirname "$0")/venv.sh" requirements-test.txt
python -m pytest -q -n 2 --dist loadgroup --no-loadscope-reorder "$@"
