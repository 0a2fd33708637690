# One role program that runs by itself (C, Rust, or a self-contained .NET publish), on Debian.
# BASE is a build argument: debian:bookworm-slim where a registry is reachable, or the image that
# `invoke docker.base` builds offline with debootstrap.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
# The shared libraries the program needs, and nothing else (PACKAGES may be empty).
ARG PACKAGES=""
RUN if [ -n "$PACKAGES" ]; then \
      apt-get update -q && apt-get install -y -q --no-install-recommends $PACKAGES \
      && rm -rf /var/lib/apt/lists/* /var/cache/apt/*; \
    fi
COPY app/ /opt/btb/
# .NET without ICU: the roles only need invariant culture.
ENV DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1
ENTRYPOINT ["/opt/btb/btb"]
