#!/usr/bin/env bash
# Runs every test project in Release and ends with one line: "N passed, N failed".
# Usage: ./test.sh [extra dotnet test args, e.g. --filter Name~Protocol]
set -uo pipefail
cd "$(dirname "$0")"
results=.out/test-results
rm -rf "$results"
mkdir -p "$results"
dotnet test Ferry.slnx -c Release --logger "trx" --results-directory "$results" "$@"
rc=$?
passed=0; failed=0
for f in "$results"/*.trx; do
  [ -f "$f" ] || continue
  # The <Counters> element of a TRX file holds the totals of that test project.
  p=$(grep -o '<Counters [^>]*' "$f" | grep -o ' passed="[0-9]*"' | grep -o '[0-9]*')
  x=$(grep -o '<Counters [^>]*' "$f" | grep -o ' failed="[0-9]*"' | grep -o '[0-9]*')
  passed=$((passed + ${p:-0})); failed=$((failed + ${x:-0}))
done
# A build failure produces no TRX: count it as a failure so it can never read as green.
if [ $rc -ne 0 ] && [ $failed -eq 0 ]; then failed=1; fi
echo "$passed passed, $failed failed"
[ $rc -eq 0 ] && [ $failed -eq 0 ]
