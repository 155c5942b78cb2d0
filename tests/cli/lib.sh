# Shared by the command-line test scripts (source it): a scratch folder $out removed at exit, checks counted in
# $passes and $fails, and commands run with their output kept.
fails=0 passes=0
out=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$out"' EXIT

check() {  # check NAME CONDITION-COMMAND...
  local name=$1; shift
  if "$@"; then passes=$((passes + 1)); echo "ok   $name"; else fails=$((fails + 1)); echo "FAIL $name"; fi
}
run() {  # run NAME CMD...: stdout+stderr in $out/NAME.log, the exit code in rc_NAME
  local name=$1; shift
  timeout 120 "$@" >"$out/$name.log" 2>&1
  printf -v "rc_$name" '%d' $?
}
has() { grep -q -- "$2" "$out/$1.log"; }
count() { grep -c -- "$2" "$out/$1.log"; }
