#!/usr/bin/env bash
# Runs every scenario file in crictl-tests/ (each sources lib.sh and starts its own
# registry and daemon), then prints one closing line, "crictl-tests: N passed, N failed",
# counting scenarios. Exits non-zero when any scenario failed or a file could not run.
#
#   sudo crictl-tests/run.sh                        # against target/release/berthd
#   sudo CRI_DAEMON=containerd crictl-tests/run.sh  # against containerd, for comparison
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
results=$(mktemp /tmp/crictl-tests-results.XXXXXX)
trap 'rm -f "$results"' EXIT
export CRICTL_TESTS_RESULTS=$results

if [[ $EUID -ne 0 ]]; then
    echo "crictl-tests: must run as root (the daemon mounts, and the scenarios read its root)" >&2
    exit 2
fi

for file in "$here"/*.sh; do
    name=$(basename "$file")
    [[ $name == lib.sh || $name == run.sh ]] && continue
    recorded_before=$(wc -l <"$results")
    bash "$file"
    status=$?
    recorded=$(($(wc -l <"$results") - recorded_before))
    # A file that exits non-zero without a failed scenario to show for it stopped
    # early (its setup failed, or it was killed): that is a failure of its own.
    if ((status != 0)) && ! tail -n "$recorded" "$results" | grep -q '^FAIL '; then
        echo "FAIL $name: stopped with status $status after $recorded scenarios"
        echo "FAIL $name: did not complete" >>"$results"
    fi
done

passed=$(grep -c '^PASS ' "$results")
failed=$(grep -c '^FAIL ' "$results")
echo
echo "crictl-tests summary:"
sed 's/^/  /' "$results"
echo "crictl-tests: $passed passed, $failed failed"
((failed == 0 && passed > 0))
