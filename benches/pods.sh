#!/usr/bin/env bash
# Pod start benchmark: how long one pod takes to come up (crictl runp + create + start
# of a busybox `sleep 3600`), how much memory the daemon and the per-pod shims hold
# with every pod running, and how long stopping and removing a pod takes; with berthd
# (one berth-shim per pod on runc) and, when it is installed, with containerd 1.6's CRI
# plugin (one containerd-shim-runc-v2 per pod) on the same images, registry and mirrors.
#
#   sudo benches/pods.sh                       # 10 pods each, figures and ratios
#   sudo PODS=30 benches/pods.sh
#   sudo DAEMONS=berth benches/pods.sh         # one daemon only
#
# Pods are started one after another and timed by the wall clock around each crictl
# call, so a figure includes crictl's own start-up, the same for both daemons; the
# daemon's own time is that less three times a bare crictl call (`crictl version`), and
# the target compares those. Images
# are pulled before the clock starts. After removal the script checks that nothing of
# the run is left: no shim process, no network namespace mount, no overlay mount.
# Each daemon has a bridge network of its own (berthd writes its default berth0,
# 10.88.0.0/16; containerd gets bench0, 10.99.0.0/24), both in the loopback-only
# network namespace lib.sh runs the script in. Not part of test.sh.
# shellcheck source=crictl-tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../crictl-tests/lib.sh"

PODS=${PODS:-10}
DAEMONS=${DAEMONS:-berth containerd}
BUSYBOX=docker.io/library/busybox:latest
PAUSE=registry.k8s.io/pause:3.10
POD_NAMESPACE=berth-bench
# How long shims get to leave after their pod was removed before they count as leaked.
SHIM_EXIT_SECONDS=10

# The issue's targets.
TARGET_START_RATIO=0.5
TARGET_SHIM_MIB=3
TARGET_DAEMON_MIB=30

[[ $EUID -eq 0 ]] || die "must run as root"
[[ $PODS =~ ^[1-9][0-9]*$ ]] || die "PODS must be a positive number, not '$PODS'"

# ---------------------------------------------------------------- what the run created

# Pods and containers this script created and has not seen removed, and the network
# namespace paths the daemons reported for them: what the EXIT trap cleans up.
RUN_POD_IDS=()
RUN_CONTAINER_IDS=()
RUN_NETNS_PATHS=()

bench_cleanup() {
    local status=$?
    trap '' INT TERM
    remove_leftovers
    daemon_stop quiet
    # lib.sh's cleanup stops the daemon and the registry, unmounts what is left under
    # WORKDIR and exits with the status it is called with.
    (exit "$status")
    cleanup
}
trap bench_cleanup EXIT

# remove_leftovers: what an interrupted run left of the current daemon's pods, through
# the daemon when it answers, then by hand.
remove_leftovers() {
    local id root pid
    if ((${#RUN_POD_IDS[@]} > 0)); then
        if ! daemon_running; then
            daemon_start >/dev/null 2>&1
        fi
        if daemon_running; then
            for id in "${RUN_POD_IDS[@]}"; do
                CRI_COMMAND_TIMEOUT=30 cri stopp "$id" >/dev/null 2>&1
                CRI_COMMAND_TIMEOUT=30 cri rmp -f "$id" >/dev/null 2>&1
            done
        fi
        case $CRI_DAEMON in
            berth) root=$DAEMON_STATE/runtime/runc ;;
            containerd) root=/run/containerd/runc/k8s.io ;;
        esac
        for id in "${RUN_CONTAINER_IDS[@]}" "${RUN_POD_IDS[@]}"; do
            [[ -d $root/$id ]] && timeout 10 runc --root "$root" delete --force "$id" >/dev/null 2>&1
        done
    fi
    for pid in $(shim_pids); do
        kill -KILL "$pid" 2>/dev/null
    done
    for id in $(run_netns_mounts); do
        umount -l "$id" 2>/dev/null && rm -f "$id"
    done
    RUN_POD_IDS=()
    RUN_CONTAINER_IDS=()
    RUN_NETNS_PATHS=()
}

# shim_pids: the shims serving the current daemon's pods.
shim_pids() {
    case $CRI_DAEMON in
        berth) pgrep -f "berth-shim .*--state-dir $DAEMON_STATE/" ;;
        containerd) pgrep -f "containerd-shim-runc-v2 .*-address $CRI_SOCKET( |\$)" ;;
    esac
}

