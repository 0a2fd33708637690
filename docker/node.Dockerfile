# A swarm worker node for `invoke swarm.up --workers N` (orchestrator/localswarm.py): a Docker
# engine in a container (Debian's docker.io). BASE is a build argument, as for the role images:
# debian:bookworm-slim where a registry is reachable, or `invoke docker.base`'s offline image.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update -q && apt-get install -y -q --no-install-recommends docker.io iptables \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*
# Its images and containers: a volume, since overlayfs cannot stack on the container's own.
VOLUME /var/lib/docker
ENTRYPOINT ["dockerd"]
