#!/usr/bin/env bash
# Run the test suite; "no tests collected" (pytest exit code 5) is a failure, not a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
