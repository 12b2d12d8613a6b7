FROM debian:12
# Comments and blank lines between continuation lines are dropped.
RUN apt-get update && \
    # the packages the tests need
    apt-get install -y \

        curl \
    # and nothing else
        ca-certificates
   LABEL org.opencontainers.image.title="berth test" \
         description='multi word' version=1
