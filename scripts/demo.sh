#!/usr/bin/env bash
# The main job: set up (first time), run the smoke sweep, then its report. Safe to rerun: the sweep resumes.
# Usage: bash scripts/demo.sh [EXPERIMENT]   (default: smoke)
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
EXP="${1:-smoke}"
stage "sweeping: nanoact sweep --experiment $EXP"
nanoact sweep --experiment "$EXP"
stage "reporting: nanoact report --experiment $EXP"
nanoact report --experiment "$EXP"
stage ""
echo "report: reports/$EXP/report.md and report.html; browse the runs with: .venv/bin/nanoact ui --experiment $EXP"
