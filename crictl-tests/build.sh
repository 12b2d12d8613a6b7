#!/usr/bin/env bash
# Builder scenarios: `berth build`, `commit`, `push` against berthd's builder
# service on the CRI socket, the results run and seen by the real crictl.
#
#   sudo crictl-tests/build.sh        # berthd and berth from target/release
# shellcheck source=crictl-tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ $CRI_DAEMON != berth ]]; then
    echo "build.sh: the builder is berthd's own; nothing to run against $CRI_DAEMON"
    exit 0
fi
BERTH=${BERTH:-$(dirname "$BERTHD")/berth}
SPECS="$WORKDIR/specs"
POD_LOGS="$WORKDIR/pod-logs"
mkdir -p "$SPECS" "$POD_LOGS"

berth() {
    timeout 300 "$BERTH" --socket "$CRI_SOCKET" "$@"
}

# context NAME: a fresh build context directory; prints its path.
context() {
    local dir="$WORKDIR/contexts/$1"
    rm -rf "$dir"
    mkdir -p "$dir"
    echo "$dir"
}

# run_image NAME IMAGE [COMMAND...]: crictl run of IMAGE (its own command when
# none is given) in a pod of its own; waits for the container to exit, or up to
# 10 s for a long-running one, and prints its log.
run_image() {
    local name=$1 image=$2 command="[]" word ctr pod i
    shift 2
    for word in "$@"; do
        command=$(jq -c --arg word "$word" '. + [$word]' <<<"$command")
    done
    jq -n --arg name "$name" --arg logs "$POD_LOGS/$name" '{
        metadata: {name: $name, namespace: "build", uid: ("uid-" + $name), attempt: 0},
        log_directory: $logs, linux: {}
    }' >"$SPECS/pod-$name.json"
    jq -n --arg name "$name" --arg image "$image" --argjson command "$command" '{
        metadata: {name: $name}, image: {image: $image}, command: $command,
        log_path: ($name + ".log"), linux: {}
    }' >"$SPECS/ctr-$name.json"
    # Built images exist only here: no registry holds them.
    ctr=$(cri run --no-pull "$SPECS/ctr-$name.json" "$SPECS/pod-$name.json" 2> >(grep -v 'cgroup_parent is not set' >&2)) || {
        # crictl run makes the pod before the container; a failure leaves it.
        cri rmp -f "$(cri pods -q --name "$name")" >/dev/null 2>&1
        return 1
    }
    ctr=$(tail -1 <<<"$ctr")
    for ((i = 0; i < 50; i++)); do
        [[ $(cri inspect -o json "$ctr" | jq -r .status.state) == CONTAINER_EXITED ]] && break
        [[ -s $POD_LOGS/$name/$name.log ]] && ((i > 10)) && break
        sleep 0.2
    done
    cri logs "$ctr" 2>&1
    pod=$(cri pods -q --name "$name")
    cri rmp -f "$pod" >/dev/null 2>&1
}

# nothing_left_behind: no build container, mount, state directory or cgroup.
nothing_left_behind() {
    check_eq "no build mount is left" "" "$(findmnt -rn -o TARGET | grep -F "$DAEMON_STATE/builds" || true)"
    check_eq "no build state is left" "" "$(ls -A "$DAEMON_STATE/builds" 2>/dev/null)"
    check_eq "no build cgroup is left" "" "$(find /sys/fs/cgroup -maxdepth 3 -name 'build-*' -path '*berth*' 2>/dev/null)"
}

scenario_lesson() {
    local dir out first
    dir=$(context lesson)
    cat >"$dir/Dockerfile" <<'D'
FROM busybox
RUN echo "installing..." && mkdir -p /data && echo 5 > /data/mynumber
CMD ["sh", "-c", "cat /data/mynumber; sleep 3600"]
D
    out=$(berth build "$dir" 2>&1)
    check_match "first build prints each step" 'Step 2/3 : RUN echo "installing..."' "$out"
    check_match "RUN output is streamed" '^installing\.\.\.$' "$out"
    check_match "first build ends with its id" '^Successfully built [0-9a-f]{12}$' "$out"
    first=$(grep -Eo '[0-9a-f]{12}$' <<<"$out" | tail -1)
    out=$(berth build -t me/redis:latest "$dir" 2>&1)
    check_eq "every step after FROM is cached" 2 "$(grep -c ' ---> Using cache' <<<"$out")"
    check_no_match "nothing runs on the cached rebuild" '^installing' "$out"
    check_match "the cached rebuild gives the same image" "^Successfully built $first\$" "$out"
    check_match "the rebuild is tagged" '^Successfully tagged me/redis:latest$' "$out"
    check_match "crictl images shows the tag" 'me/redis +latest' "$(cri images 2>&1)"
    check_match "crictl run runs CMD" '^5$' "$(run_image lesson me/redis:latest)"
    check_match "crictl runs it by id prefix too" '^5$' "$(run_image lesson-id "$first")"
    nothing_left_behind
}

