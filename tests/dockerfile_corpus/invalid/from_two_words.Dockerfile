FROM busybox latest