# run_netns_mounts: network namespaces of this run still mounted, under WORKDIR (berthd)
# or its state directory, or where the daemon said they are (containerd's /run/netns).
run_netns_mounts() {
    {
        findmnt -rn -t nsfs -o TARGET | grep -F -e "$WORKDIR/" -e "$DAEMON_STATE/"
        local path
        for path in "${RUN_NETNS_PATHS[@]}"; do
            findmnt -rn -t nsfs -o TARGET | grep -xF -- "$path"
        done
    } | sort -u
}

run_overlay_mounts() { findmnt -rn -t overlay -o TARGET | grep -F -e "$WORKDIR/$CRI_DAEMON/" -e "$DAEMON_STATE/"; }

# ---------------------------------------------------------------- arithmetic

calc() { awk "BEGIN {print $1}"; }

median() {
    sort -n | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

# p90: the nearest-rank 90th percentile.
p90() {
    sort -n | awk '{v[NR] = $1} END {rank = int(NR * 0.9); if (rank < NR * 0.9) rank++; print v[rank]}'
}

# now_us: microseconds of the wall clock, without forking.
now_us() { echo "${EPOCHREALTIME/./}"; }

ms_since() { calc "($(now_us) - $1) / 1000"; }

# rss_kib FIELD PID...: the sum of their FIELD, in KiB, from /proc/PID/status (VmRSS,
# RssAnon, RssFile) or, for Pss (pages shared with other processes, such as the shim
# binary's text, counted in shares), /proc/PID/smaps_rollup.
rss_kib() {
    local field=$1 pid total=0 kib source=status
    shift
    [[ $field == Pss ]] && source=smaps_rollup
    for pid in "$@"; do
        kib=$(awk -v field="$field:" '$1 == field {print $2}' "/proc/$pid/$source" 2>/dev/null)
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}

# ---------------------------------------------------------------- configs

SPECS="$WORKDIR/specs"
mkdir -p "$SPECS"

# pod_config NAME: a pod sandbox config; prints its path.
pod_config() {
    local file="$SPECS/$CRI_DAEMON-pod-$1.json"
    jq -n --arg name "$1" --arg namespace "$POD_NAMESPACE" --arg logs "$WORKDIR/$CRI_DAEMON/pod-logs/$1" '{
        metadata: {name: $name, namespace: $namespace, uid: ("uid-" + $name), attempt: 0},
        hostname: $name,
        log_directory: $logs,
        linux: {}
    }' >"$file"
    echo "$file"
}

# ctr_config NAME: a busybox container that sleeps for an hour; prints its path.
ctr_config() {
    local file="$SPECS/$CRI_DAEMON-ctr-$1.json"
    jq -n --arg name "$1" --arg image "$BUSYBOX" '{
        metadata: {name: $name},
        image: {image: $image},
        command: ["sleep", "3600"],
        log_path: ($name + ".log"),
        linux: {}
    }' >"$file"
    echo "$file"
}

# containerd_network: containerd's own bridge network, shaped as berthd's default one
# (bridge + host-local + portmap, no masquerade) but on another bridge and subnet, with
# its address leases in WORKDIR.
containerd_network() {
    local dir="$WORKDIR/containerd"
    mkdir -p "$dir/cni"
    jq -n --arg leases "$dir/cni-leases" '{
        cniVersion: "1.0.0",
        name: "bench",
        plugins: [
            {
                type: "bridge",
                bridge: "bench0",
                isGateway: true,
                ipMasq: false,
                hairpinMode: true,
                ipam: {
                    type: "host-local",
                    ranges: [[{subnet: "10.99.0.0/24"}]],
                    routes: [{dst: "0.0.0.0/0"}],
                    dataDir: $leases
                }
            },
            {type: "portmap", capabilities: {portMappings: true}}
        ]
    }' >"$dir/cni/10-bench.conflist"
}

# ---------------------------------------------------------------- one daemon

# daemon_failed WHAT OUTPUT: reports a failed call with the daemon's last log lines.
daemon_failed() {
    echo "  $CRI_DAEMON: $1 failed:"
    printf '%s\n' "$2" | grep -v 'cgroup_parent is not set' | head -10 | sed 's/^/        | /'
    echo "  last lines of the $CRI_DAEMON log ($DAEMON_LOG):"
    tail -20 "$DAEMON_LOG" | cut -c1-400 | sed 's/^/        | /'
    FAILURES=$((FAILURES + 1))
}

