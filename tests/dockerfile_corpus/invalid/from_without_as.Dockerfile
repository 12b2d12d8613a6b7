FROM busybox named builder
