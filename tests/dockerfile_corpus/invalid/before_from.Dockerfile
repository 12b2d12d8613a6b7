# no stage yet
RUN echo hi
FROM busybox
