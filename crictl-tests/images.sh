#!/usr/bin/env bash
# Image scenarios: the CRI ImageService as the real crictl drives it, against a real
# registry reached through mirror configuration.
#
#   sudo crictl-tests/images.sh                       # berthd from target/release
#   sudo CRI_DAEMON=containerd crictl-tests/images.sh # the same scenarios on containerd
# shellcheck source=crictl-tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BUSYBOX=docker.io/library/busybox:latest
BUSYBOX_EXTRA=docker.io/library/busybox-extra:1.0
LARGE=docker.io/library/large:1.0

# image_id REFERENCE -> the image id crictl reports, empty when the image is unknown
image_id() {
    cri inspecti -o json "$1" 2>/dev/null | jq -r '.status.id // empty'
}

pull_ok() {
    check "crictl pull $1" cri pull "$1"
}

remove_all_images() {
    cri rmi -a >/dev/null 2>&1
    local left
    left=$(cri images -q 2>&1)
    [[ -z $left ]] || fail_check "no image left before the scenario" "$left"
}

# every_blob_matches_its_digest: what a crash must never leave behind is a blob whose
# name promises content it does not have. (Files not named by a digest, such as
# downloads in progress, are not blobs yet.)
every_blob_matches_its_digest() {
    local blob bad=()
    [[ -d $CONTENT_BLOBS_DIR ]] || return 0
    for blob in "$CONTENT_BLOBS_DIR"/*; do
        [[ -f $blob && $(basename "$blob") =~ ^[0-9a-f]{64}$ ]] || continue
        if [[ $(sha256sum "$blob" | cut -d' ' -f1) != "$(basename "$blob")" ]]; then
            bad+=("$(basename "$blob") ($(stat -c %s "$blob") bytes)")
        fi
    done
    if ((${#bad[@]})); then
        echo "blobs whose content does not match their name: ${bad[*]}"
        return 1
    fi
}

every_listed_image_is_inspectable() {
    local id broken=()
    for id in $(cri images -q); do
        cri inspecti "$id" >/dev/null 2>&1 || broken+=("$id")
    done
    if ((${#broken[@]})); then
        echo "listed but not inspectable: ${broken[*]}"
        return 1
    fi
}

# restart_daemon DESCRIPTION: starts the daemon in this shell (never inside `check`,
# whose subshell would lose track of it) and records the outcome.
restart_daemon() {
    if daemon_start; then
        pass_check "$1"
    else
        fail_check "$1" "$(tail -20 "$DAEMON_LOG")"
        return 1
    fi
}

scenario_version_and_info() {
    local version info
    version=$(cri version 2>&1)
    check_match "crictl version names the runtime $EXPECTED_RUNTIME_NAME" "^RuntimeName: +$EXPECTED_RUNTIME_NAME\$" "$version"
    check_match "crictl version reports CRI v1" '^RuntimeApiVersion: +v1$' "$version"
    info=$(cri info 2>&1)
    check "crictl info prints JSON" jq -e . <<<"$info"
    # Whether the runtime is ready is the pod scenarios' business; here it must be reported.
    check_match "crictl info reports the RuntimeReady condition" '^(true|false)$' \
        "$(jq -r '.status.conditions[]? | select(.type == "RuntimeReady") | .status' <<<"$info" 2>/dev/null)"
    check_match "crictl info reports the NetworkReady condition" '^(true|false)$' \
        "$(jq -r '.status.conditions[]? | select(.type == "NetworkReady") | .status' <<<"$info" 2>/dev/null)"
}

scenario_pull_by_names() {
    local output id
    remove_all_images
    output=$(cri pull busybox 2>&1)
    check_match "crictl pull busybox reports the image id" '^Image is up to date for sha256:[0-9a-f]{64}$' "$output"
    id=$(image_id "$BUSYBOX")
    check_match "busybox is known as $BUSYBOX" '^sha256:[0-9a-f]{64}$' "$id"
    check_eq "the pull reported that id" "Image is up to date for $id" "$output"
    output=$(cri pull "$BUSYBOX" 2>&1)
    check_eq "crictl pull $BUSYBOX gives the same image" "Image is up to date for $id" "$output"
    check_eq "crictl pull busybox:1.36 (another tag of it) gives the same image" \
        "Image is up to date for $id" "$(cri pull busybox:1.36 2>&1)"
    check_eq "library/busybox:latest is the same image" "$id" "$(image_id library/busybox:latest)"
}

scenario_pull_by_digest() {
    local digest output id
    remove_all_images
    digest=$(manifest_digest library/busybox:latest)
    output=$(cri pull "busybox@$digest" 2>&1)
    check_match "crictl pull busybox@$digest" '^Image is up to date for sha256:' "$output"
    id=$(image_id "docker.io/library/busybox@$digest")
    check_match "the image is inspectable by digest" '^sha256:' "$id"
    check_match "its repoDigests hold docker.io/library/busybox@$digest" "^docker.io/library/busybox@$digest\$" \
        "$(cri inspecti -o json "docker.io/library/busybox@$digest" | jq -r '.status.repoDigests[]')"
    check_match "crictl images --digests shows the digest" "^docker.io/library/busybox +.* ${digest:7:13}" \
        "$(cri images --digests)"
    pull_ok "$BUSYBOX"
    check_eq "pulling the tag afterwards gives the same image" "$id" "$(image_id "$BUSYBOX")"
}

scenario_pull_through_other_mirrors() {
    pull_ok registry.k8s.io/pause:3.10
    check_match "registry.k8s.io/pause:3.10 is listed" '^registry.k8s.io/pause +3.10 ' "$(cri images)"
    pull_ok gcr.io/berth-test/busybox:latest
    check_match "gcr.io/berth-test/busybox:latest is listed" '^gcr.io/berth-test/busybox +latest ' "$(cri images)"
}

scenario_pull_from_registry_by_address() {
    local direct="$REGISTRY_ADDR/library/busybox-extra:1.0"
    pull_ok "$direct"
    check_match "$direct is listed under that name" "^$REGISTRY_ADDR/library/busybox-extra +1.0 " "$(cri images)"
    pull_ok "$BUSYBOX_EXTRA"
    check_eq "it is the image $BUSYBOX_EXTRA names" "$(image_id "$BUSYBOX_EXTRA")" "$(image_id "$direct")"
    pull_fails_naming "$REGISTRY_ADDR/library/busybox:no-such-tag" no-such-tag
    check "crictl rmi $direct" cri rmi "$direct"
}

scenario_list_images() {
    local table quiet digests json id
    pull_ok busybox
    pull_ok "$BUSYBOX_EXTRA"
    id=$(image_id "$BUSYBOX")
    table=$(cri images 2>&1)
    check_match "crictl images has its header" '^IMAGE +TAG +IMAGE ID +SIZE$' "$table"
    check_match "crictl images shows docker.io/library/busybox latest" "^docker.io/library/busybox +latest +${id:7:13} " "$table"
    check_match "crictl images shows docker.io/library/busybox-extra 1.0" '^docker.io/library/busybox-extra +1.0 ' "$table"
    quiet=$(cri images -q 2>&1)
    check_eq "crictl images -q prints only image ids" "" "$(grep -Ev '^sha256:[0-9a-f]{64}$' <<<"$quiet")"
    check_match "crictl images -q lists busybox's id" "^$id\$" "$quiet"
    digests=$(cri images --digests 2>&1)
    check_match "crictl images --digests has a DIGEST column" '^IMAGE +TAG +DIGEST +IMAGE ID +SIZE$' "$digests"
    json=$(cri images -o json 2>&1)
    check_eq "crictl images -o json gives busybox's repoTags" "docker.io/library/busybox:latest" \
        "$(jq -r --arg id "$id" '.images[] | select(.id == $id) | .repoTags[]' <<<"$json" | grep -x "$BUSYBOX")"
}

scenario_inspect_image() {
    local json id
    pull_ok busybox
    json=$(cri inspecti busybox 2>&1)
    check "crictl inspecti busybox prints JSON" jq -e . <<<"$json"
    check_match ".status.repoTags holds $BUSYBOX" "^$BUSYBOX\$" "$(jq -r '.status.repoTags[]?' <<<"$json" 2>/dev/null)"
    check_match ".status.size is a positive number of bytes" '^[1-9][0-9]*$' "$(jq -r '.status.size' <<<"$json" 2>/dev/null)"
    id=$(jq -r '.status.id' <<<"$json" 2>/dev/null)
    check_match ".status.id is the id crictl images -q lists" "^$id\$" "$(cri images -q)"
    check_eq ".info is a non-empty object" "true" \
        "$(jq -r '(.info | type == "object") and (.info | length > 0)' <<<"$json" 2>/dev/null)"
    check "crictl inspecti by image id" cri inspecti "$id"
    check_fails "crictl inspecti of an image never pulled fails" cri inspecti docker.io/library/never-pulled:1.0
}

scenario_image_fs_info() {
    local json
    pull_ok busybox
    json=$(cri imagefsinfo 2>&1)
    check "crictl imagefsinfo prints JSON" jq -e . <<<"$json"
    check_match "the image filesystem has a mountpoint" '^/' \
        "$(jq -r '.status.imageFilesystems[0].fsId.mountpoint' <<<"$json" 2>/dev/null)"
    # containerd refreshes usage periodically, so a fresh pull may still count 0.
    check_match "the image filesystem reports used bytes" '^[0-9]+$' \
        "$(jq -r '.status.imageFilesystems[0].usedBytes.value' <<<"$json" 2>/dev/null)"
    check_match "and used inodes" '^[0-9]+$' \
        "$(jq -r '.status.imageFilesystems[0].inodesUsed.value' <<<"$json" 2>/dev/null)"
}

scenario_remove_by_tag() {
    pull_ok "$BUSYBOX_EXTRA"
    check "crictl rmi $BUSYBOX_EXTRA" cri rmi "$BUSYBOX_EXTRA"
    check_no_match "busybox-extra is no longer listed" 'busybox-extra' "$(cri images)"
    check_fails "busybox-extra is no longer inspectable" cri inspecti "$BUSYBOX_EXTRA"
}

scenario_remove_by_id() {
    local id
    pull_ok busybox
    id=$(image_id busybox)
    check "crictl rmi <image id>" cri rmi "$id"
    check_no_match "the id is no longer listed" "^$id\$" "$(cri images -q)"
    check_fails "busybox is no longer inspectable" cri inspecti busybox
}

scenario_remove_keeps_shared_layers() {
    local base_layer
    base_layer=$(layer_digests library/busybox:latest | head -1)
    check_eq "busybox-extra is built on busybox's layer" "$base_layer" \
        "$(layer_digests library/busybox-extra:1.0 | head -1)"
    pull_ok busybox
    pull_ok "$BUSYBOX_EXTRA"
    check "crictl rmi busybox" cri rmi "$BUSYBOX"
    check "busybox-extra stays inspectable" cri inspecti "$BUSYBOX_EXTRA"
    check_match "busybox-extra stays listed" '^docker.io/library/busybox-extra +1.0 ' "$(cri images)"
    check "the shared layer's blob stays in the content store" test -f "$CONTENT_BLOBS_DIR/${base_layer#sha256:}"
    pull_ok busybox
}

scenario_remove_all() {
    pull_ok busybox
    pull_ok "$BUSYBOX_EXTRA"
    pull_ok registry.k8s.io/pause:3.10
    check "crictl rmi -a" cri rmi -a
    check_eq "crictl images -q lists nothing" "" "$(cri images -q 2>&1)"
}

# pull_fails_naming REFERENCE TEXT: the pull must exit non-zero with a message that
# contains TEXT.
pull_fails_naming() {
    local output status
    output=$(cri pull "$1" 2>&1)
    status=$?
    if ((status == 0)); then
        fail_check "pull of '$1' fails" "it succeeded: $output"
    elif ! grep -qF -- "$2" <<<"$output"; then
        fail_check "pull of '$1' fails with a message naming '$2'" "exit $status: $output"
    else
        pass_check "pull of '$1' fails with a message naming '$2'"
    fi
}

scenario_unknown_image() {
    pull_fails_naming docker.io/library/does-not-exist:1.0 does-not-exist
    pull_fails_naming busybox:no-such-tag no-such-tag
    check_no_match "nothing was stored for them" 'does-not-exist|no-such-tag' "$(cri images)"
}

scenario_malformed_reference() {
    local reference
    for reference in 'docker.io/library/Busy_Box:latest' 'busybox@sha256:123' 'busybox:tag:extra' 'bad..host/x'; do
        pull_fails_naming "$reference" "$reference"
    done
}

scenario_concurrent_pulls() {
    local pids=() pid failures=0
    remove_all_images
    for _ in 1 2 3; do
        cri pull "$BUSYBOX_EXTRA" >/dev/null 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || failures=$((failures + 1))
    done
    check_eq "three concurrent pulls of the same image all succeed" 0 "$failures"
    check_eq "the image is listed once" 1 "$(cri images | grep -c '^docker.io/library/busybox-extra ')"
    check "every blob matches its digest" every_blob_matches_its_digest
}

scenario_kill_during_pull() {
    local layout="$BERTH_IMAGE_CACHE/large" pull_pid before grew=0 expected_size
    random_layers_image "$layout" large 3 64 >/dev/null
    push "$layout:large" library/large:1.0
    pull_ok busybox
    before=$(du -sb "$DAEMON_ROOT" | cut -f1)
    cri pull "$LARGE" >/dev/null 2>&1 &
    pull_pid=$!
    # Kill once a few MB have arrived, which is well inside a 192 MiB pull.
    for _ in $(seq 1 400); do
        if (($(du -sb "$DAEMON_ROOT" 2>/dev/null | cut -f1) - before > 8 * 1024 * 1024)); then
            grew=1
            break
        fi
        kill -0 "$pull_pid" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$pull_pid" 2>/dev/null; then
        log "killing $CRI_DAEMON with SIGKILL during the pull (data arrived: $grew)"
    else
        log "the pull ended before the kill; restart consistency is still checked"
    fi
    daemon_kill9
    wait "$pull_pid" 2>/dev/null
    restart_daemon "$CRI_DAEMON starts again after SIGKILL" || return
    check "every listed image is inspectable" every_listed_image_is_inspectable
    check "busybox, pulled before the kill, is still there" cri inspecti "$BUSYBOX"
    check "every blob matches its digest" every_blob_matches_its_digest
    pull_ok "$LARGE"
    expected_size=$(compressed_size library/large:1.0)
    check_match "the large image is inspectable and has a size" '^[1-9][0-9]*$' \
        "$(cri inspecti -o json "$LARGE" | jq -r '.status.size')"
    check "every blob matches its digest after the second pull" every_blob_matches_its_digest
    log "large image: $((expected_size / 1024 / 1024)) MiB compressed"
    check "crictl rmi $LARGE" cri rmi "$LARGE"
}

scenario_sigterm() {
    local status
    pull_ok busybox
    daemon_stop
    status=$?
    check_eq "$CRI_DAEMON exits 0 on SIGTERM" 0 "$status"
    check_fails "the socket is removed" test -e "$CRI_SOCKET"
    restart_daemon "$CRI_DAEMON starts again on the same root" || return
    check "busybox survives the restart" cri inspecti "$BUSYBOX"
    check_match "and is listed" '^docker.io/library/busybox +latest ' "$(cri images)"
}

setup_registry_and_daemon
scenario "crictl version and info" scenario_version_and_info
scenario "pull by short and full name" scenario_pull_by_names
scenario "pull by digest" scenario_pull_by_digest
scenario "pull through the registry.k8s.io and gcr.io mirrors" scenario_pull_through_other_mirrors
scenario "pull from a registry named by its address" scenario_pull_from_registry_by_address
scenario "list images (table, -q, --digests, json)" scenario_list_images
scenario "inspect an image" scenario_inspect_image
scenario "image filesystem info" scenario_image_fs_info
scenario "remove by tag" scenario_remove_by_tag
scenario "remove by image id" scenario_remove_by_id
scenario "remove keeps layers shared with other images" scenario_remove_keeps_shared_layers
scenario "remove all images" scenario_remove_all
scenario "pull of an unknown image fails" scenario_unknown_image
scenario "pull of a malformed reference fails" scenario_malformed_reference
scenario "concurrent pulls of the same image" scenario_concurrent_pulls
scenario "SIGKILL during a pull, then restart" scenario_kill_during_pull
scenario "SIGTERM stops cleanly and removes the socket" scenario_sigterm
finish
