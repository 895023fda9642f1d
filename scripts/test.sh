#!/usr/bin/env bash
# The test suite. Real-data tests run when READINGNOTES_DATA names ../shared/data (else they skip).
# pytest's "no tests collected" (exit 5) fails like any other error.
. "$(dirname "$0")/venv.sh" requirements-test.txt
python -m pytest -q -n 2 --dist loadgroup "$@"
