# Multi-stage build: compile with the full toolchain, run on a slim image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY schemas ./schemas
# Workspace members: cargo reads their manifests; only orderflow is built.
COPY bench ./bench
COPY testkit ./testkit
COPY topics ./topics
RUN cargo build --release --locked -p orderflow

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 orderflow
COPY --from=build /src/target/release/orderflow /usr/local/bin/orderflow
COPY topics /etc/orderflow/topics
USER orderflow
ENV HTTP_ADDR=0.0.0.0:8080 LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["orderflow"]
CMD ["run"]
