FROM busybox
CMD ["a", \
     "b",, "c"]
