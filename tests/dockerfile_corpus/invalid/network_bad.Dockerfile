FROM busybox
RUN --mount=type=cache,target=/c \
    --network=bridge true
