FROM busybox
ADD --from=builder /a /b
