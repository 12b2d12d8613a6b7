FROM busybox AS one
FROM alpine AS One
