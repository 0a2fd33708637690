# The Python roles: Debian's interpreter and pyzmq, and the btb package.
# BASE is a build argument: debian:bookworm-slim where a registry is reachable, or the image that
# `invoke docker.base` builds offline with debootstrap.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
ARG PACKAGES="python3 python3-zmq"
RUN apt-get update -q && apt-get install -y -q --no-install-recommends $PACKAGES \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*
COPY app/ /opt/btb/
ENV PYTHONPATH=/opt/btb PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["python3", "-m", "btb"]