# The shape of cri-tools' test images (images/image-user): a user made in RUN
# with build args, then USER. Debian's busybox-static has no adduser applet, so
# the RUN writes the account files itself.
scenario_user_image() {
    local dir out
    dir=$(context user)
    cat >"$dir/Dockerfile" <<'D'
FROM busybox
ARG USER=www-data
ARG UID=1234
ARG GROUP=www-data
ARG GID=5678
RUN echo "$GROUP:x:$GID:" >> /etc/group && \
    echo "$USER:x:$UID:$GID::/home/$USER:/bin/sh" >> /etc/passwd && \
    mkdir -p /home/$USER && chown $UID:$GID /home/$USER
USER ${USER}
D
    out=$(berth build -t me/user:1 --build-arg UID=1001 "$dir" 2>&1)
    check_match "the user image builds" '^Successfully tagged me/user:1$' "$out"
    check_match "the image runs as its user" '^uid=1001\(www-data\) gid=5678\(www-data\)' "$(run_image user me/user:1 id)"
}

scenario_multi_stage() {
    local dir out
    dir=$(context multi)
    cat >"$dir/Dockerfile" <<'D'
FROM busybox AS builder
RUN mkdir /out && echo "made in the builder" > /out/artifact
FROM busybox AS unused
RUN echo "this stage is not needed" && exit 1
FROM busybox
COPY --from=builder /out/artifact /artifact
CMD ["cat", "/artifact"]
D
    out=$(berth build -t me/multi:1 "$dir" 2>&1)
    check_match "the multi-stage build succeeds" '^Successfully tagged me/multi:1$' "$out"
    check_no_match "a stage the target does not need is skipped" 'not needed' "$out"
    check_match "COPY --from brought the builder's file" '^made in the builder$' "$(run_image multi me/multi:1)"
    out=$(berth build --target builder -t me/multi:builder "$dir" 2>&1)
    check_match "--target builds that stage" '^Successfully tagged me/multi:builder$' "$out"
    cat >"$dir/Dockerfile.scratch" <<'D'
FROM busybox AS tools
FROM scratch
COPY --from=tools /bin/busybox /busybox
CMD ["/busybox", "echo", "hello from scratch"]
D
    out=$(berth build -f "$dir/Dockerfile.scratch" -t me/scratch:1 "$dir" 2>&1)
    check_match "FROM scratch with -f builds" '^Successfully tagged me/scratch:1$' "$out"
    check_match "the scratch image runs" '^hello from scratch$' "$(run_image scratch me/scratch:1)"
}

# cached_steps OUTPUT: which steps (by number) were cached.
cached_steps() {
    awk '/^Step [0-9]+\// { split($2, n, "/"); step = n[1] } / ---> Using cache/ { printf "%s ", step }' <<<"$1" | sed 's/ $//'
}

scenario_cache_table() {
    local dir out
    dir=$(context cache)
    echo one >"$dir/file"
    cat >"$dir/Dockerfile" <<'D'
FROM busybox
ARG FLAVOUR=plain
RUN echo "first $FLAVOUR" > /first
COPY file /file
RUN echo second > /second
D
    berth build "$dir" >/dev/null 2>&1
    out=$(berth build "$dir" 2>&1)
    check_eq "unchanged: every step cached" "2 3 4 5" "$(cached_steps "$out")"
    sed -i 's/echo second/echo SECOND/' "$dir/Dockerfile"
    out=$(berth build "$dir" 2>&1)
    check_eq "a changed last RUN: the steps before it cached" "2 3 4" "$(cached_steps "$out")"
    echo two >"$dir/file"
    out=$(berth build "$dir" 2>&1)
    check_eq "a changed COPY source: it and what follows run" "2 3" "$(cached_steps "$out")"
    touch -d '2001-01-01' "$dir/file"
    out=$(berth build "$dir" 2>&1)
    check_eq "a touched COPY source (same content): all cached" "2 3 4 5" "$(cached_steps "$out")"
    out=$(berth build --build-arg FLAVOUR=spicy "$dir" 2>&1)
    check_eq "a changed build arg: the RUN using it and what follows run" "2" "$(cached_steps "$out")"
    cat >"$dir/Dockerfile" <<'D'
FROM busybox
ARG FLAVOUR=plain
COPY file /file
RUN echo "first $FLAVOUR" > /first
RUN echo SECOND > /second
D
    out=$(berth build "$dir" 2>&1)
    check_eq "two steps swapped: nothing after the swap is cached" "2" "$(cached_steps "$out")"
    out=$(berth build --no-cache "$dir" 2>&1)
    check_eq "--no-cache: nothing cached" "" "$(cached_steps "$out")"
}

