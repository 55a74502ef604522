#!/usr/bin/env bash
# Runs every test project in Release and ends with one line: "N passed, N failed".
# Usage: ./test.sh [extra dotnet test args, e.g. --filter Name~Protocol]
set -uo pipefail
cd "$(dirname "$0")"
results=.out/test-results
rm -rf "$results"
mkdir -p "$results"
dotnet test Ferry.slnx -c Release --logger "trx" --results-directory "$results" "$@" 2>&1 | tee "$results/output.log"
rc=${PIPESTATUS[0]}
passed=0; failed=0
# Count from each test project's summary line ("Passed!  - Failed:     0, Passed:   124, Skipped: ..."), not from the
# TRX files: those are named by the second they were written, so two projects finishing together can share a name.
while read -r x p; do
  passed=$((passed + p)); failed=$((failed + x))
done < <(sed -nE 's/^(Passed|Failed)! +- +Failed: +([0-9]+), +Passed: +([0-9]+),.*/\2 \3/p' "$results/output.log")
# A build failure or a crashed test host prints no summary: count it as a failure so it can never read as green.
if [ $rc -ne 0 ] && [ $failed -eq 0 ]; then failed=1; fi
echo "$passed passed, $failed failed"
[ $rc -eq 0 ] && [ $failed -eq 0 ]
