#syntax = docker/dockerfile:1.7
#  escape = \
#check=skip=all
# A directive after this comment line is just a comment:
# escape=`
from alpine:3.19 as base
MAINTAINER someone@example.com
ENV LEGACY value with spaces
ENV A=1 B="two words" C=$A
ARG X Y=2 Z="${Y:-3}"
LABEL "com.example.vendor"="ACME" version=1.0
EXPOSE 80 443/udp ${PORT}
WORKDIR /app/$X
USER nobody:nogroup
VOLUME ["/data", "/logs"]
VOLUME /cache /tmp/x
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://example.com/file.tar.gz /opt/
ADD --chown=app --link rootfs.tar.xz /
COPY --chmod=644 *.conf [ab]?.txt /etc/
RUN --network=none --mount=type=tmpfs,target=/scratch,size=64m echo offline
RUN ["/bin/sh", "-c", "echo exec form"]
RUN [ -f /etc/os-release ] && echo shell test
CMD echo "default"
ENTRYPOINT []
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=1m30s --timeout=500ms --start-period=2s --start-interval=0 --retries=3 CMD ["wget", "-q", "localhost"]
SHELL ["/bin/ash", "-eo", "pipefail", "-c"]
ONBUILD COPY . /app/src
ONBUILD RUN make
FROM base
HEALTHCHECK NONE
