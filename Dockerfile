# The server, and the PostgreSQL server binaries its embedded default runs, in one image:
#
#   docker build -t triggers .
#   docker run --init -p 8090:8090 -v triggers-data:/var/lib/triggers --stop-timeout 40 triggers
#
# The data directory (the embedded cluster) lives on the volume; the server runs as the
# unprivileged `triggers` account, and so does its PostgreSQL. Docker's default seccomp profile
# refuses io_uring: the server then runs on epoll and says so at start-up (README, Container).
# tests/container-layout.sh checks this layout on the host (user, paths, health check, stop).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p triggers \
 && strip target/release/triggers

FROM debian:bookworm-slim
# PostgreSQL's server binaries without the distribution's own cluster (the server makes its
# own in the data directory), and curl for the health check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-common \
 && sed -ri 's/#?create_main_cluster = .*/create_main_cluster = false/' \
        /etc/postgresql-common/createcluster.conf \
 && apt-get install -y --no-install-recommends postgresql-15 curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --home-dir /var/lib/triggers --create-home --shell /usr/sbin/nologin triggers
COPY --from=build /src/target/release/triggers /usr/local/bin/triggers
USER triggers
WORKDIR /var/lib/triggers
VOLUME /var/lib/triggers
ENV TRIGGERS_DATA_DIR=/var/lib/triggers/data \
    TRIGGERS_LISTEN=0.0.0.0:8090
EXPOSE 8090
# Live: the process serves and its PostgreSQL has not been lost (docs/api.md, /health/live).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8090/health/live || exit 1
# SIGTERM is the graceful stop (the rings committed, the cluster stopped): allow it the
# shutdown budget (30 s by default) with `--stop-timeout 40` or `docker stop -t 40`.
STOPSIGNAL SIGTERM
CMD ["triggers", "serve"]