# start_pods: starts PODS pods one after another; fills START_MS (and the per-call
# RUNP_MS, CREATE_MS, BEGIN_MS). Stops at the first failure.
start_pods() {
    local index name pod_file ctr_file pod ctr out began t errors="$SPECS/crictl-errors"
    START_MS=() RUNP_MS=() CREATE_MS=() BEGIN_MS=()
    for index in $(seq 1 "$PODS"); do
        name="$CRI_DAEMON-$index"
        pod_file=$(pod_config "$name")
        ctr_file=$(ctr_config "sleeper-$index")

        began=$(now_us)
        t=$began
        if ! pod=$(cri runp "$pod_file" 2>"$errors"); then
            daemon_failed "crictl runp of pod $name" "$(cat "$errors")"
            return 1
        fi
        RUN_POD_IDS+=("$pod")
        RUNP_MS+=("$(ms_since "$t")")

        t=$(now_us)
        if ! ctr=$(cri create "$pod" "$ctr_file" "$pod_file" 2>"$errors"); then
            daemon_failed "crictl create in pod $name" "$(cat "$errors")"
            return 1
        fi
        RUN_CONTAINER_IDS+=("$ctr")
        CREATE_MS+=("$(ms_since "$t")")

        t=$(now_us)
        if ! out=$(cri start "$ctr" 2>&1); then
            daemon_failed "crictl start of the container in pod $name" "$out"
            return 1
        fi
        BEGIN_MS+=("$(ms_since "$t")")
        START_MS+=("$(ms_since "$began")")

        # Outside the clock: where the daemon put the pod's network namespace.
        out=$(cri inspectp -o json "$pod" 2>/dev/null |
            jq -r '.info.runtimeSpec.linux.namespaces[]? | select(.type == "network") | .path // empty' 2>/dev/null)
        if [[ -n $out ]]; then
            RUN_NETNS_PATHS+=("$out")
        fi
    done
}

# remove_pods: stopp + rmp of every pod, one after another; fills REMOVE_MS.
remove_pods() {
    local pod began out
    REMOVE_MS=()
    for pod in "${RUN_POD_IDS[@]}"; do
        began=$(now_us)
        if ! out=$(cri stopp "$pod" 2>&1); then
            daemon_failed "crictl stopp ${pod:0:13}" "$out"
            return 1
        fi
        if ! out=$(cri rmp "$pod" 2>&1); then
            daemon_failed "crictl rmp ${pod:0:13}" "$out"
            return 1
        fi
        REMOVE_MS+=("$(ms_since "$began")")
    done
}

# check_nothing_left: after removal, the run's shims, network namespaces and overlay
# mounts are gone (shims get SHIM_EXIT_SECONDS to leave) and the daemon lists no pod.
check_nothing_left() {
    local deadline=$((SECONDS + SHIM_EXIT_SECONDS)) shims netns overlays pods
    while shims=$(shim_pids) && [[ -n $shims ]] && ((SECONDS < deadline)); do
        sleep 0.2
    done
    netns=$(run_netns_mounts)
    overlays=$(run_overlay_mounts)
    pods=$(cri pods -q --namespace "$POD_NAMESPACE" 2>&1)
    LEFT="shims $(wc -w <<<"$shims"), netns mounts $(wc -w <<<"$netns"), overlay mounts $(wc -w <<<"$overlays"), pods listed $(wc -w <<<"$pods")"
    if [[ -n $shims$netns$overlays$pods ]]; then
        echo "  $CRI_DAEMON: left after removing every pod: $LEFT"
        # shellcheck disable=SC2086  # one entry a line, whichever list it came from
        printf '%s\n' $shims $netns $overlays $pods | sed 's/^/        | /'
        FAILURES=$((FAILURES + 1))
        return 1
    fi
    LEFT=none
}

