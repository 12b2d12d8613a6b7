#!/usr/bin/env bash
# berth's whole test suite, as CI runs it: `sudo ./test.sh` on a Debian machine.
#
#   1. deploy/install-deps.sh      what the build and the tests need (idempotent)
#   2. cargo build --release --bins
#   3. cargo test --release        unit and Rust integration tests (root, a real registry)
#   4. crictl-tests/run.sh         the real crictl against the berthd just built
#   5. crictl-tests/critest/run.sh critest, the CRI validation suite, against it
#
# Ends with "test.sh: N passed, N failed" (Rust tests plus crictl scenarios) and exits
# non-zero when anything failed.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$repo" || exit 2

if [[ $EUID -ne 0 ]]; then
    echo "test.sh: must run as root: the tests mount filesystems and run containers (sudo ./test.sh)" >&2
    exit 2
fi

logs=$(mktemp -d /tmp/berth-test.XXXXXX)
trap 'rm -rf "$logs"' EXIT
stage_failures=()
started=$SECONDS

stage() {
    echo
    echo "==== test.sh: $1 ($(date +%T))"
}

stage "install dependencies"
if ! deploy/install-deps.sh </dev/null; then
    echo "test.sh: deploy/install-deps.sh failed"
    echo "test.sh: 0 passed, 1 failed"
    exit 1
fi
# shellcheck source=deploy/env.sh
source deploy/env.sh

stage "cargo build --release --bins"
build_ok=1
if ! cargo build --release --bins </dev/null; then
    build_ok=0
    stage_failures+=("cargo build")
fi

rust_passed=0
rust_failed=0
if ((build_ok)); then
    stage "cargo test --release --no-fail-fast"
    cargo test --release --no-fail-fast </dev/null 2>&1 | tee "$logs/cargo-test.log"
    cargo_status=${PIPESTATUS[0]}
    read -r rust_passed rust_failed < <(
        sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$logs/cargo-test.log" |
            awk '{p += $1; f += $2} END {print p + 0, f + 0}'
    )
    if ((cargo_status != 0)); then
        stage_failures+=("cargo test (exit $cargo_status)")
        # A test binary that failed to build or crashed reports no count of its own.
        ((rust_failed == 0)) && rust_failed=1
    fi
fi

crictl_passed=0
crictl_failed=0
if ((build_ok)); then
    stage "crictl scenarios"
    crictl-tests/run.sh </dev/null 2>&1 | tee "$logs/crictl.log"
    crictl_status=${PIPESTATUS[0]}
    read -r crictl_passed crictl_failed < <(
        sed -n 's/^crictl-tests: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$logs/crictl.log" | tail -1
    )
    crictl_passed=${crictl_passed:-0}
    crictl_failed=${crictl_failed:-0}
    if ((crictl_status != 0)); then
        stage_failures+=("crictl scenarios (exit $crictl_status)")
        ((crictl_failed == 0)) && crictl_failed=1
    fi
fi

critest_passed=0
critest_failed=0
if ((build_ok)); then
    stage "critest (CRI validation suite)"
    crictl-tests/critest/run.sh </dev/null 2>&1 | tee "$logs/critest.log"
    critest_status=${PIPESTATUS[0]}
    # Failures that expected-failures.txt lists do not fail the stage or count here.
    read -r critest_passed critest_failed critest_expected < <(
        sed -n 's/^critest: \([0-9]*\) passed, \([0-9]*\) failed (\([0-9]*\) expected).*/\1 \2 \3/p' "$logs/critest.log" | tail -1
    )
    critest_passed=${critest_passed:-0}
    critest_failed=$((${critest_failed:-0} - ${critest_expected:-0}))
    if ((critest_status != 0)); then
        stage_failures+=("critest (exit $critest_status)")
        ((critest_failed == 0)) && critest_failed=1
    fi
fi

echo
echo "==== test.sh: summary after $((SECONDS - started)) s"
echo "  rust tests:       $rust_passed passed, $rust_failed failed"
echo "  crictl scenarios: $crictl_passed passed, $crictl_failed failed"
echo "  critest:          $critest_passed passed, $critest_failed failed"
if ((${#stage_failures[@]})); then
    echo "  failed stages:    ${stage_failures[*]}"
fi
total_failed=$((rust_failed + crictl_failed + critest_failed + (build_ok ? 0 : 1)))
echo "test.sh: $((rust_passed + crictl_passed + critest_passed)) passed, $total_failed failed"
((${#stage_failures[@]} == 0))
