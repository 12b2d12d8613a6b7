#!/usr/bin/env bash
# Streaming scenarios: interactive exec through berthd's streaming server, as the
# real crictl drives it over the WebSocket transport.
#
#   sudo crictl-tests/streaming.sh                          # berthd from target/release
#   sudo BERTHD=target/debug/berthd crictl-tests/streaming.sh
#
# The streaming server listens on a fixed free loopback port of this run, so that
# the scenarios can also speak HTTP to it directly.
# shellcheck source=crictl-tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BUSYBOX=docker.io/library/busybox:latest
POD_NAMESPACE=berth-streaming
SPECS="$WORKDIR/specs"
mkdir -p "$SPECS"
STREAMING_PORT=""

# pod_config NAME: writes a pod sandbox config and prints its path.
pod_config() {
    jq -n --arg name "$1" --arg namespace "$POD_NAMESPACE" --arg logs "$WORKDIR/pod-logs/$1" '{
        metadata: {name: $name, namespace: $namespace, uid: ("uid-" + $name), attempt: 0},
        hostname: $name,
        log_directory: $logs,
        linux: {}
    }' >"$SPECS/pod-$1.json"
    echo "$SPECS/pod-$1.json"
}

# ctr_config NAME COMMAND...: a busybox container config running COMMAND; CTR_FILTER,
# if set, is a jq filter applied last.
ctr_config() {
    local name=$1 command="[]" word
    shift
    for word in "$@"; do
        command=$(jq -c --arg word "$word" '. + [$word]' <<<"$command")
    done
    jq -n --arg name "$name" --arg image "$BUSYBOX" --argjson command "$command" '{
        metadata: {name: $name},
        image: {image: $image},
        command: $command,
        log_path: ($name + ".log"),
        linux: {}
    }' | jq "${CTR_FILTER:-.}" >"$SPECS/ctr-$name.json"
    echo "$SPECS/ctr-$name.json"
}

# pod_with_ctr NAME COMMAND...: a pod NAME running one container NAME; sets POD and CTR.
pod_with_ctr() {
    local name=$1
    shift
    POD=$(cri runp "$(pod_config "$name")" 2> >(grep -v 'cgroup_parent is not set' >&2)) || return 1
    echo "$POD" >>"$WORKDIR/pod-ids"
    CTR=$(cri create "$POD" "$(ctr_config "$name" "$@")" "$SPECS/pod-$name.json") || return 1
    cri start "$CTR" >/dev/null
}

remove_all_pods() {
    cri rmp -af >/dev/null 2>&1
}

# ---------------------------------------------------------------- scenarios

# exec_pipes_checks TRANSPORT: exec without a terminal over TRANSPORT.
exec_pipes_checks() {
    local transport=$1 out status
    out=$(printf 'hello\nworld\n' | cri exec --transport "$transport" -i "$CTR" cat 2>&1)
    check_eq "$transport: exec -i cat echoes piped stdin" $'hello\nworld' "$out"
    out=$(head -c 300000 /dev/zero | tr '\0' x | cri exec --transport "$transport" -i "$CTR" wc -c 2>&1)
    check_eq "$transport: exec -i passes 300000 bytes of stdin whole" 300000 "$(tr -d ' ' <<<"$out")"
    out=$(cri exec --transport "$transport" "$CTR" sh -c 'echo to-out; echo to-err >&2' 2>/dev/null)
    check_eq "$transport: exec without tty keeps stdout apart from stderr" to-out "$out"
    out=$(cri exec --transport "$transport" "$CTR" sh -c 'echo to-out; echo to-err >&2' 2>&1 >/dev/null)
    check_match "$transport: stderr arrives on stderr" '^to-err$' "$out"
    # crictl itself exits 1 on any failed exec; the code arrives in the status it prints.
    out=$(cri exec --transport "$transport" "$CTR" sh -c 'exit 3' 2>&1)
    status=$?
    check_match "$transport: exec of 'exit 3' reports exit code 3 (crictl status $status)" 'command terminated with exit code 3"?$' "$out"
    check "$transport: exec of true exits 0" cri exec --transport "$transport" "$CTR" true
    out=$(cri exec --transport "$transport" "$CTR" seq 1 20000 2>&1 | tail -1)
    check_eq "$transport: a long output arrives complete before the exit status" 20000 "$out"
    check_eq "$transport: no exec FIFO is left in the shim directory" "" "$(find "$DAEMON_STATE" -name 'exec-*' -type p 2>/dev/null)"
}

