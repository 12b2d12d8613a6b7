#!/usr/bin/env bash
# Cold-pull benchmark: how long `crictl pull` of a large multi-layer image takes from a
# registry on 127.0.0.1, with berthd and, when it is installed, with containerd's CRI
# plugin on the same image, registry and mirror configuration.
#
#   sudo benches/pull.sh                  # 3 runs each, medians and the ratio
#   sudo RUNS=5 LAYERS=8 LAYER_MIB=64 benches/pull.sh
#   sudo DAEMONS=containerd benches/pull.sh   # one daemon only
#
# The image (LAYERS layers of LAYER_MIB MiB of incompressible data, gzip) is built once
# with umoci and kept in /var/tmp/berth-bench. Every run starts the daemon on an empty
# root, so each pull downloads, verifies and unpacks every layer. Not part of test.sh.
# shellcheck source=crictl-tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../crictl-tests/lib.sh"

RUNS=${RUNS:-3}
DAEMONS=${DAEMONS:-berth containerd}
LAYERS=${LAYERS:-7}
LAYER_MIB=${LAYER_MIB:-72}
BENCH_CACHE=${BENCH_CACHE:-/var/tmp/berth-bench}
IMAGE_TAG="${LAYERS}x${LAYER_MIB}"
REFERENCE="docker.io/library/bench:$IMAGE_TAG"

[[ $EUID -eq 0 ]] || die "must run as root"

median() {
    sort -n | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

# calc EXPRESSION: floating-point arithmetic.
calc() {
    awk "BEGIN {print $1}"
}

# cold_pull: one pull on a freshly started daemon with an empty root; sets PULL_SECONDS.
cold_pull() {
    local started finished
    daemon_stop quiet
    findmnt -rn -o TARGET | grep -F "$WORKDIR/$CRI_DAEMON/" | sort -r | xargs -r umount -l
    rm -rf "$DAEMON_ROOT" "$DAEMON_STATE"
    daemon_start || die "$CRI_DAEMON did not start; log: $(tail -20 "$DAEMON_LOG")"
    started=$(date +%s.%N)
    cri pull "$REFERENCE" >/dev/null || die "$CRI_DAEMON: crictl pull $REFERENCE failed; log: $(tail -20 "$DAEMON_LOG")"
    finished=$(date +%s.%N)
    daemon_stop quiet
    PULL_SECONDS=$(calc "$finished - $started")
}

# bench DAEMON: prints one line per run and sets MEDIAN_SECONDS.
bench() {
    local all=() run
    CRI_DAEMON=$1
    daemon_configure
    for run in $(seq 1 "$RUNS"); do
        cold_pull
        all+=("$PULL_SECONDS")
        printf '  %-10s run %d: %6.2f s  %7.1f MiB/s\n' "$CRI_DAEMON" "$run" "$PULL_SECONDS" "$(calc "$SIZE_MIB / $PULL_SECONDS")"
    done
    MEDIAN_SECONDS=$(printf '%s\n' "${all[@]}" | median)
    printf '  %-10s median: %6.2f s  %7.1f MiB/s\n' "$CRI_DAEMON" "$MEDIAN_SECONDS" "$(calc "$SIZE_MIB / $MEDIAN_SECONDS")"
}

echo "pull.sh: building or reusing the $IMAGE_TAG image in $BENCH_CACHE"
random_layers_image "$BENCH_CACHE/layout-$IMAGE_TAG" bench "$LAYERS" "$LAYER_MIB" >/dev/null
registry_start
push "$BENCH_CACHE/layout-$IMAGE_TAG:bench" "library/bench:$IMAGE_TAG"
SIZE_MIB=$(calc "$(compressed_size "library/bench:$IMAGE_TAG") / 1048576")
printf 'pull.sh: %s, %d layers, %.0f MiB compressed, registry %s, %d cold pulls each, %s cores\n' \
    "$REFERENCE" "$LAYERS" "$SIZE_MIB" "$REGISTRY_ADDR" "$RUNS" "$(nproc)"

declare -A median_seconds
for daemon in $DAEMONS; do
    if [[ $daemon == containerd ]] && ! command -v containerd >/dev/null; then
        echo "pull.sh: containerd not installed; no comparison"
        continue
    fi
    bench "$daemon"
    median_seconds[$daemon]=$MEDIAN_SECONDS
done
if [[ -n ${median_seconds[berth]:-} && -n ${median_seconds[containerd]:-} ]]; then
    printf 'pull.sh: berth/containerd time ratio %.2f (below 1: berth is faster)\n' \
        "$(calc "${median_seconds[berth]} / ${median_seconds[containerd]}")"
fi
