FROM busybox
COPY file
