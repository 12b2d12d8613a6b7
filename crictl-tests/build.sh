#!/usr/bin/env bash
# Builder scenarios: `berth build` against berthd's builder service on the CRI
# socket, the result seen by the real crictl.
#
#   sudo crictl-tests/build.sh        # berthd and berth from target/release
# shellcheck source=crictl-tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BERTH=${BERTH:-$(dirname "$BERTHD")/berth}

berth() {
    "$BERTH" --socket "$CRI_SOCKET" "$@"
}

lesson_build_cache_and_images() {
    local dir="$WORKDIR/lesson" out
    mkdir -p "$dir"
    cat >"$dir/Dockerfile" <<'D'
FROM busybox
RUN echo "installing..." && mkdir -p /data && echo 5 > /data/mynumber
CMD ["sh", "-c", "cat /data/mynumber; sleep 3600"]
D
    out=$(berth build "$dir" 2>&1)
    check_match "first build prints each step" 'Step 2/3 : RUN echo "installing..."' "$out"
    check_match "RUN output is streamed" '^installing\.\.\.$' "$out"
    check_match "first build ends with its id" '^Successfully built [0-9a-f]{12}$' "$out"
    out=$(berth build -t me/redis:latest "$dir" 2>&1)
    check_match "rebuild uses the cache" 'Using cache' "$out"
    check_match "rebuild is tagged" '^Successfully tagged me/redis:latest$' "$out"
    check_match "crictl images shows the tag" 'me/redis +latest' "$(cri images 2>&1)"
}

setup_registry_and_daemon
scenario "the lesson: build, cached rebuild, crictl images" lesson_build_cache_and_images
finish
