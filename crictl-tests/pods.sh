#!/usr/bin/env bash
# Pod and container scenarios: the CRI RuntimeService as the real crictl drives it,
# with berthd running pods through berth-shim, runc and the CNI plugins.
#
#   sudo crictl-tests/pods.sh                          # berthd from target/release
#   sudo BERTHD=target/debug/berthd crictl-tests/pods.sh
#
# berthd's CNI conf dir is a temporary directory, so the default bridge network it
# writes there never reaches /etc/cni/net.d; the bridge itself lives in the scenario
# file's own network namespace (see lib.sh). The stop grace period is 3 s, so that
# `crictl stop -t 0` has a short configured period to wait out.
# shellcheck source=crictl-tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# pid_running PID: the process exists and is not a zombie. A killed process whose
# parent (here often PID 1 of a container-like host) has not reaped it yet is gone
# for every purpose a pod cares about.
pid_running() {
    local state
    state=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# pid_gone_within SECONDS PID: SIGKILL is delivered asynchronously; allow it time.
pid_gone_within() {
    local deadline=$((SECONDS + $1))
    while pid_running "$2"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

BUSYBOX=docker.io/library/busybox:latest
# Pulled by nothing but `crictl run`, which must fetch it itself.
BUSYBOX_UNPULLED=docker.io/library/busybox:1.36
POD_NAMESPACE=berth-pods
STOP_GRACE_PERIOD=3
# The cgroup parent of the bad-input scenario's pods, removed on exit.
LEAK_CGROUP_PARENT=""
SPECS="$WORKDIR/specs"
POD_LOGS="$WORKDIR/pod-logs"
mkdir -p "$SPECS" "$POD_LOGS"

# ---------------------------------------------------------------- configs

# pod_config NAME [JQ-FILTER]: writes a pod sandbox config and prints its path.
pod_config() {
    local name=$1 filter=${2:-.} file="$SPECS/pod-$1.json"
    jq -n --arg name "$name" --arg namespace "$POD_NAMESPACE" --arg logs "$POD_LOGS/$name" '{
        metadata: {name: $name, namespace: $namespace, uid: ("uid-" + $name), attempt: 0},
        hostname: $name,
        log_directory: $logs,
        labels: {app: $name, suite: "pods"},
        linux: {}
    }' | jq "$filter" >"$file"
    echo "$file"
}

# ctr_config NAME COMMAND...: a busybox container config running COMMAND (the image's
# own command when none is given); CTR_FILTER, if set, is a jq filter applied last.
ctr_config() {
    local name=$1 file="$SPECS/ctr-$1.json"
    shift
    # jq would take a "-c" among --args for its own option: the command goes in as JSON.
    local command="[]" word
    for word in "$@"; do
        command=$(jq -c --arg word "$word" '. + [$word]' <<<"$command")
    done
    jq -n --arg name "$name" --arg image "$BUSYBOX" --argjson command "$command" '{
        metadata: {name: $name},
        image: {image: $image},
        command: $command,
        log_path: ($name + ".log"),
        linux: {}
    }' | jq "${CTR_FILTER:-.}" >"$file"
    echo "$file"
}

# run_pod NAME [JQ-FILTER]: runp; prints the pod id.
run_pod() {
    local id
    # crictl warns on every runp whose config names no cgroup parent, as these do.
    id=$(cri runp "$(pod_config "$@")" 2> >(grep -v 'cgroup_parent is not set' >&2)) || return 1
    echo "$id" >>"$WORKDIR/pod-ids"
    echo "$id"
}

# start_ctr POD NAME COMMAND...: create + start in POD (whose config is pod-NAME.json's
# sibling written by run_pod); prints the container id.
start_ctr() {
    local pod=$1 name=$2 id
    shift 2
    id=$(create_ctr "$pod" "$name" "$@") || return 1
    cri start "$id" >/dev/null || return 1
    echo "$id"
}

create_ctr() {
    local pod=$1 name=$2 pod_file
    shift 2
    pod_file=$(pod_config_of "$pod") || return 1
    cri create "$pod" "$(ctr_config "$name" "$@")" "$pod_file"
}

# pod_config_of POD_ID: the config file a pod was created from (by its name).
pod_config_of() {
    local name
    name=$(cri inspectp -o json "$1" | jq -r .status.metadata.name) || return 1
    echo "$SPECS/pod-$name.json"
}

# ---------------------------------------------------------------- observations

inspect_json() { cri inspect -o json "$1" 2>/dev/null; }
# ctr_field ID JQ-PATH: a field of `crictl inspect -o json` (status or info).
ctr_field() { inspect_json "$1" | jq -r "$2 // empty"; }
ctr_state() { ctr_field "$1" .status.state; }
# ctr_info_field ID FIELD: berthd's verbose info (a JSON document crictl may have parsed).
ctr_info_field() {
    inspect_json "$1" | jq -r --arg f "$2" '.info | if has("info") then .info else . end |
        if type == "string" then fromjson else . end | .[$f] // empty'
}
pod_state() { cri inspectp -o json "$1" 2>/dev/null | jq -r '.status.state // empty'; }

# wait_state ID STATE [SECONDS]: waits until container ID is in STATE.
wait_state() {
    local deadline=$((SECONDS + ${3:-15}))
    while ((SECONDS < deadline)); do
        [[ $(ctr_state "$1") == "$2" ]] && return 0
        sleep 0.2
    done
    echo "container $1 is $(ctr_state "$1"), not $2, after ${3:-15} s"
    return 1
}

