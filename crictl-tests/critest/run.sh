#!/usr/bin/env bash
# Runs critest, the CRI validation suite of cri-tools (v1.36.0, whole suite, no
# benchmarks), against the daemon under test, air-gapped: lib.sh's registry on
# 127.0.0.1 holds the stand-in images of images.sh, and the daemon reaches them through
# registry mirrors. Prints ginkgo's summary and one closing line,
# "critest: N passed, N failed (N expected), N skipped", and exits non-zero when a test
# failed that expected-failures.txt does not list.
#
#   sudo crictl-tests/critest/run.sh                               # target/release/berthd
#   sudo BERTHD=target/debug/berthd crictl-tests/critest/run.sh
#   sudo CRI_DAEMON=containerd crictl-tests/critest/run.sh         # the reference runtime
#   sudo CRITEST_FOCUS='Security Context' crictl-tests/critest/run.sh   # a subset
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=crictl-tests/lib.sh
source "$here/../lib.sh"
# shellcheck source=crictl-tests/critest/images.sh
source "$here/images.sh"
# shellcheck disable=SC2034  # read by lib.sh, whose messages name the file
SCENARIO_FILE=critest

CRITEST=${CRITEST:-$(command -v critest || echo /usr/local/bin/critest)}
EXPECTED_FAILURES=$here/expected-failures.txt
[[ -x $CRITEST ]] || die "critest not found (deploy/install-deps.sh installs it, or set CRITEST)"

# critest removes what it creates, but a test that fails midway may leave pods behind;
# their shims outlive the daemon, so they go before lib.sh stops it.
remove_pods_then_cleanup() {
    local status=$?
    trap '' INT TERM
    if daemon_running; then
        CRI_COMMAND_TIMEOUT=120 cri rmp --all --force >/dev/null 2>&1
    fi
    (exit "$status")
    cleanup
}
trap remove_pods_then_cleanup EXIT

# Pods whose network config names a bridge: containerd writes none of its own.
write_containerd_network() {
    cat >"$WORKDIR/containerd/cni/10-critest.conflist" <<'END'
{
  "cniVersion": "1.0.0",
  "name": "critest",
  "plugins": [
    {"type": "bridge", "bridge": "critest0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.89.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
END
}

# The pause image critest pulls by two names, registry.k8s.io and k8s.gcr.io: lib.sh's
# mirrors cover the first.
add_k8s_gcr_io_mirror() {
    local config="$WORKDIR/$CRI_DAEMON/config.toml" mirror="http://$REGISTRY_ADDR"
    case $CRI_DAEMON in
        berth) sed -i "/^\"registry.k8s.io\" = /a \"k8s.gcr.io\" = [\"$mirror\"]" "$config" ;;
        containerd)
            printf '  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."k8s.gcr.io"]\n    endpoint = ["%s"]\n' \
                "$mirror" >>"$config"
            ;;
    esac
}

# expected_reason NAME: the reason expected-failures.txt gives for a test, if it lists it.
expected_reason() {
    local pattern reason
    while IFS= read -r line; do
        [[ -z $line || $line == \#* ]] && continue
        pattern=${line%% :: *}
        reason=${line#* :: }
        if grep -Eq -- "$pattern" <<<"$1"; then
            echo "$reason"
            return 0
        fi
    done <"$EXPECTED_FAILURES"
    return 1
}

echo "critest: daemon $CRI_DAEMON, $("$CRITEST" --version 2>/dev/null | head -1), work dir $WORKDIR"
registry_start
build_critest_images >/dev/null
push_critest_images
echo "critest: registry at $REGISTRY_ADDR holds the stand-in images"
daemon_configure
add_k8s_gcr_io_mirror
[[ $CRI_DAEMON == containerd ]] && write_containerd_network
daemon_start || die "$CRI_DAEMON did not start; log: $(tail -20 "$DAEMON_LOG")"

report=$WORKDIR/critest-report.json
focus=()
[[ -n ${CRITEST_FOCUS:-} ]] && focus=(--ginkgo.focus "$CRITEST_FOCUS")
# critest writes its temporary files (seccomp profiles, pod log directories) here.
(cd "$WORKDIR" && "$CRITEST" \
    --runtime-endpoint "unix://$CRI_SOCKET" --image-endpoint "unix://$CRI_SOCKET" \
    --ginkgo.v --ginkgo.no-color --ginkgo.timeout 2h \
    --ginkgo.json-report "$report" "${focus[@]}")
critest_status=$?

[[ -s $report ]] || die "critest (exit $critest_status) wrote no report"
passed=0 failed=0 expected=0 skipped=0
unexpected=() expected_lines=() now_passing=()
while IFS=$'\t' read -r state name; do
    case $state in
        passed)
            passed=$((passed + 1))
            expected_reason "$name" >/dev/null && now_passing+=("$name")
            ;;
        skipped | pending) skipped=$((skipped + 1)) ;;
        *)
            failed=$((failed + 1))
            if reason=$(expected_reason "$name"); then
                expected=$((expected + 1))
                expected_lines+=("$state: $name  ($reason)")
            else
                unexpected+=("$state: $name")
            fi
            ;;
    esac
done < <(jq -r '.[].SpecReports[] | select(.LeafNodeType == "It")
    | [.State, ((.ContainerHierarchyTexts // []) + [.LeafNodeText] | join(" "))] | @tsv' "$report")

echo
echo "critest summary ($CRI_DAEMON):"
for line in "${expected_lines[@]}"; do echo "  expected $line"; done
for line in "${now_passing[@]}"; do echo "  passes now, remove from expected-failures.txt: $line"; done
for line in "${unexpected[@]}"; do echo "  FAILED $line"; done
echo "critest: $passed passed, $failed failed ($expected expected), $skipped skipped"
((${#unexpected[@]} == 0 && passed > 0))
