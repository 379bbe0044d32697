#!/usr/bin/env bash
# expect_report.sh CANARY MODE PATTERN: passes only when `CANARY MODE` fails and its output
# contains PATTERN (the sanitizer's report), i.e. when the sanitizer job would catch the bug.
set -u
out=$("$1" "$2" 4 2>&1)
rc=$?
if [ $rc -eq 0 ]; then echo "$2: exited 0, the bug went unreported"; echo "$out" | tail -20; exit 1; fi
if ! grep -q -- "$3" <<<"$out"; then echo "$2: exit $rc without '$3'"; echo "$out" | tail -40; exit 1; fi
# scripts/sanitize.sh sets exitcode=$SANITIZER_EXIT for every sanitizer: the report, not some
# other failure, must be what ended the process.
if [ -n "${SANITIZER_EXIT:-}" ] && [ "$rc" -ne "$SANITIZER_EXIT" ]; then
  echo "$2: reported '$3' but exited $rc, not $SANITIZER_EXIT"; echo "$out" | tail -20; exit 1
fi
echo "$2: caught (exit $rc, '$3')"
