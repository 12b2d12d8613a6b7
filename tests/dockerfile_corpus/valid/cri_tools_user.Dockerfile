# The shape of cri-tools' test images (images/image-user): a busybox base and
# a user created from build args.
ARG ARCH=amd64
FROM ${ARCH}/busybox
ARG USER
ARG UID
ARG GROUP
ARG GID
RUN addgroup -g $GID $GROUP && adduser -u $UID -G $GROUP -D $USER
USER ${USER}
