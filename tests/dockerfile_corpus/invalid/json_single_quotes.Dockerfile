FROM busybox
ENTRYPOINT ["echo", 'hi']