# bench DAEMON: the whole run against one daemon; records its figures in FIGURES.
bench() {
    local daemon_kib shims shim_kib shim_anon_kib shim_file_kib shim_pss_kib running call_floor
    CRI_DAEMON=$1
    daemon_configure
    if [[ $CRI_DAEMON == containerd ]]; then
        containerd_network
        # containerd gives the pause container an oom_score_adj of -998, which a host
        # that may not lower scores (no CAP_SYS_RESOURCE, a node inside a container)
        # refuses: keep scores at or above containerd's own, as berthd clamps them.
        sed -i '/^  sandbox_image = /a\  restrict_oom_score_adj = true' "$WORKDIR/containerd/config.toml"
    fi
    if ! daemon_start; then
        daemon_failed "starting" ""
        return 1
    fi
    local image out began
    for image in "$BUSYBOX" "$PAUSE"; do
        if ! out=$(cri pull "$image" 2>&1); then
            daemon_failed "crictl pull $image" "$out"
            return 1
        fi
    done

    # What a crictl call costs on its own (process start, connection): part of every
    # figure below, for both daemons alike.
    local floor=()
    for _ in $(seq 1 10); do
        began=$(now_us)
        cri version >/dev/null 2>&1
        floor+=("$(ms_since "$began")")
    done
    call_floor=$(printf '%s\n' "${floor[@]}" | median)

    start_pods || return 1
    running=$(cri ps -q --state running 2>/dev/null | wc -l)
    if ((running != PODS)); then
        daemon_failed "keeping the containers running" "$running of $PODS containers are running: $(cri ps -a 2>&1)"
    fi
    # A moment for the shims and the daemon to settle after the last start.
    sleep 1
    daemon_kib=$(rss_kib VmRSS "$DAEMON_PID")
    mapfile -t shims < <(shim_pids)
    shim_kib=$(rss_kib VmRSS "${shims[@]}")
    shim_anon_kib=$(rss_kib RssAnon "${shims[@]}")
    shim_file_kib=$(rss_kib RssFile "${shims[@]}")
    shim_pss_kib=$(rss_kib Pss "${shims[@]}")

    remove_pods || return 1
    # The pods are gone: nothing is left for the EXIT trap to remove but leaks.
    RUN_POD_IDS=()
    RUN_CONTAINER_IDS=()
    check_nothing_left
    RUN_NETNS_PATHS=()
    daemon_stop quiet

    FIGURES[$CRI_DAEMON.start_median]=$(printf '%s\n' "${START_MS[@]}" | median)
    FIGURES[$CRI_DAEMON.start_p90]=$(printf '%s\n' "${START_MS[@]}" | p90)
    FIGURES[$CRI_DAEMON.start_first]=${START_MS[0]}
    FIGURES[$CRI_DAEMON.call_floor]=$call_floor
    FIGURES[$CRI_DAEMON.daemon_ms]=$(calc "${FIGURES[$CRI_DAEMON.start_median]} - 3 * $call_floor")
    FIGURES[$CRI_DAEMON.runp_median]=$(printf '%s\n' "${RUNP_MS[@]}" | median)
    FIGURES[$CRI_DAEMON.create_median]=$(printf '%s\n' "${CREATE_MS[@]}" | median)
    FIGURES[$CRI_DAEMON.begin_median]=$(printf '%s\n' "${BEGIN_MS[@]}" | median)
    FIGURES[$CRI_DAEMON.remove_median]=$(printf '%s\n' "${REMOVE_MS[@]}" | median)
    FIGURES[$CRI_DAEMON.remove_p90]=$(printf '%s\n' "${REMOVE_MS[@]}" | p90)
    FIGURES[$CRI_DAEMON.daemon_mib]=$(calc "$daemon_kib / 1024")
    FIGURES[$CRI_DAEMON.shims]=${#shims[@]}
    FIGURES[$CRI_DAEMON.shim_mib_total]=$(calc "$shim_kib / 1024")
    FIGURES[$CRI_DAEMON.shim_mib_per_pod]=$(calc "$shim_kib / 1024 / $PODS")
    FIGURES[$CRI_DAEMON.shim_anon_mib_per_pod]=$(calc "$shim_anon_kib / 1024 / $PODS")
    FIGURES[$CRI_DAEMON.shim_file_mib_per_pod]=$(calc "$shim_file_kib / 1024 / $PODS")
    FIGURES[$CRI_DAEMON.shim_pss_mib_per_pod]=$(calc "$shim_pss_kib / 1024 / $PODS")

    printf '  %-10s start ms/pod: median %.0f, p90 %.0f, first %.0f (runp %.0f + create %.0f + start %.0f, medians)\n' \
        "$CRI_DAEMON" "${FIGURES[$CRI_DAEMON.start_median]}" "${FIGURES[$CRI_DAEMON.start_p90]}" \
        "${FIGURES[$CRI_DAEMON.start_first]}" "${FIGURES[$CRI_DAEMON.runp_median]}" \
        "${FIGURES[$CRI_DAEMON.create_median]}" "${FIGURES[$CRI_DAEMON.begin_median]}"
    printf '  %-10s one crictl call (crictl version), median: %.0f ms; a pod start makes 3 calls\n' "$CRI_DAEMON" "$call_floor"
    printf '  %-10s daemon ms/pod (start median - 3 crictl calls): %.0f\n' "$CRI_DAEMON" "${FIGURES[$CRI_DAEMON.daemon_ms]}"
    printf '  %-10s remove ms/pod (stopp + rmp): median %.0f, p90 %.0f\n' \
        "$CRI_DAEMON" "${FIGURES[$CRI_DAEMON.remove_median]}" "${FIGURES[$CRI_DAEMON.remove_p90]}"
    printf '  %-10s RSS with %d pods: daemon %.1f MiB, %d shims %.1f MiB, %.2f MiB per pod (anonymous %.2f, file-backed %.2f; PSS %.2f)\n' \
        "$CRI_DAEMON" "$PODS" "${FIGURES[$CRI_DAEMON.daemon_mib]}" "${FIGURES[$CRI_DAEMON.shims]}" \
        "${FIGURES[$CRI_DAEMON.shim_mib_total]}" "${FIGURES[$CRI_DAEMON.shim_mib_per_pod]}" \
        "${FIGURES[$CRI_DAEMON.shim_anon_mib_per_pod]}" "${FIGURES[$CRI_DAEMON.shim_file_mib_per_pod]}" \
        "${FIGURES[$CRI_DAEMON.shim_pss_mib_per_pod]}"
    printf '  %-10s left after removal: %s\n' "$CRI_DAEMON" "$LEFT"
    BENCHED+=("$CRI_DAEMON")
}

# ---------------------------------------------------------------- main

# verdict VALUE LIMIT OPERATOR: "met" when VALUE OPERATOR LIMIT holds (awk's < or <=).
verdict() {
    if awk "BEGIN {exit !($1 $3 $2)}"; then echo met; else echo MISSED; fi
}

declare -A FIGURES
BENCHED=()
FAILURES=0

echo "pods.sh: $PODS pods per daemon (runp + create + start of busybox sleep 3600), crictl $("$CRICTL" --version | awk '{print $NF}'), $(nproc) cores"
registry_start
build_test_images >/dev/null
push_test_images
echo "pods.sh: registry at $REGISTRY_ADDR holds the test images; work dir $WORKDIR"

for daemon in $DAEMONS; do
    if [[ $daemon == containerd ]] && ! command -v containerd >/dev/null; then
        echo "pods.sh: containerd not installed; no comparison"
        continue
    fi
    if ! bench "$daemon"; then
        echo "  $daemon: run abandoned"
        FAILURES=$((FAILURES + 1))
    fi
    remove_leftovers
    daemon_stop quiet
done

have() { [[ " ${BENCHED[*]} " == *" $1 "* ]]; }
if have berth; then
    echo "pods.sh: targets"
    printf '  berthd RSS with %d pods: %.1f MiB (target < %d MiB with 10 pods: %s)\n' "$PODS" \
        "${FIGURES[berth.daemon_mib]}" "$TARGET_DAEMON_MIB" "$(verdict "${FIGURES[berth.daemon_mib]}" "$TARGET_DAEMON_MIB" '<')"
    printf '  berth-shim RSS per pod: %.2f MiB (target < %d MiB: %s)\n' \
        "${FIGURES[berth.shim_mib_per_pod]}" "$TARGET_SHIM_MIB" "$(verdict "${FIGURES[berth.shim_mib_per_pod]}" "$TARGET_SHIM_MIB" '<')"
fi
if have berth && have containerd; then
    start_ratio=$(calc "${FIGURES[berth.start_median]} / ${FIGURES[containerd.start_median]}")
    # The target is the daemons' own work: crictl's start-up (a Go binary, the same for
    # both) is in every wall-clock figure and would hide it.
    daemon_ratio=$(calc "${FIGURES[berth.daemon_ms]} / ${FIGURES[containerd.daemon_ms]}")
    printf '  per-pod start, daemon time: berth/containerd %.2f (target <= %.1f: %s); with crictl start-up %.2f\n' \
        "$daemon_ratio" "$TARGET_START_RATIO" "$(verdict "$daemon_ratio" "$TARGET_START_RATIO" '<=')" "$start_ratio"
    echo "pods.sh: ratios berth/containerd (below 1: berth is faster or smaller)"
    printf '  start median %.2f, start p90 %.2f, remove median %.2f, daemon RSS %.2f, shim RSS per pod %.2f\n' \
        "$start_ratio" \
        "$(calc "${FIGURES[berth.start_p90]} / ${FIGURES[containerd.start_p90]}")" \
        "$(calc "${FIGURES[berth.remove_median]} / ${FIGURES[containerd.remove_median]}")" \
        "$(calc "${FIGURES[berth.daemon_mib]} / ${FIGURES[containerd.daemon_mib]}")" \
        "$(calc "${FIGURES[berth.shim_mib_per_pod]} / ${FIGURES[containerd.shim_mib_per_pod]}")"
fi
((FAILURES == 0)) || echo "pods.sh: $FAILURES failure(s); see above"
((FAILURES == 0))