scenario_exec_pipes() {
    pod_with_ctr exec-pipes sleep 3600 || { fail_check "a pod with a sleeping container runs" "$POD $CTR"; return; }
    exec_pipes_checks websocket
    exec_pipes_checks spdy
    remove_all_pods
}

# exec_tty_checks TRANSPORT: exec -it over TRANSPORT.
exec_tty_checks() {
    local transport=$1 out
    # script(1) gives crictl a terminal; the typed lines reach sh through it.
    out=$( (sleep 1; printf 'echo hi-from-$((6*7))\n'; sleep 1; printf 'exit 5\n'; sleep 1) |
        timeout 30 script -qec "$CRICTL --config $CRICTL_CONFIG exec -it --transport $transport $CTR sh" /dev/null 2>&1)
    check_match "$transport: sh in a terminal runs what was typed" 'hi-from-42' "$out"
    check_match "$transport: exec -it reports the shell's exit code" 'command terminated with exit code 5' "$out"
    # crictl sends its terminal's size once its streams are up, which races with the
    # process's start (as with every CRI runtime): the process looks a moment later.
    out=$( (sleep 4) | timeout 30 script -qec "stty rows 37 cols 101; $CRICTL --config $CRICTL_CONFIG exec -it --transport $transport $CTR sh -c 'sleep 1; stty size'" /dev/null 2>&1)
    check_match "$transport: the terminal gets crictl's window size" '^37 101' "$out"
}

scenario_exec_tty() {
    pod_with_ctr exec-tty sleep 3600 || { fail_check "a pod with a sleeping container runs" "$POD $CTR"; return; }
    exec_tty_checks websocket
    exec_tty_checks spdy
    remove_all_pods
}

# forwarded_get TRANSPORT LOCAL_PORT [POD_PORT]: GETs / twice through a crictl port-forward
# of POD to POD_PORT (8080).
forwarded_get() {
    local transport=$1 local_port=$2 pod_port=${3:-8080} forwarder out
    cri port-forward --transport "$transport" "$POD" "$local_port:$pod_port" >"$WORKDIR/port-forward.log" 2>&1 &
    forwarder=$!
    for _ in $(seq 1 50); do
        grep -q 'Forwarding from' "$WORKDIR/port-forward.log" && break
        sleep 0.1
    done
    out=$(curl -s --max-time 10 "http://127.0.0.1:$local_port/" 2>&1)
    out+=" "$(curl -s --max-time 10 "http://127.0.0.1:$local_port/" 2>&1)
    kill "$forwarder" 2>/dev/null
    wait "$forwarder" 2>/dev/null
    echo "$out"
}

scenario_port_forward() {
    local out transport
    pod_with_ctr port-forward sh -c 'mkdir -p /www && echo hello-from-pod >/www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www' ||
        { fail_check "a pod serving http on its 127.0.0.1:8080 runs" "$POD $CTR"; return; }
    sleep 0.5
    for transport in spdy websocket; do
        out=$(forwarded_get "$transport" "$(free_port)")
        check_eq "$transport: two GETs through crictl port-forward reach httpd in the pod" "hello-from-pod hello-from-pod" "$out"
    done
    out=$(forwarded_get websocket "$(free_port)" 9999)
    check_match "websocket: a port nothing listens on gets an error, not a hang" 'error forwarding port 9999' "$(cat "$WORKDIR/port-forward.log")"
    check_eq "the pod's httpd is not reachable from the host directly" "" "$(curl -s --max-time 2 http://127.0.0.1:8080/ 2>/dev/null)"
    remove_all_pods
}

# rss_kb PID: resident memory of a process, in KiB.
rss_kb() {
    awk '/^VmRSS:/ {print $2}' "/proc/$1/status"
}

