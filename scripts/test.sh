#!/usr/bin/env bash
# The test suite: set up (first time), then ruff and pytest. Extra arguments go to pytest, e.g. -m "not slow".
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
rc=0
stage "linting: python -m ruff check . (the configuration is in pyproject.toml)"
python -m ruff check . || rc=$?
stage "testing: python -m pytest $*"
python -m pytest "$@" || rc=$?
stage ""
exit $rc
