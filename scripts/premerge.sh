#!/usr/bin/env bash
# The pre-merge run of .github/workflows/premerge.yml for any other CI system (GitLab, Jenkins,
# Buildkite, a cron job): build and run the test suite (`make test`), then `mambadiff check` writing
# JUnit, the HTML report (a divergence map per failing case beside it) and one more run of the error
# history, then `mambadiff trend` over that history.
#
#   scripts/premerge.sh [OUT]          OUT (default premerge-out/): check.xml, check.json, check.html,
#                                      check.cases/, trend.html
# Environment:
#   MAMBADIFF_HISTORY  the history file (default OUT/history.jsonl); keep it between runs (a CI cache
#                      or artifact) or nothing accumulates
#   MAMBADIFF_COMMIT   the commit recorded (default: git rev-parse HEAD here, else "unknown")
#   BUILD              the build folder (default build)
# Exit: check's (0 agree, 1 divergence, 2 bad input); a corrupt history is 2; drift (trend's 1) is a
# warning on stderr, not a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-premerge-out}"
BUILD="${BUILD:-build}"
HISTORY="${MAMBADIFF_HISTORY:-$OUT/history.jsonl}"
MAMBADIFF_COMMIT="${MAMBADIFF_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
export MAMBADIFF_COMMIT
mkdir -p "$OUT" "$(dirname "$HISTORY")"

make test BUILD="$BUILD"

check_rc=0
"$BUILD/mambadiff" check --junit "$OUT/check.xml" --report "$OUT/check.html" --history "$HISTORY" \
  --json "$OUT/check.json" || check_rc=$?

trend_rc=0
"$BUILD/mambadiff" trend "$HISTORY" --report "$OUT/trend.html" || trend_rc=$?
if [ "$trend_rc" = 1 ]; then
  echo "premerge: WARNING: a case drifted toward its tolerance (see $OUT/trend.html)" >&2
elif [ "$trend_rc" != 0 ]; then
  echo "premerge: trend failed (exit $trend_rc): is $HISTORY corrupt?" >&2
  exit "$trend_rc"
fi
echo "premerge: reports in $OUT/ (check.html, trend.html, check.xml), history $HISTORY; check exit $check_rc"
exit "$check_rc"