# wait_log ID EXTENDED-REGEX [SECONDS]: waits until a line of crictl logs matches.
wait_log() {
    local deadline=$((SECONDS + ${3:-10}))
    while ((SECONDS < deadline)); do
        cri logs "$1" 2>&1 | grep -Eq -- "$2" && return 0
        sleep 0.2
    done
    echo "no log line of $1 matches /$2/ after ${3:-10} s:"
    cri logs "$1" 2>&1 | tail -5
    return 1
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ms_between LOW HIGH VALUE: LOW <= VALUE < HIGH (milliseconds).
ms_between() {
    if (($3 >= $1 && $3 < $2)); then return 0; fi
    echo "took $3 ms, expected at least $1 ms and less than $2 ms"
    return 1
}

contains_line() { grep -qxF -- "$1" <<<"$2"; }

shim_pids_of_state() { pgrep -f "berth-shim .*--state-dir $DAEMON_STATE/" | sort; }
netns_mounts() { findmnt -rn -o TARGET,FSTYPE | awk -v dir="$DAEMON_STATE/" 'index($1, dir) == 1 && $2 == "nsfs" {print $1}' | sort; }
overlay_mounts() { findmnt -rn -t overlay -o TARGET | grep -F "$WORKDIR/" | sort; }
berth_cgroups() { parent_cgroups /berth; }
snapshot_dirs() { find "$DAEMON_ROOT/snapshots" -mindepth 1 -maxdepth 2 2>/dev/null | sort; }

# parent_cgroups PARENT: every cgroup directory below PARENT, in any hierarchy.
parent_cgroups() {
    local hierarchy
    for hierarchy in /sys/fs/cgroup /sys/fs/cgroup/*; do
        [[ -d $hierarchy/${1#/} ]] && find "$hierarchy/${1#/}" -mindepth 1 -type d
    done | sort
}

# pod_cgroup_pids POD: the processes still in the pod's cgroups (memory hierarchy, or the
# unified one on cgroup v2), one a line.
pod_cgroup_pids() {
    local base=/sys/fs/cgroup/memory/berth/$1
    cgroup_v2 && base=/sys/fs/cgroup/berth/$1
    [[ -d $base ]] || return 0
    find "$base" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u
}

# kill_pod_leftovers POD: kills, by pid, what a failed scenario left running in the
# pod's cgroups (its own pause and container processes), so that the run leaks nothing.
kill_pod_leftovers() {
    local pid
    for pid in $(pod_cgroup_pids "$1"); do
        kill -KILL "$pid" 2>/dev/null
    done
}

# container_cgroup CONTROLLER ID: the container's cgroup directory on the host, for a
# v1 CONTROLLER (memory, cpu) or the unified hierarchy when the host is cgroup v2.
container_cgroup() {
    local controller=$1 id=$2 base
    if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
        base=/sys/fs/cgroup
    else
        base=/sys/fs/cgroup/$controller
    fi
    find "$base" -type d -name "$id" -print -quit 2>/dev/null
}

cgroup_v2() { [[ -f /sys/fs/cgroup/cgroup.controllers ]]; }

# check_fails_saying DESCRIPTION WORD... -- COMMAND...: passes when COMMAND fails and its
# output names every WORD (case-insensitively).
check_fails_saying() {
    local description=$1 words=() output word
    shift
    while [[ $1 != -- ]]; do
        words+=("$1")
        shift
    done
    shift
    if output=$("$@" 2>&1); then
        fail_check "$description" "unexpectedly succeeded: $*" "$output"
        return
    fi
    for word in "${words[@]}"; do
        if ! grep -qiF -- "$word" <<<"$output"; then
            fail_check "$description" "the error does not say '$word':" "$output"
            return
        fi
    done
    pass_check "$description"
}

# check_nothing_new DESCRIPTION BEFORE AFTER: passes when AFTER has no line BEFORE lacks.
check_nothing_new() {
    local added
    added=$(comm -13 <(sort <<<"$2") <(sort <<<"$3") | grep .)
    if [[ -z $added ]]; then
        pass_check "$1"
    else
        fail_check "$1" "new:" "$added"
    fi
}

remove_all_pods() {
    cri rmp -af >/dev/null 2>&1
    local left
    left=$(cri pods -q 2>&1)
    [[ -z $left ]] || fail_check "every pod removed after the scenario" "$left"
}

# ---------------------------------------------------------------- scenarios

scenario_pod_lifecycle() {
    local pod other out ip state
    pod=$(run_pod alpha) || { fail_check "crictl runp alpha" "$pod"; return; }
    pass_check "crictl runp gives a pod id"
    check_eq "the new pod is ready" SANDBOX_READY "$(pod_state "$pod")"
    other=$(run_pod beta '.labels.tier = "back"') || fail_check "crictl runp beta" "$other"

    check_eq "pods --name alpha" "$pod" "$(cri pods -q --name alpha)"
    out=$(cri pods -q --namespace "$POD_NAMESPACE")
    check "pods --namespace lists both pods" contains_line "$pod" "$out"
    check "pods --namespace lists beta" contains_line "$other" "$out"
    check_eq "pods --namespace elsewhere lists none" "" "$(cri pods -q --namespace elsewhere)"
    check "pods --state ready lists alpha" contains_line "$pod" "$(cri pods -q --state ready)"
    check_no_match "pods --state notready does not list alpha" "^$pod\$" "$(cri pods -q --state notready)"
    check_eq "pods --label app=alpha" "$pod" "$(cri pods -q --label app=alpha)"
    check_eq "pods --label tier=back" "$other" "$(cri pods -q --label tier=back)"
    check_eq "pods --label app=nobody lists none" "" "$(cri pods -q --label app=nobody)"
    check_eq "pods --id with a prefix" "$pod" "$(cri pods -q --id "${pod:0:12}")"

    out=$(cri inspectp -o json "$pod")
    ip=$(jq -r '.status.network.ip // empty' <<<"$out")
    check_match "inspectp shows the pod IP on the default bridge (10.88.0.0/16)" '^10\.88\.[0-9]+\.[0-9]+$' "$ip"
    check_eq "inspectp shows the state" SANDBOX_READY "$(jq -r .status.state <<<"$out")"
    check_eq "inspectp shows the name" alpha "$(jq -r .status.metadata.name <<<"$out")"
    check_eq "inspectp shows the labels" alpha "$(jq -r .status.labels.app <<<"$out")"
    check "the two pods got different IPs" test "$ip" != "$(cri inspectp -o json "$other" | jq -r .status.network.ip)"

    check_fails_saying "a second runp of the same metadata fails with AlreadyExists" "already exists" -- cri runp "$SPECS/pod-alpha.json"
    check_eq "still exactly one alpha" "$pod" "$(cri pods -q --name alpha)"

    check "crictl stopp" cri stopp "$pod"
    check_eq "a stopped pod is not ready" SANDBOX_NOTREADY "$(pod_state "$pod")"
    check "pods --state notready lists it" contains_line "$pod" "$(cri pods -q --state notready)"
    check "crictl stopp of a stopped pod succeeds" cri stopp "$pod"
    check "crictl rmp" cri rmp "$pod"
    check_fails "inspectp of a removed pod fails" cri inspectp "$pod"
    check "crictl stopp of a removed pod succeeds" cri stopp "$pod"
    # (A second `crictl rmp` cannot show RemovePodSandbox's idempotence: crictl asks for
    # the pod's status first, with or without -f, and stops at NotFound.)

    check "crictl stopp beta" cri stopp "$other"
    run_pod gamma >/dev/null && cri stopp "$(cri pods -q --name gamma)" >/dev/null
    check "crictl rmp -a removes the stopped pods" cri rmp -a
    check_eq "no pod left after rmp -a" "" "$(cri pods -q)"

    pod=$(run_pod delta) || { fail_check "crictl runp delta" "$pod"; return; }
    local ctr
    ctr=$(start_ctr "$pod" delta-sleeper sleep 3600) || fail_check "a container runs in delta" "$ctr"
    check "crictl rmp -f removes a running pod" cri rmp -f "$pod"
    check_eq "no pod left after rmp -f" "" "$(cri pods -q)"
    check_eq "no container left after rmp -f" "" "$(cri ps -aq)"
    check_eq "no shim left after rmp -f" "" "$(shim_pids_of_state)"
    check_eq "no netns mount left after rmp -f" "" "$(netns_mounts)"
}

scenario_containers() {
    local pod ctr done_ctr run_ctr out
    pod=$(run_pod bravo) || { fail_check "crictl runp bravo" "$pod"; return; }
    ctr=$(cri create "$pod" "$(ctr_config web sleep 3600)" "$SPECS/pod-bravo.json") ||
        { fail_check "crictl create" "$ctr"; return; }
    pass_check "crictl create gives a container id"
    check_eq "a created container is CONTAINER_CREATED" CONTAINER_CREATED "$(ctr_state "$ctr")"
    check "crictl start" cri start "$ctr"
    check "the started container runs" wait_state "$ctr" CONTAINER_RUNNING 5

    done_ctr=$(start_ctr "$pod" oneshot true) || fail_check "a one-shot container starts" "$done_ctr"
    check "the one-shot container exits" wait_state "$done_ctr" CONTAINER_EXITED 10

    cri rmi "$BUSYBOX_UNPULLED" >/dev/null 2>&1
    out=$(CTR_FILTER=".image.image = \"$BUSYBOX_UNPULLED\"" ctr_config runner sleep 3600)
    if run_ctr=$(cri run "$out" "$(pod_config charlie)" 2>&1); then
        run_ctr=$(tail -1 <<<"$run_ctr")
        pass_check "crictl run creates a pod and a container"
        check "crictl run pulled the missing image" cri inspecti "$BUSYBOX_UNPULLED"
        check "the container crictl run started runs" wait_state "$run_ctr" CONTAINER_RUNNING 5
        check_eq "crictl run put it in a pod named charlie" "$(cri pods -q --name charlie)" \
            "$(cri ps -a -o json | jq -r --arg id "$run_ctr" '.containers[] | select(.id == $id) | .podSandboxId')"
        check_eq "pods --name charlie finds the pod of crictl run" 1 "$(cri pods -q --name charlie | wc -l)"
    else
        fail_check "crictl run creates a pod and a container" "$run_ctr"
    fi

    out=$(cri ps -q)
    check "ps lists the running container" contains_line "$ctr" "$out"
    check_no_match "ps does not list the exited one" "^$done_ctr\$" "$out"
    out=$(cri ps -aq)
    check "ps -a lists the exited container" contains_line "$done_ctr" "$out"
    check "ps -a lists the running container" contains_line "$ctr" "$out"
    check_eq "ps --name web" "$ctr" "$(cri ps -aq --name '^web$')"
    check_eq "ps --state exited" "$done_ctr" "$(cri ps -aq --state exited)"
    check_eq "ps --state running --pod POD" "$ctr" "$(cri ps -q --state running --pod "$pod")"
    check_eq "ps -a --pod POD lists its two containers" 2 "$(cri ps -aq --pod "$pod" | wc -l)"
    check_eq "ps --id with a prefix" "$ctr" "$(cri ps -aq --id "${ctr:0:12}")"

    out=$(inspect_json "$ctr")
    check_eq "inspect: state" CONTAINER_RUNNING "$(jq -r .status.state <<<"$out")"
    check_match "inspect: image ref is a digest" '^(docker\.io/library/busybox@)?sha256:[0-9a-f]{64}$' "$(jq -r .status.imageRef <<<"$out")"
    check_eq "inspect: image" "$BUSYBOX" "$(jq -r .status.image.image <<<"$out")"
    check_eq "inspect: log path under the pod's log directory" "$POD_LOGS/bravo/web.log" "$(jq -r .status.logPath <<<"$out")"
    check "inspect: the log file exists" test -f "$POD_LOGS/bravo/web.log"
    check_match "inspect: startedAt is set" '^20[0-9]{2}-' "$(jq -r '.status.startedAt // empty' <<<"$out")"
    local pid
    pid=$(ctr_info_field "$ctr" pid)
    if [[ $pid =~ ^[0-9]+$ ]] && ((pid > 1)); then
        pass_check "inspect: pid $pid"
        check_eq "the pid is the container's sleep" "sleep 3600" "$(tr '\0' ' ' <"/proc/$pid/cmdline" | sed 's/ $//')"
    else
        fail_check "inspect: pid" "pid: '$pid'" "$(jq -c .info <<<"$out" | cut -c1-400)"
    fi
    out=$(inspect_json "$done_ctr")
    check_eq "inspect of the exited one: state" CONTAINER_EXITED "$(jq -r .status.state <<<"$out")"
    check_eq "inspect of the exited one: exit code" 0 "$(jq -r .status.exitCode <<<"$out")"
    check_match "inspect of the exited one: finishedAt is set" '^20[0-9]{2}-' "$(jq -r '.status.finishedAt // empty' <<<"$out")"

    check "crictl stop" cri stop -t 1 "$ctr"
    check_eq "a stopped container is exited" CONTAINER_EXITED "$(ctr_state "$ctr")"
    check "crictl rm" cri rm "$ctr"
    check_fails "inspect of a removed container fails" cri inspect "$ctr"
    check_no_match "ps -a no longer lists it" "^$ctr\$" "$(cri ps -aq)"
    remove_all_pods
}

scenario_commands_and_exit_codes() {
    local pod ctr out
    pod=$(run_pod echo) || { fail_check "crictl runp echo" "$pod"; return; }
    ctr=$(CTR_FILTER='.args = ["hello", "from", "args"]' start_ctr "$pod" override echo)
    check "command and args replace the image's command" wait_log "$ctr" '^hello from args$'
    ctr=$(CTR_FILTER='.args = ["sh", "-c", "echo args alone run"]' start_ctr "$pod" args-only)
    check "args alone replace the image's cmd" wait_log "$ctr" '^args alone run$'

    ctr=$(start_ctr "$pod" fails sh -c 'echo failing; exit 3')
    if wait_state "$ctr" CONTAINER_EXITED 10 >/dev/null; then
        out=$(inspect_json "$ctr")
        check_eq "exit 3: exit code" 3 "$(jq -r .status.exitCode <<<"$out")"
        check_eq "exit 3: reason" Error "$(jq -r .status.reason <<<"$out")"
        check_match "exit 3: ps -a shows it Exited" "^$ctr" "$(cri ps -aq --state exited)"
    else
        fail_check "a container exiting 3 is exited" "$(ctr_state "$ctr")"
    fi
    ctr=$(start_ctr "$pod" succeeds sh -c 'exit 0')
    if wait_state "$ctr" CONTAINER_EXITED 10 >/dev/null; then
        out=$(inspect_json "$ctr")
        check_eq "exit 0: exit code" 0 "$(jq -r .status.exitCode <<<"$out")"
        check_eq "exit 0: reason" Completed "$(jq -r .status.reason <<<"$out")"
    else
        fail_check "a container exiting 0 is exited" "$(ctr_state "$ctr")"
    fi
    remove_all_pods
}

# last_line_number TEXT: the highest N of the "line N" lines in TEXT.
last_line_number() { grep -Eo '^line [0-9]+$' <<<"$1" | awk '{print $2}' | sort -n | tail -1; }

scenario_logs() {
    local pod ctr out stderr_only log_file before since follow first
    pod=$(run_pod logger) || { fail_check "crictl runp logger" "$pod"; return; }
    # shellcheck disable=SC2016  # for the container's shell
    ctr=$(start_ctr "$pod" chatty sh -c 'i=0; while :; do echo "line $i"; echo "err $i" >&2; i=$((i+1)); sleep 0.2; done') ||
        { fail_check "the logging container starts" "$ctr"; return; }
    check "the first lines arrive" wait_log "$ctr" '^line 3$'
    out=$(cri logs "$ctr" 2>/dev/null)
    check_match "logs show line 0" '^line 0$' "$out"
    check_match "logs show line 3" '^line 3$' "$out"
    check_eq "the container still runs after its logs were read" CONTAINER_RUNNING "$(ctr_state "$ctr")"
    stderr_only=$(cri logs "$ctr" 2>&1 >/dev/null)
    check_match "stderr lines appear on crictl's stderr" '^err 0$' "$stderr_only"
    check_no_match "stdout lines stay off crictl's stderr" '^line 0$' "$stderr_only"

    check_eq "--tail 2 gives 2 lines" 2 "$(cri logs --tail 2 "$ctr" 2>&1 | wc -l)"
    check_eq "--tail 1 gives the last line only" 1 "$(cri logs --tail 1 "$ctr" 2>&1 | grep -c .)"
    out=$(cri logs --timestamps --tail 4 "$ctr" 2>&1)
    check_match "--timestamps prefixes an RFC 3339 time" '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2}) (line|err) [0-9]+$' "$out"
    check_no_match "--timestamps prefixes every line" '^(line|err) ' "$out"

    sleep 1
    since=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
    before=$(last_line_number "$(cri logs "$ctr" 2>/dev/null)")
    sleep 1
    out=$(cri logs --since "$since" "$ctr" 2>/dev/null)
    first=$(grep -Eo '^line [0-9]+$' <<<"$out" | head -1 | awk '{print $2}')
    check_no_match "--since RFC3339 leaves out the old lines" '^line 0$' "$out"
    if [[ -n $first && -n $before ]] && ((first >= before - 1)); then
        pass_check "--since RFC3339 starts at the lines after that time (line $first, $before before)"
    else
        fail_check "--since RFC3339 starts at the lines after that time" "first line: '$first', last before: '$before'" "$out"
    fi
    out=$(cri logs --since 1s "$ctr" 2>/dev/null)
    check_match "--since 1s gives the newest lines" '^line [0-9]+$' "$out"
    check_no_match "--since 1s leaves out line 0" '^line 0$' "$out"
    # crictl reads the file itself and lets a little more than the second through.
    if (($(grep -c '^line' <<<"$out") <= 12)); then
        pass_check "--since 1s gives about a second of lines"
    else
        fail_check "--since 1s gives about a second of lines" "$(grep -c '^line' <<<"$out") lines"
    fi

    before=$(last_line_number "$(cri logs "$ctr" 2>/dev/null)")
    follow=$(timeout 3 "$CRICTL" --config "$CRICTL_CONFIG" logs -f "$ctr" 2>/dev/null)
    out=$(last_line_number "$follow")
    if [[ -n $out && -n $before ]] && ((out >= before + 5)); then
        pass_check "logs -f keeps delivering new lines (up to line $out, $before before)"
    else
        fail_check "logs -f keeps delivering new lines" "last line before: '$before', last followed: '$out'"
    fi
    check_eq "the container still runs after logs -f" CONTAINER_RUNNING "$(ctr_state "$ctr")"

    log_file=$(ctr_field "$ctr" .status.logPath)
    out=$(head -50 "$log_file" 2>&1)
    check_match "the CRI log file tags stdout lines 'stdout F'" '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+(Z|[+-][0-9:]+) stdout F line 0$' "$out"
    check_match "the CRI log file tags stderr lines 'stderr F'" '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+(Z|[+-][0-9:]+) stderr F err 0$' "$out"
    remove_all_pods
}

scenario_exec() {
    local pod ctr out status started elapsed
    pod=$(run_pod exec) || { fail_check "crictl runp exec" "$pod"; return; }
    ctr=$(start_ctr "$pod" target sleep 3600) || { fail_check "the target container starts" "$ctr"; return; }
    check_eq "exec -s echo hi" hi "$(cri exec -s "$ctr" echo hi 2>&1)"
    check_match "exec -s passes stderr back" '^to stderr$' "$(cri exec -s "$ctr" sh -c 'echo to stderr >&2' 2>&1)"
    out=$(cri exec -s "$ctr" sh -c 'echo before exit; exit 7' 2>&1)
    status=$?
    if ((status != 0)) && grep -q 7 <<<"$out$status"; then
        pass_check "exec -s of 'exit 7' fails and reports 7 (status $status)"
    else
        fail_check "exec -s of 'exit 7' fails and reports 7" "status $status" "$out"
    fi
    started=$(now_ms)
    out=$(CRI_COMMAND_TIMEOUT=30 cri exec -s --timeout 1 "$ctr" sleep 5 2>&1)
    status=$?
    elapsed=$(($(now_ms) - started))
    if ((status != 0 && elapsed < 4000)); then
        pass_check "exec -s --timeout 1 of sleep 5 fails after ${elapsed} ms"
    else
        fail_check "exec -s --timeout 1 of sleep 5 fails within 4 s" "status $status after $elapsed ms" "$out"
    fi
    check_eq "the container still runs after the execs" CONTAINER_RUNNING "$(ctr_state "$ctr")"
    check "exec -s works after a timed-out exec" cri exec -s "$ctr" true
    remove_all_pods
}

# timed_stop TIMEOUT ID: prints the milliseconds `crictl stop -t TIMEOUT ID` took.
timed_stop() {
    local started
    started=$(now_ms)
    cri stop -t "$1" "$2" >/dev/null 2>&1 || echo "crictl stop failed" >&2
    echo $(($(now_ms) - started))
}

scenario_stop() {
    local pod graceful stubborn patient elapsed
    pod=$(run_pod stopper) || { fail_check "crictl runp stopper" "$pod"; return; }
    graceful=$(start_ctr "$pod" graceful sh -c 'trap "echo got TERM; exit 0" TERM; echo trapping; while :; do sleep 0.1; done')
    stubborn=$(start_ctr "$pod" stubborn sh -c 'trap "" TERM; echo ignoring; while :; do sleep 0.1; done')
    patient=$(start_ctr "$pod" patient sh -c 'trap "" TERM; echo ignoring; while :; do sleep 0.1; done')
    check "the TERM-trapping container is ready" wait_log "$graceful" '^trapping$'
    check "the TERM-ignoring containers are ready" wait_log "$stubborn" '^ignoring$'
    check "the third container is ready" wait_log "$patient" '^ignoring$'

    elapsed=$(timed_stop 10 "$graceful")
    check "stop -t 10 of a TERM-trapping container returns within 2 s" ms_between 0 2500 "$elapsed"
    check_eq "it exited with code 0" 0 "$(ctr_field "$graceful" .status.exitCode)"
    check_eq "it is exited" CONTAINER_EXITED "$(ctr_state "$graceful")"
    check_match "its trap ran: 'got TERM' in its logs" '^got TERM$' "$(cri logs "$graceful" 2>&1)"

    elapsed=$(timed_stop 2 "$stubborn")
    check "stop -t 2 of a TERM-ignoring container takes the 2 s, not much more" ms_between 2000 6000 "$elapsed"
    check_eq "it ended with 137 (SIGKILL)" 137 "$(ctr_field "$stubborn" .status.exitCode)"
    check_eq "it is exited" CONTAINER_EXITED "$(ctr_state "$stubborn")"

    elapsed=$(timed_stop 0 "$patient")
    check "stop -t 0 waits the configured grace period (${STOP_GRACE_PERIOD} s)" ms_between $((STOP_GRACE_PERIOD * 1000)) 8000 "$elapsed"
    check_eq "it ended with 137 (SIGKILL)" 137 "$(ctr_field "$patient" .status.exitCode)"
    check "stop of an exited container succeeds" cri stop "$graceful"
    remove_all_pods
}

scenario_shared_network_own_filesystem() {
    local pod server client talker out
    pod=$(run_pod net) || { fail_check "crictl runp net" "$pod"; return; }
    server=$(start_ctr "$pod" server sh -c 'mkdir -p /www && echo hello-from-server >/www/index.html && echo serving && exec httpd -f -p 127.0.0.1:8080 -h /www')
    talker=$(start_ctr "$pod" talker sh -c 'echo listening; while :; do echo pong-from-talker | nc -l -p 9090; done')
    client=$(start_ctr "$pod" client sleep 3600)
    check "the http server container runs" wait_log "$server" '^serving$'
    check "the nc server container runs" wait_log "$talker" '^listening$'
    sleep 0.5
    check_eq "a client exec'd into the server's container reaches it on 127.0.0.1:8080" hello-from-server \
        "$(cri exec -s --timeout 10 "$server" wget -q -O - http://127.0.0.1:8080/index.html 2>&1)"
    check_eq "a second container of the pod reaches the server on 127.0.0.1:8080" hello-from-server \
        "$(cri exec -s --timeout 10 "$client" wget -q -O - http://127.0.0.1:8080/index.html 2>&1)"
    check_eq "nc from one container to another's nc -l over localhost" pong-from-talker \
        "$(cri exec -s --timeout 10 "$client" sh -c 'nc -w 3 127.0.0.1 9090 </dev/null' 2>&1)"

    cri exec -s "$server" sh -c 'echo only-here >/tmp/written-in-server' >/dev/null 2>&1
    check_eq "a file written in a container is there" only-here "$(cri exec -s "$server" cat /tmp/written-in-server 2>&1)"
    check_fails "and absent from the other container of the pod" cri exec -s "$client" test -e /tmp/written-in-server
    check_fails "the server's /www is not in the client" cri exec -s "$client" test -e /www/index.html
    check_eq "the pod's hostname is in every container" net "$(cri exec -s "$client" hostname 2>&1)"
    remove_all_pods
}

scenario_stats() {
    local pod ctr out bytes
    pod=$(run_pod stats) || { fail_check "crictl runp stats" "$pod"; return; }
    # Holds a few MB so that its working set is well above zero.
    ctr=$(start_ctr "$pod" hog sh -c 'x=$(head -c 4000000 /dev/zero | tr "\0" a); echo holding; while :; do sleep 1; done')
    check "the container holds its memory" wait_log "$ctr" '^holding$'
    sleep 1
    out=$(cri stats 2>&1)
    check_match "crictl stats lists the container" "^${ctr:0:13}" "$out"
    out=$(cri stats -o json 2>&1)
    bytes=$(jq -r --arg id "$ctr" '.stats[] | select(.attributes.id == $id) | .memory.workingSetBytes.value // empty' <<<"$out")
    if [[ $bytes =~ ^[0-9]+$ ]] && ((bytes > 4000000)); then
        pass_check "stats -o json: memory working set $bytes bytes"
    else
        fail_check "stats -o json: memory working set above 4 MB" "working set: '$bytes'" "$(jq -c . <<<"$out" | cut -c1-600)"
    fi
    check_match "stats -o json: cpu usage" '^[0-9]+$' \
        "$(jq -r --arg id "$ctr" '.stats[] | select(.attributes.id == $id) | .cpu.usageCoreNanoSeconds.value // empty' <<<"$out")"
    check_eq "stats --id" "$ctr" "$(cri stats -o json --id "$ctr" | jq -r '.stats[].attributes.id')"
    out=$(cri statsp 2>&1)
    check_match "crictl statsp lists the pod" "stats" "$out"
    out=$(cri statsp -o json 2>&1)
    bytes=$(jq -r --arg id "$pod" '.stats[] | select(.attributes.id == $id) | .linux.memory.workingSetBytes.value // empty' <<<"$out")
    if [[ $bytes =~ ^[0-9]+$ ]] && ((bytes > 0)); then
        pass_check "statsp -o json: pod memory working set $bytes bytes"
    else
        fail_check "statsp -o json: pod memory working set" "working set: '$bytes'" "$(jq -c . <<<"$out" | cut -c1-600)"
    fi
    check "statsp -o json: the pod's containers" jq -e --arg id "$ctr" \
        '.stats[].linux.containers[]? | select(.attributes.id == $id)' <<<"$out"
    remove_all_pods
}

scenario_update() {
    local pod ctr dir out
    pod=$(run_pod limits) || { fail_check "crictl runp limits" "$pod"; return; }
    ctr=$(start_ctr "$pod" limited sleep 3600) || { fail_check "the container starts" "$ctr"; return; }
    check "crictl update --memory" cri update --memory 67108864 "$ctr"
    dir=$(container_cgroup memory "$ctr")
    if [[ -z $dir ]]; then
        fail_check "the container's memory cgroup exists on the host"
    elif cgroup_v2; then
        check_eq "memory.max is 64 MiB" 67108864 "$(cat "$dir/memory.max")"
    else
        check_eq "memory.limit_in_bytes is 64 MiB ($dir)" 67108864 "$(cat "$dir/memory.limit_in_bytes")"
    fi
    out=$(inspect_json "$ctr")
    check_eq "inspect shows the new memory limit" 67108864 "$(jq -r '.status.resources.linux.memoryLimitInBytes // empty' <<<"$out")"

    check "crictl update --cpu-quota --cpu-period" cri update --cpu-quota 50000 --cpu-period 100000 "$ctr"
    dir=$(container_cgroup cpu "$ctr")
    if [[ -z $dir ]]; then
        fail_check "the container's cpu cgroup exists on the host"
    elif cgroup_v2; then
        check_eq "cpu.max is 50000 100000" "50000 100000" "$(cat "$dir/cpu.max")"
    else
        check_eq "cpu.cfs_quota_us is 50000 ($dir)" 50000 "$(cat "$dir/cpu.cfs_quota_us")"
        check_eq "cpu.cfs_period_us is 100000" 100000 "$(cat "$dir/cpu.cfs_period_us")"
    fi
    out=$(inspect_json "$ctr")
    check_eq "inspect shows the cpu quota" 50000 "$(jq -r '.status.resources.linux.cpuQuota // empty' <<<"$out")"
    check_eq "inspect shows the cpu period" 100000 "$(jq -r '.status.resources.linux.cpuPeriod // empty' <<<"$out")"
    dir=$(container_cgroup memory "$ctr")
    if [[ -n $dir ]] && ! cgroup_v2; then
        check_eq "the memory limit survived the cpu update" 67108864 "$(cat "$dir/memory.limit_in_bytes")"
    fi
    check_eq "the container still runs" CONTAINER_RUNNING "$(ctr_state "$ctr")"
    remove_all_pods
}

scenario_oom() {
    local pod ctr out dir
    pod=$(run_pod oom) || { fail_check "crictl runp oom" "$pod"; return; }
    # The shell holds the whole command substitution in memory: 100 MB against 16 MiB.
    ctr=$(CTR_FILTER='.linux.resources.memory_limit_in_bytes = 16777216' start_ctr "$pod" glutton \
        sh -c 'echo allocating; sleep 1; x=$(head -c 100000000 /dev/zero | tr "\0" a); echo survived ${#x}') ||
        { fail_check "the glutton starts" "$ctr"; return; }
    dir=$(container_cgroup memory "$ctr")
    if [[ -n $dir ]] && ! cgroup_v2; then
        check_eq "the 16 MiB limit is set at creation" 16777216 "$(cat "$dir/memory.limit_in_bytes" 2>&1)"
    fi
    if wait_state "$ctr" CONTAINER_EXITED 30 >/dev/null; then
        out=$(inspect_json "$ctr")
        check_eq "a container over its memory limit is OOMKilled" OOMKilled "$(jq -r .status.reason <<<"$out")"
        check_eq "with exit code 137" 137 "$(jq -r .status.exitCode <<<"$out")"
        check_no_match "it did not survive" '^survived' "$(cri logs "$ctr" 2>&1)"
    else
        fail_check "the glutton exits" "$(ctr_state "$ctr")" "$(cri logs "$ctr" 2>&1 | tail -3)"
    fi
    remove_all_pods
}

scenario_daemon_and_shim_killed() {
    local pod runner exited pid pause exit_code finished before after shim started elapsed
    pod=$(run_pod survivor) || { fail_check "crictl runp survivor" "$pod"; return; }
    # shellcheck disable=SC2016
    runner=$(start_ctr "$pod" runner sh -c 'i=0; while :; do echo "tick $i"; i=$((i+1)); sleep 0.2; done')
    exited=$(start_ctr "$pod" quitter sh -c 'echo bye; exit 5')
    check "the quitter exits" wait_state "$exited" CONTAINER_EXITED 10
    check "the runner ticks" wait_log "$runner" '^tick 2$'
    pid=$(ctr_info_field "$runner" pid)
    pause=$(cri inspectp -o json "$pod" | jq -r '.info | if has("info") then .info else . end |
        if type == "string" then fromjson else . end | .pause_pid // empty')
    exit_code=$(ctr_field "$exited" .status.exitCode)
    finished=$(ctr_field "$exited" .status.finishedAt)

    daemon_kill9
    sleep 1
    if daemon_start; then
        pass_check "berthd starts again after kill -9 on the same root and state"
    else
        fail_check "berthd starts again after kill -9" "$(tail -20 "$DAEMON_LOG")"
        return
    fi
    check_eq "the pod is still ready" SANDBOX_READY "$(pod_state "$pod")"
    check_eq "the runner is still running" CONTAINER_RUNNING "$(ctr_state "$runner")"
    check_eq "with the same pid" "$pid" "$(ctr_info_field "$runner" pid)"
    check "its process is alive" kill -0 "$pid"
    check_eq "exec works in it" hi "$(cri exec -s "$runner" echo hi 2>&1)"
    check_eq "the quitter is still exited" CONTAINER_EXITED "$(ctr_state "$exited")"
    check_eq "with its exit code" "$exit_code" "$(ctr_field "$exited" .status.exitCode)"
    check_eq "and its finish time" "$finished" "$(ctr_field "$exited" .status.finishedAt)"
    before=$(grep -Eo '^tick [0-9]+$' <<<"$(cri logs "$runner" 2>&1)" | tail -1)
    sleep 1
    after=$(grep -Eo '^tick [0-9]+$' <<<"$(cri logs "$runner" 2>&1)" | tail -1)
    if [[ -n $before && ${after#tick } -gt ${before#tick } ]]; then
        pass_check "its logs continue ($before, then $after)"
    else
        fail_check "its logs continue" "before: '$before', after: '$after'"
    fi
    check_eq "the pod is listed once" "$pod" "$(cri pods -q --name survivor)"

    shim=$(pgrep -f "berth-shim --id $pod")
    if [[ ! $shim =~ ^[0-9]+$ ]]; then
        fail_check "one berth-shim serves the pod" "pids: '$shim'"
        remove_all_pods
        return
    fi
    pass_check "one berth-shim serves the pod (pid $shim)"
    kill -9 "$shim"
    # shellcheck disable=SC2034  # read by cri()
    local CRI_COMMAND_TIMEOUT=20 state="" deadline=$((SECONDS + 15))
    started=$(now_ms)
    while ((SECONDS < deadline)); do
        state=$(cri ps -a -o json 2>/dev/null | jq -r --arg id "$runner" '.containers[] | select(.id == $id) | .state')
        [[ $state == CONTAINER_EXITED || $state == CONTAINER_UNKNOWN ]] && break
        sleep 0.5
    done
    elapsed=$(($(now_ms) - started))
    check_match "after its shim is killed the runner shows Exited or Unknown (after $elapsed ms)" \
        '^CONTAINER_(EXITED|UNKNOWN)$' "$state"
    check "crictl ps -a answers" cri ps -a
    check "crictl inspect answers" cri inspect "$runner"
    check "crictl inspectp answers" cri inspectp "$pod"
    started=$(now_ms)
    cri exec -s "$runner" true >/dev/null 2>&1
    check "exec in a container whose shim died returns (fails) without hanging" ms_between 0 19000 $(($(now_ms) - started))
    check "crictl stop answers" cri stop "$runner"
    check "crictl stopp answers" cri stopp "$pod"
    check "crictl rmp answers" cri rmp "$pod"
    check_eq "no shim left" "" "$(shim_pids_of_state)"
    # runc keeps each container's state in a directory named by its id under the
    # handler's root; with the shim gone berthd itself must have deleted them.
    local runc_root="$DAEMON_STATE/runtime/runc" left_in_runc="" id
    for id in "$pod" "$runner" "$exited"; do
        [[ -n $id && -e $runc_root/$id ]] && left_in_runc+="$id "
    done
    check_eq "no runc state is left in $runc_root for the pod and its containers" "" "$left_in_runc"
    check "the pod's pause process (pid $pause) is gone once its pod is removed" pid_gone_within 5 "${pause:-0}"
    check_eq "no process is left in the pod's cgroups" "" "$(pod_cgroup_pids "$pod")"
    kill_pod_leftovers "$pod"
    remove_all_pods
}

# The steps of RunPodSandbox, in the order a pod is made, at which berthd SIGKILLs
# itself when BERTH_TEST_CRASH_AT names one (src/sandbox/intent.rs).
CRASH_POINTS=(intent netns shim rootfs pause-created pause-started cni record)

# pod_cgroup_dirs ID: the pod's cgroup directory in every hierarchy that has one.
pod_cgroup_dirs() {
    local hierarchy
    for hierarchy in /sys/fs/cgroup /sys/fs/cgroup/*; do
        [[ -d $hierarchy/berth/$1 ]] && echo "$hierarchy/berth/$1"
    done
}

# check_half_made_pod_gone LABEL ID: after a restart, nothing of the pod ID a killed
# berthd was making is left.
check_half_made_pod_gone() {
    local label=$1 id=$2
    check_eq "$label: the half-made pod is not listed" "" "$(cri pods -q | grep -F "$id")"
    check_eq "$label: no overlay mount of it" "" "$(overlay_mounts | grep -F "$id")"
    check_eq "$label: no netns mount of it" "" "$(netns_mounts | grep -F "$id")"
    check_eq "$label: no cgroup of it in any hierarchy" "" "$(pod_cgroup_dirs "$id")"
    check_eq "$label: no IPAM allocation of it under /var/lib/cni/networks" "" "$(grep -rlF "$id" /var/lib/cni/networks/ 2>/dev/null)"
    check_eq "$label: no shim of it" "" "$(pgrep -f "berth-shim --id $id")"
    check_eq "$label: no runc state of it" "" "$(ls -d "$DAEMON_STATE/runtime/runc/$id" 2>/dev/null)"
    check_eq "$label: no state directory of it" "" "$(ls -d "$DAEMON_STATE/pods/$id" "$DAEMON_STATE/containers/$id" 2>/dev/null)"
}

# new_pod_dir BEFORE: the pod state directory that was not in the listing BEFORE.
new_pod_dir() {
    comm -13 <(echo "$1") <(ls "$DAEMON_STATE/pods" 2>/dev/null) | head -1
}

scenario_crash_points() {
    local point before id out
    remove_all_pods
    for point in "${CRASH_POINTS[@]}"; do
        before=$(ls "$DAEMON_STATE/pods" 2>/dev/null)
        daemon_stop
        BERTH_TEST_CRASH_AT=$point daemon_start || { fail_check "$point: berthd starts with a crash point" "$(tail -5 "$DAEMON_LOG")"; return; }
        if out=$(CRI_COMMAND_TIMEOUT=60 cri runp "$(pod_config "crash-$point")" 2>&1); then
            fail_check "$point: runp does not complete when berthd dies in it" "$out"
        else
            pass_check "$point: runp does not complete when berthd dies in it"
        fi
        for _ in $(seq 1 50); do
            daemon_running || break
            sleep 0.1
        done
        if daemon_running; then
            fail_check "$point: berthd killed itself at the crash point" "$out"
            continue
        fi
        wait "$DAEMON_PID" 2>/dev/null
        DAEMON_PID=""
        id=$(new_pod_dir "$before")
        check "$point: the half-made pod left its state directory" test -n "$id"
        [[ -n $id ]] || continue
        echo "$id" >>"$WORKDIR/pod-ids"
        daemon_start || { fail_check "$point: berthd starts again after the crash" "$(tail -5 "$DAEMON_LOG")"; return; }
        check_half_made_pod_gone "$point" "$id"
    done
    id=$(run_pod after-crashes) || { fail_check "a pod runs after the crashes" "$id"; return; }
    check_eq "a pod runs after the crashes" SANDBOX_READY "$(pod_state "$id")"
    remove_all_pods
}

# The same with kill -9 from outside, some milliseconds into runp (wherever that lands).
scenario_killed_mid_runp() {
    local delay before id runp
    remove_all_pods
    # The sandbox image is pulled first, so that the kills land in the pod's making.
    id=$(run_pod warm-up) && cri rmp -f "$id" >/dev/null
    for delay in 0.02 0.05 0.1 0.2 0.4; do
        before=$(ls "$DAEMON_STATE/pods" 2>/dev/null)
        cri runp "$(pod_config "killed-$delay")" >/dev/null 2>&1 &
        runp=$!
        sleep "$delay"
        daemon_kill9
        wait "$runp" 2>/dev/null
        id=$(new_pod_dir "$before")
        daemon_start || { fail_check "after ${delay}s: berthd starts again after kill -9" "$(tail -5 "$DAEMON_LOG")"; return; }
        if [[ -z $id ]]; then
            pass_check "after ${delay}s: the kill came before the pod had a state directory"
            continue
        fi
        echo "$id" >>"$WORKDIR/pod-ids"
        if [[ -n $(cri pods -q | grep -F "$id") ]]; then
            pass_check "after ${delay}s: runp had completed before the kill"
            cri rmp -f "$id" >/dev/null
            continue
        fi
        check_half_made_pod_gone "after ${delay}s" "$id"
    done
    remove_all_pods
}

# The stream kubelet's evented PLEG reads (GetContainerEvents): every change of a pod
# sandbox (under its own id) and of its container, in the order they happened.
scenario_events() {
    local events="$WORKDIR/events.json" watcher pod ctr got
    cri events -o json >"$events" 2>/dev/null &
    watcher=$!
    sleep 1
    pod=$(run_pod echo) || { kill "$watcher"; fail_check "crictl runp echo" "$pod"; return; }
    ctr=$(start_ctr "$pod" quick true) || { kill "$watcher"; fail_check "a container starts" "$ctr"; return; }
    wait_state "$ctr" CONTAINER_EXITED 10 >/dev/null
    cri rm "$ctr" >/dev/null
    cri stopp "$pod" >/dev/null
    cri rmp "$pod" >/dev/null
    sleep 1
    kill "$watcher"
    wait "$watcher" 2>/dev/null
    got=$(jq -r '"\(.containerEventType) \(.containerId)"' "$events" 2>/dev/null |
        sed -e "s/ $pod\$/ pod/" -e "s/ $ctr\$/ container/" | paste -sd, -)
    check_eq "crictl events shows each change of the pod and its container, in order" \
        "CONTAINER_CREATED_EVENT pod,CONTAINER_STARTED_EVENT pod,CONTAINER_CREATED_EVENT container,CONTAINER_STARTED_EVENT container,CONTAINER_STOPPED_EVENT container,CONTAINER_DELETED_EVENT container,CONTAINER_STOPPED_EVENT pod,CONTAINER_DELETED_EVENT pod" \
        "$got"
    check_eq "each event carries the pod's status while the pod exists" "$pod" \
        "$(jq -r 'select(.containerEventType == "CONTAINER_STARTED_EVENT") | .podSandboxStatus.id' "$events" | sort -u)"
}

scenario_bad_input() {
    local shims netns overlays snapshots pod stopped out file missing
    remove_all_pods
    shims=$(shim_pids_of_state)
    netns=$(netns_mounts)
    overlays=$(overlay_mounts)
    snapshots=$(snapshot_dirs)

    # Pods of this scenario get a cgroup parent of their own: what a failure leaves in
    # cgroupfs is then told apart from the pods of anyone else on the machine.
    local parent="/berth-pods-test-$$-$RANDOM"
    LEAK_CGROUP_PARENT=$parent
    local in_parent=".linux.cgroup_parent = \"$parent/\" + .metadata.name"
    stopped=$(run_pod stopped "$in_parent") && cri stopp "$stopped" >/dev/null
    check_fails_saying "create in a stopped pod fails naming the pod" "$stopped" -- \
        cri create "$stopped" "$(ctr_config late sleep 1)" "$SPECS/pod-stopped.json"

    pod=$(run_pod bad "$in_parent") || { fail_check "crictl runp bad" "$pod"; return; }
    file=$(CTR_FILTER='.image.image = "docker.io/library/no-such-image:9.9"' ctr_config unknown-image true)
    check_fails_saying "create with an unknown image fails naming it" "no-such-image" -- cri create --no-pull "$pod" "$file" "$SPECS/pod-bad.json"
    check_fails_saying "create (pulling) with an unknown image fails naming it" "no-such-image" -- cri create "$pod" "$file" "$SPECS/pod-bad.json"

    missing=/nonexistent/berth-missing-$$
    file=$(CTR_FILTER=".mounts = [{container_path: \"/data\", host_path: \"$missing\"}]" ctr_config bad-mount true)
    check_fails_saying "a mount with a missing host path fails naming the mount" "$missing" "mount" -- cri create "$pod" "$file" "$SPECS/pod-bad.json"
    check_no_match "the missing host path was not created" . "$(ls -d "$missing" 2>/dev/null)"

    check_fails_saying "runp with runtime handler 'nope' fails naming it" "nope" -- cri runp --runtime nope "$(pod_config handler "$in_parent")"
    check_fails_saying "runp of a config without metadata fails naming metadata" "metadata" -- cri runp "$(pod_config nameless "$in_parent | del(.metadata)")"
    check_fails_saying "create of a container config without metadata fails naming metadata" "metadata" -- cri create "$pod" "$(CTR_FILTER='del(.metadata)' ctr_config nameless true)" "$SPECS/pod-bad.json"

    check_eq "the failures left no container behind" "" "$(cri ps -aq)"
    out=$(cri pods -q | sort)
    check_eq "the failures left no pod behind" "$(printf '%s\n' "$pod" "$stopped" | sort)" "$out"
    cri rmp -f "$pod" "$stopped" >/dev/null 2>&1
    check_eq "no pod left" "" "$(cri pods -q)"
    check_nothing_new "no new berth-shim process" "$shims" "$(shim_pids_of_state)"
    check_nothing_new "no new netns bind mount under the state dir" "$netns" "$(netns_mounts)"
    check_nothing_new "no new overlay mount" "$overlays" "$(overlay_mounts)"
    check_nothing_new "no new snapshot" "$snapshots" "$(snapshot_dirs)"
    # The pods made on purpose are the last scenario's business, not their containers.
    check_eq "the failed calls left no cgroup (under the pods' parent $parent)" "" \
        "$(parent_cgroups "$parent" | grep -Ev "$parent/(bad|stopped)\$")"
}

scenario_nothing_left_behind() {
    local pod
    pod=$(run_pod last) && start_ctr "$pod" last sleep 3600 >/dev/null
    check "crictl rmp -af" cri rmp -af
    check_eq "no pod" "" "$(cri pods -q)"
    check_eq "no container" "" "$(cri ps -aq)"
    check_eq "no berth-shim" "" "$(shim_pids_of_state)"
    check_eq "no netns mount" "" "$(netns_mounts)"
    check_eq "no container rootfs mounted" "" "$(findmnt -rn -o TARGET | grep -F "$DAEMON_STATE/" | grep -v '/pods$')"
    check_eq "no cgroup left of any pod this run made" "" "$(berth_cgroups | grep -F -f "$WORKDIR/pod-ids")"
}

# ---------------------------------------------------------------- main

# pod_scenario NAME FUNCTION: a scenario, skipped when PODS_ONLY (an extended regex over
# function names, for working on a few) does not match it.
pod_scenario() {
    [[ -z ${PODS_ONLY:-} || $2 =~ $PODS_ONLY ]] || return 0
    scenario "$@"
}


echo "$SCENARIO_FILE: daemon $CRI_DAEMON, $("$CRICTL" --version), work dir $WORKDIR"
registry_start
build_test_images >/dev/null
push_test_images
daemon_configure
# remove_pod_cgroups: the (empty) cgroups berthd left of this run's pods, deepest first,
# after the scenarios have counted them.
remove_pod_cgroups() {
    local dir
    remove_run_pod_cgroups
    if [[ -n $LEAK_CGROUP_PARENT ]]; then
        find /sys/fs/cgroup -depth -mindepth 2 -type d -path "*$LEAK_CGROUP_PARENT*" 2>/dev/null |
            while read -r dir; do rmdir "$dir" 2>/dev/null; done
    fi
}

# berth_config_set TABLE KEY VALUE: sets KEY in [TABLE] of berthd's config, whether or
# not lib.sh wrote that table.
berth_config_set() {
    local file="$WORKDIR/berth/config.toml"
    if grep -q "^\[$1\]\$" "$file"; then
        sed -i "/^\[$1\]\$/,/^\[/{/^$2 *=/d}" "$file"
        sed -i "/^\[$1\]\$/a $2 = $3" "$file"
    else
        printf '\n[%s]\n%s = %s\n' "$1" "$2" "$3" >>"$file"
    fi
}

if [[ $CRI_DAEMON == berth ]]; then
    # The default bridge network berthd writes goes to a directory of this run.
    berth_config_set cni conf_dir "\"$WORKDIR/berth/cni\""
    berth_config_set runtime stop_grace_period "$STOP_GRACE_PERIOD"
fi
if [[ $CRI_DAEMON == berth ]]; then
    # The pods' cgroups can only go once berthd has stopped; lib.sh's cleanup then
    # unmounts and removes the rest of the work directory.
    remove_pod_cgroups_then_cleanup() {
        local status=$?
        trap '' INT TERM
        daemon_stop quiet
        remove_pod_cgroups
        (exit "$status")
        cleanup
    }
    trap remove_pod_cgroups_then_cleanup EXIT
fi
daemon_start || die "$CRI_DAEMON did not start; log: $(tail -20 "$DAEMON_LOG")"
cri pull "$BUSYBOX" >/dev/null || die "could not pull $BUSYBOX"

pod_scenario "runp, pods filters, inspectp, stopp, rmp" scenario_pod_lifecycle
pod_scenario "create, start, run, ps filters, inspect" scenario_containers
pod_scenario "command override, exit codes and reasons" scenario_commands_and_exit_codes
pod_scenario "logs: tail, timestamps, since, follow, stderr, CRI format" scenario_logs
pod_scenario "exec -s: output, exit code, timeout" scenario_exec
pod_scenario "stop: SIGTERM trapped, SIGKILL after -t, grace period for -t 0" scenario_stop
pod_scenario "localhost shared in a pod, filesystems not" scenario_shared_network_own_filesystem
pod_scenario "stats and statsp" scenario_stats
pod_scenario "update memory and cpu limits live" scenario_update
pod_scenario "a container over its memory limit is OOMKilled" scenario_oom
pod_scenario "kill -9 of berthd, then of the pod's shim" scenario_daemon_and_shim_killed
pod_scenario "berthd killed at each step of runp: a restart removes what the call made" scenario_crash_points
pod_scenario "kill -9 of berthd some ms into runp: a restart removes what the call made" scenario_killed_mid_runp
pod_scenario "crictl events: the lifecycle stream of pods and containers" scenario_events
pod_scenario "bad input fails cleanly and leaks nothing" scenario_bad_input
pod_scenario "rmp -af leaves nothing behind" scenario_nothing_left_behind
finish
