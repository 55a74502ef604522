#!/usr/bin/env bash
# Runs every test project in Release and ends with one line: "N passed, N failed".
# Usage: ./test.sh [extra dotnet test args, e.g. --filter Name~Protocol]
set -uo pipefail
cd "$(dirname "$0")"
results=.out/test-results
rm -rf "$results"
mkdir -p "$results"
# A test that runs longer than 5 minutes (the longest takes ~1; FERRY_TEST_HANG_TIMEOUT sets another) is taken as hung: its host is dumped and stopped, so
# the run ends with that test named instead of running into CI's time limit.
dotnet test Ferry.slnx -c Release --logger "trx" --results-directory "$results" \
  --blame-hang-timeout "${FERRY_TEST_HANG_TIMEOUT:-5m}" --blame-hang-dump-type mini "$@" 2>&1 | tee "$results/output.log"
rc=${PIPESTATUS[0]}
# Where each thread of a hung test host stood (its threads that ran Ferry code), from the dump, into the log.
for dump in $(find "$results" -name '*_hangdump.dmp' ! -name 'dotnet_*' 2>/dev/null); do
  tools=.out/tools
  [ -x $tools/dotnet-dump ] || dotnet tool install --tool-path $tools dotnet-dump --version 10.0.750501 >/dev/null 2>&1
  echo "== managed stacks of the hung test host ($dump), threads in Ferry code:"
  $tools/dotnet-dump analyze "$dump" -c "clrstack -all" -c exit 2>&1 \
    | awk '/^OS Thread Id/ { if (keep) printf "%s", block; block = ""; keep = 0; n = 0 }
           { if (n++ < 40) block = block $0 "\n"; if (/Ferry\./) keep = 1 }
           END { if (keep) printf "%s", block }' | tee -a "$results/output.log"
done
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
