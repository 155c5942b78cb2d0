#!/bin/bash
# A checkpoint writer killed (SIGKILL) while it writes: the previous checkpoint stays the latest and loads; the
# leftover .tmp neither counts nor stops the next save of that step.
set -u
tool=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$tool" write "$dir" 1 1 || fail "first checkpoint"
"$tool" write "$dir" 2 200 > /dev/null 2>&1 &
pid=$!
for _ in $(seq 1 1200); do
  [ -e "$dir/ckpt-00000002.h5.tmp" ] && break
  sleep 0.02
done
[ -e "$dir/ckpt-00000002.h5.tmp" ] || fail "the writer never created its .tmp"
sleep 0.2
kill -9 $pid
wait $pid
rc=$?
ls -l "$dir"
[ $rc -eq 137 ] || fail "the writer was not killed mid-write (exit $rc): make its checkpoint larger"
[ -e "$dir/ckpt-00000002.h5.done" ] && fail "a killed writer left a completion marker"
"$tool" check "$dir" 1 || fail "the previous checkpoint is not the latest or does not load"
"$tool" write "$dir" 2 1 > /dev/null || fail "saving again over the leftover .tmp"
"$tool" check "$dir" 2 || fail "the new checkpoint"
echo "ok"