scenario_dockerignore() {
    local dir out
    dir=$(context ignore)
    mkdir -p "$dir/logs" "$dir/src"
    echo secret >"$dir/secret.txt"
    echo log >"$dir/logs/a.log"
    echo keep >"$dir/logs/keep.log"
    echo code >"$dir/src/main.c"
    printf '%s\n' secret.txt 'logs/*' '!logs/keep.log' >"$dir/.dockerignore"
    cat >"$dir/Dockerfile" <<'D'
FROM busybox
COPY . /ctx/
RUN find /ctx -type f | sort
D
    out=$(berth build "$dir" 2>&1)
    check_match "included files arrive" '^/ctx/src/main\.c$' "$out"
    check_match "an exception puts a file back" '^/ctx/logs/keep\.log$' "$out"
    check_no_match "an ignored file is not sent" 'secret\.txt' "$out"
    check_no_match "an ignored pattern's files are not sent" 'a\.log' "$out"
}

scenario_failing_run() {
    local dir out status images_before
    dir=$(context failing)
    cat >"$dir/Dockerfile" <<'D'
FROM busybox
RUN echo "a step that works" > /works
RUN echo "about to fail" && exit 7
D
    images_before=$(cri images -q | sort)
    out=$(berth build -t me/failing:1 "$dir" 2>&1)
    status=$?
    check_eq "berth build exits with the RUN's code" 7 "$status"
    check_match "the failing RUN's output is shown" '^about to fail$' "$out"
    check_match "the error names the command and code" "returned a non-zero code: 7" "$out"
    check_eq "no image is left behind" "$images_before" "$(cri images -q | sort)"
    nothing_left_behind
    out=$(berth build -t me/failing:1 "$dir" 2>&1)
    check_eq "the steps before the failure stay cached" "2" "$(cached_steps "$out")"
}

scenario_commit() {
    local pod ctr out id
    jq -n '{metadata: {name: "committer", namespace: "build", uid: "uid-committer", attempt: 0}, linux: {}}' >"$SPECS/pod-committer.json"
    jq -n '{metadata: {name: "writer"}, image: {image: "busybox"},
            command: ["sh", "-c", "echo committed content > /hello; sleep 3600"], linux: {}}' >"$SPECS/ctr-writer.json"
    ctr=$(cri run "$SPECS/ctr-writer.json" "$SPECS/pod-committer.json" 2>/dev/null | tail -1)
    for _ in {1..25}; do
        cri exec "$ctr" test -f /hello 2>/dev/null && break
        sleep 0.2
    done
    out=$(berth commit -c 'CMD ["cat", "/hello"]' -m "a test commit" "$ctr" me/committed:1 2>&1)
    check_match "berth commit prints the new image id" '^sha256:[0-9a-f]{64}$' "$out"
    id=$out
    pod=$(cri pods -q --name committer)
    cri rmp -f "$pod" >/dev/null 2>&1
    check_match "crictl images shows the committed image" 'me/committed +1' "$(cri images 2>&1)"
    check_match "the committed image shows the change when run" '^committed content$' "$(run_image committed me/committed:1)"
    check_match "history shows the commit message" 'a test commit' "$(berth history "$id" 2>&1)"
}

scenario_push_pull() {
    local dir out target="$REGISTRY_ADDR/me/pushed:1"
    dir=$(context push)
    cat >"$dir/Dockerfile" <<'D'
FROM busybox
RUN echo pushed > /marker
CMD ["cat", "/marker"]
D
    out=$(berth build -t "$target" "$dir" 2>&1)
    check_match "the image to push builds" "Successfully tagged $target" "$out"
    check_match "berth push reports the digest" "digest: sha256:[0-9a-f]{64}" "$(berth push "$target" 2>&1)"
    check "berth rmi removes it" berth rmi "$target"
    check_no_match "it is gone" "me/pushed" "$(cri images 2>&1)"
    check "crictl pull gets it back from the registry" cri pull "$target"
    check_match "the pulled image runs" '^pushed$' "$(run_image pushed "$target")"
}

scenario_save_load() {
    local out archive="$WORKDIR/saved.tar"
    check "berth save writes an archive" berth save -o "$archive" me/redis:latest
    check "berth rmi" berth rmi me/redis:latest
    out=$(berth load -i "$archive" 2>&1)
    check_match "berth load names the image" 'me/redis:latest' "$out"
    check_match "the loaded image runs" '^5$' "$(run_image loaded me/redis:latest)"
    check "builder prune" berth builder prune
}

setup_registry_and_daemon
scenario "the lesson: build, cached rebuild, crictl images and run" scenario_lesson
scenario "cri-tools' user image shape runs as its user" scenario_user_image
scenario "multi-stage with COPY --from, --target, FROM scratch" scenario_multi_stage
scenario "cache hits and misses over edits" scenario_cache_table
scenario ".dockerignore" scenario_dockerignore
scenario "a failing RUN" scenario_failing_run
scenario "commit of a container, then crictl run" scenario_commit
scenario "push, rmi, pull back" scenario_push_pull
scenario "save and load" scenario_save_load
finish
