#!/usr/bin/env bash
# The test suite: set up (first time), then pytest. Extra arguments go to pytest, e.g. -m "not slow".
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
stage "testing: python -m pytest $*"
rc=0
python -m pytest "$@" || rc=$?
stage ""
exit $rc
