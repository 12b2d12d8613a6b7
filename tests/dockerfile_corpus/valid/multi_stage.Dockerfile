# syntax=docker/dockerfile:1
ARG GO_VERSION=1.22
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS Build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/.cache/go-build,sharing=locked \
    --mount=type=bind,source=.,target=/src,rw \
    go build -o /out/app .

FROM scratch AS runtime
COPY --from=build --chown=65534:65534 --chmod=0755 --link /out/app /app
COPY --from=0 /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/
COPY --from=busybox:1.36 /bin/busybox /bin/
ENTRYPOINT ["/app"]