# pod_shim_pid: the shim of the one pod running.
pod_shim_pid() {
    cat "$DAEMON_STATE"/shims/*/shim.pid 2>/dev/null | head -1
}

# sample_peak_rss PID OUTFILE: writes the highest RSS of PID seen every 0.2 s into
# OUTFILE until killed.
sample_peak_rss() {
    local pid=$1 out=$2 peak=0 rss
    while rss=$(rss_kb "$pid"); do
        ((rss > peak)) && peak=$rss && echo "$peak" >"$out"
        sleep 0.2
    done
}

# A reader that stalls, then reads in bursts with stalls between: the output it
# waits for piles up wherever nothing holds it back.
SLOW_READER='
import sys, time
time.sleep(5)
total = 0
while True:
    chunk = sys.stdin.buffer.read(1 << 16)
    if not chunk:
        break
    total += len(chunk)
    if total % (128 << 20) < (1 << 16):
        time.sleep(1)
print(total)
'

# back_pressure_checks TRANSPORT: 1 GiB of exec output to a slow reader.
back_pressure_checks() {
    local transport=$1 shim daemon_before shim_before sampler_daemon sampler_shim out
    shim=$(pod_shim_pid)
    daemon_before=$(rss_kb "$DAEMON_PID")
    shim_before=$(rss_kb "$shim")
    sample_peak_rss "$DAEMON_PID" "$WORKDIR/peak-daemon" & sampler_daemon=$!
    sample_peak_rss "$shim" "$WORKDIR/peak-shim" & sampler_shim=$!
    out=$(cri exec --transport "$transport" "$CTR" head -c 1073741824 /dev/zero | python3 -c "$SLOW_READER")
    kill "$sampler_daemon" "$sampler_shim" 2>/dev/null
    wait "$sampler_daemon" "$sampler_shim" 2>/dev/null
    check_eq "$transport: 1 GiB of exec output reaches a slow reader whole" 1073741824 "$out"
    local daemon_growth=$(($(cat "$WORKDIR/peak-daemon") - daemon_before)) shim_growth=$(($(cat "$WORKDIR/peak-shim") - shim_before))
    check "$transport: berthd's RSS grew by ${daemon_growth} KiB (< 64 MiB) while the reader stalled" test "$daemon_growth" -lt 65536
    check "$transport: the shim's RSS grew by ${shim_growth} KiB (< 64 MiB) while the reader stalled" test "$shim_growth" -lt 65536
}

scenario_back_pressure() {
    pod_with_ctr back-pressure sleep 3600 || { fail_check "a pod with a sleeping container runs" "$POD $CTR"; return; }
    back_pressure_checks spdy
    back_pressure_checks websocket
    remove_all_pods
}

# crictl_pid_running MARKER: the pid of the crictl process whose command line holds MARKER.
crictl_pid_running() {
    local pid crictl
    crictl=$(readlink -f "$CRICTL")
    for pid in $(pgrep -f -- "$1"); do
        [[ $(readlink -f "/proc/$pid/exe" 2>/dev/null) == "$crictl" ]] && echo "$pid" && return 0
    done
    return 1
}

# disconnect_checks TRANSPORT MODE MARKER: the client killed mid-exec, for MODE plain
# (output only), -i (stdin) or -it (a terminal). The exec'd shell has a child,
# `sleep MARKER`: the process crictl started and what it started must both go.
disconnect_checks() {
    local transport=$1 mode=$2 marker=$3 shim fds_before job client out
    local command="sleep $marker & echo started; wait"
    shim=$(pod_shim_pid)
    fds_before=$(ls "/proc/$shim/fd" | wc -l)
    : >"$WORKDIR/disconnect.out"
    case $mode in
        plain) "$CRICTL" --config "$CRICTL_CONFIG" exec --transport "$transport" "$CTR" sh -c "$command" >"$WORKDIR/disconnect.out" 2>&1 & ;;
        -i) (sleep 30) | "$CRICTL" --config "$CRICTL_CONFIG" exec --transport "$transport" -i "$CTR" sh -c "$command" >"$WORKDIR/disconnect.out" 2>&1 & ;;
        -it) (sleep 30) | script -qec "$CRICTL --config $CRICTL_CONFIG exec -it --transport $transport $CTR sh -c '$command'" /dev/null >"$WORKDIR/disconnect.out" 2>&1 & ;;
    esac
    job=$!
    for _ in $(seq 1 50); do
        grep -q started "$WORKDIR/disconnect.out" && break
        sleep 0.1
    done
    check_match "$transport $mode: the exec runs" started "$(cat "$WORKDIR/disconnect.out")"
    client=$(crictl_pid_running "sleep $marker &")
    check "$transport $mode: crictl (pid ${client:-none}) runs the exec" test -n "$client"
    [[ -n $client ]] && kill -KILL "$client" 2>/dev/null
    kill "$job" 2>/dev/null
    wait "$job" 2>/dev/null
    for _ in $(seq 1 50); do
        out=$(cri exec "$CTR" ps -o args 2>&1 | grep -c "sleep $marker")
        [[ $out == 0 ]] && break
        sleep 0.1
    done
    check_eq "$transport $mode: the exec'd shell and its child are gone from the container with the client" 0 "$out"
    for _ in $(seq 1 50); do
        (($(ls "/proc/$shim/fd" | wc -l) <= fds_before)) && break
        sleep 0.1
    done
    check_eq "$transport $mode: the shim holds as many descriptors as before the exec" "$fds_before" "$(ls "/proc/$shim/fd" | wc -l)"
}

scenario_disconnect() {
    local out transport mode marker=4240
    pod_with_ctr disconnect sleep 3600 || { fail_check "a pod with a sleeping container runs" "$POD $CTR"; return; }
    for transport in spdy websocket; do
        for mode in plain -i -it; do
            marker=$((marker + 1))
            disconnect_checks "$transport" "$mode" "$marker"
        done
    done
    # stdin that is still on its way when the client ends it reaches the process whole.
    out=$(head -c 2000000 /dev/zero | cri exec -i "$CTR" sh -c 'sleep 2; wc -c' 2>&1)
    check_eq "stdin waiting in the pipes when it ends is passed on before it closes" 2000000 "$(tr -d ' ' <<<"$out")"
    remove_all_pods
}

# garbage_request: what the streaming server answers to a request that is no HTTP.
garbage_request() {
    exec 3<>"/dev/tcp/127.0.0.1/$STREAMING_PORT" || return 1
    printf '\x00\x01garbage\r\n\r\n' >&3
    timeout 5 cat <&3
    exec 3<&-
}

# attach_checks TRANSPORT
attach_checks() {
    local transport=$1 out
    CTR_FILTER='.stdin = true' pod_with_ctr "attach-$transport" sh -c 'while read -r line; do echo "got:$line"; done' ||
        { fail_check "a pod with a container reading stdin runs" "$POD $CTR"; return; }
    # An attach lasts as long as the container: the client is cut off after the input.
    out=$( (echo first; sleep 1; echo second; sleep 2) | timeout -k 3 6 "$CRICTL" --config "$CRICTL_CONFIG" attach --transport "$transport" -i "$CTR" 2>&1)
    check_match "$transport: attach -i feeds the container's stdin and shows its output" '^got:second' "$out"
    check_match "$transport: the attacher sees output from its first line on" '^got:first' "$out"
    check_eq "$transport: detaching leaves the container running" CONTAINER_RUNNING "$(cri inspect -o json "$CTR" | jq -r .status.state)"
    # A second attacher, output only, sees what the first one's input causes, live.
    timeout -k 3 6 "$CRICTL" --config "$CRICTL_CONFIG" attach --transport "$transport" "$CTR" >"$WORKDIR/watcher.out" 2>&1 &
    local watcher=$!
    sleep 1
    out=$( (echo shared; sleep 2) | timeout -k 3 5 "$CRICTL" --config "$CRICTL_CONFIG" attach --transport "$transport" -i "$CTR" 2>&1)
    wait "$watcher"
    check_match "$transport: the attacher typing sees its output" '^got:shared' "$out"
    check_match "$transport: a second attacher at the same time sees it too" '^got:shared' "$(cat "$WORKDIR/watcher.out")"
    check_eq "$transport: two attachers gone, the container still runs" CONTAINER_RUNNING "$(cri inspect -o json "$CTR" | jq -r .status.state)"
    check_eq "$transport: no attach FIFO is left in the shim directory" "" "$(find "$DAEMON_STATE" -name '*.attach-*' 2>/dev/null)"
    CTR_FILTER='.stdin = true | .tty = true' pod_with_ctr "attach-tty-$transport" sh ||
        { fail_check "a pod with a shell on a terminal runs" "$POD $CTR"; return; }
    # Input outlasts the attacher, which is cut off: script(1) would type ^D at its end.
    out=$( (sleep 1; printf 'echo tty-$((6*7))\n'; sleep 8) |
        timeout -k 2 5 script -qec "$CRICTL --config $CRICTL_CONFIG attach -it --transport $transport $CTR" /dev/null 2>&1)
    check_match "$transport: attach -it types into the container's shell and shows its terminal" 'tty-42' "$out"
    check_eq "$transport: detaching from the terminal leaves the shell running" CONTAINER_RUNNING "$(cri inspect -o json "$CTR" | jq -r .status.state)"
    CTR_FILTER='.stdin = true | .stdin_once = true' pod_with_ctr "attach-once-$transport" cat ||
        { fail_check "a pod with a stdin_once container runs" "$POD $CTR"; return; }
    out=$(echo only-once | timeout -k 3 20 "$CRICTL" --config "$CRICTL_CONFIG" attach --transport "$transport" -i "$CTR" 2>&1)
    local status=$?
    check_eq "$transport: attach to a stdin_once cat echoes the input and ends with it (status $status)" only-once "$out"
    check_eq "$transport: stdin_once: the container ended with its stdin" CONTAINER_EXITED "$(cri inspect -o json "$CTR" | jq -r .status.state)"
}

scenario_attach() {
    attach_checks spdy
    attach_checks websocket
    remove_all_pods
}

scenario_bad_urls() {
    local base="http://127.0.0.1:$STREAMING_PORT" route
    for route in exec/not-a-token attach/not-a-token portforward/not-a-token exec/ other; do
        check_eq "GET /$route is 404" 404 "$(curl -s -o /dev/null -w '%{http_code}' "$base/$route")"
    done
    check_eq "a 404 tells nothing" "404 page not found" "$(curl -s "$base/exec/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")"
    check_eq "a garbage request is 400" 400 "$(garbage_request | awk 'NR == 1 {print $2}')"
}

# ---------------------------------------------------------------- main

# ONLY=PATTERN runs just the scenarios whose function name matches PATTERN.
scenario_if_wanted() {
    [[ $2 =~ ${ONLY:-.} ]] && scenario "$@"
    return 0
}

echo "$SCENARIO_FILE: daemon $CRI_DAEMON, $("$CRICTL" --version), work dir $WORKDIR"
[[ $CRI_DAEMON == berth ]] || die "these scenarios need berthd's streaming server"
registry_start
build_test_images >/dev/null
push_test_images
daemon_configure
STREAMING_PORT=$(free_port) || die "no free port for the streaming server"
cat >>"$WORKDIR/berth/config.toml" <<END_OF_STREAMING_CONFIG

[streaming]
address = "127.0.0.1:$STREAMING_PORT"
END_OF_STREAMING_CONFIG
sed -i "s|^conf_dir = .*|conf_dir = \"$WORKDIR/berth/cni\"|" "$WORKDIR/berth/config.toml"
# Pods go through the daemon and their cgroups after it; lib.sh's cleanup then
# unmounts and removes the rest of the work directory.
remove_pods_then_cleanup() {
    local status=$?
    trap '' INT TERM
    remove_all_pods
    daemon_stop quiet
    remove_run_pod_cgroups
    (exit "$status")
    cleanup
}
trap remove_pods_then_cleanup EXIT
daemon_start || die "$CRI_DAEMON did not start; log: $(tail -20 "$DAEMON_LOG")"
cri pull "$BUSYBOX" >/dev/null || die "could not pull $BUSYBOX"

scenario_if_wanted "exec -i over WebSocket and SPDY: stdin, stdout, stderr, exit codes" scenario_exec_pipes
scenario_if_wanted "exec -it over WebSocket and SPDY: a shell in a terminal" scenario_exec_tty
scenario_if_wanted "attach over SPDY and WebSocket: stdin, live output to several attachers, terminals, stdin_once" scenario_attach
scenario_if_wanted "port-forward over SPDY and WebSocket to httpd in a pod" scenario_port_forward
scenario_if_wanted "back-pressure: 1 GiB of exec output to a slow reader, memory stays bounded" scenario_back_pressure
scenario_if_wanted "a client killed mid-exec (plain, -i, -it) leaks neither the processes nor the shim's descriptors" scenario_disconnect
scenario_if_wanted "unknown tokens and bad requests get bare errors" scenario_bad_urls
finish
