# Multi-stage build: compile with the full toolchain, run on a slim image.
# One image serves every role (`run`, `migrate`, `topics apply`, `schemas …`):
# docker-compose.yml builds it once as orderflow:local.
FROM rust:1.95-bookworm AS build
# rdkafka's `ssl` feature links the system OpenSSL (found through pkg-config);
# librdkafka and zstd are compiled from source (make, a C compiler: in the
# image). The rust image has most of this already; installed explicitly so a
# change of base image fails here, not halfway through the cargo build.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl-dev pkg-config make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# build.r[s]: a build script, if the package has one (the pattern lets COPY
# succeed without it).
COPY Cargo.toml Cargo.lock build.r[s] ./
COPY src ./src
COPY migrations ./migrations
COPY schemas ./schemas
# Workspace members (Cargo.toml: ".", "bench", "faults", "testkit"): cargo
# reads their manifests; only orderflow is built.
COPY bench ./bench
COPY faults ./faults
COPY testkit ./testkit
COPY topics ./topics
# Shown by the build-info metric; pass --build-arg ORDERFLOW_GIT_SHA=$(git rev-parse HEAD)
# (docker-compose.yml passes $ORDERFLOW_GIT_SHA). .git is not in the build context.
ARG ORDERFLOW_GIT_SHA=unknown
ENV ORDERFLOW_GIT_SHA=${ORDERFLOW_GIT_SHA}
RUN cargo build --release --locked -p orderflow

FROM debian:bookworm-slim
# libssl3: rdkafka's TLS (SASL_SSL/SSL); ca-certificates: brokers' and the
# database's certificates; curl: the compose healthcheck. A numeric user and
# group (10001) so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 orderflow \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin orderflow
COPY --from=build /src/target/release/orderflow /usr/local/bin/orderflow
COPY topics /etc/orderflow/topics
USER 10001:10001
ENV HTTP_ADDR=0.0.0.0:8080 LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["orderflow"]
CMD ["run"]
