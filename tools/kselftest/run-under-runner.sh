#!/bin/sh
# Runs the conformance suite's ports under the kernel's own kselftest
# runner (tools/testing/selftests/kselftest/runner.sh from a kernel tree),
# as `make -C tools/testing/selftests TARGETS=kvm run_tests` runs C tests:
# each port is a test executable (a two-line wrapper around node), and the
# runner prints its TAP.
#
#   tools/kselftest/run-under-runner.sh RUNNER_SH [TEST...]
#
# RUNNER_SH: path to runner.sh of a kernel tree (e.g. the one npm run
# selftest:c:build unpacks under .cache/selftests-c/). TESTs default to
# every port. A per-test timeout of 600 s (kselftest's default is 45 s,
# too short under QEMU TCG) comes from a `settings` file, as kselftest
# directories set it.
set -e
runner=$(realpath "$1")
shift
root=$(cd "$(dirname "$0")/../.." && pwd)
# The runner finds its helpers (ktap_helpers.sh, prefix.pl) under
# $BASE_DIR/kselftest and names each test "selftests: DIR: NAME" with DIR
# the test's directory under $BASE_DIR: a scratch copy of the kselftest
# directory, and the wrappers in $BASE_DIR/kvm.
base=$(mktemp -d)
trap 'rm -rf "$base"' EXIT
cp -r "$(dirname "$runner")" "$base/kselftest"
mkdir "$base/kvm"
tests=${*:-$(cd "$root/dist/selftests" && ls *.js | sed 's/\.js$//')}
for t in $tests; do
  printf '#!/bin/sh\nexec node %s/dist/selftests/%s.js "$@"\n' "$root" "$t" >"$base/kvm/$t"
  chmod +x "$base/kvm/$t"
done
echo 'timeout=600' >"$base/kvm/settings"
cd "$base/kvm"
BASE_DIR=$base
export BASE_DIR
# shellcheck disable=SC1091
. "$base/kselftest/runner.sh"
# The runner appends test output to /dev/stdout, a symlink that only udev
# makes: on a bare devtmpfs (the test VM) that would create a regular file.
[ -e /dev/stdout ] || logfile=/proc/self/fd/1
set +e
# As run_kselftest.sh does: header, plan, the tests, totals. The runner
# appends each test's prefixed output to $logfile (/dev/stdout by default,
# reopened): into a pipe, so that it stays in order with the result lines.
{
  ktap_print_header
  # shellcheck disable=SC2086
  ktap_set_plan "$(echo $tests | wc -w)"
  # shellcheck disable=SC2046
  run_many $(for t in $tests; do printf '%s ' "$t"; done)
  ktap_print_totals
} | cat
