# syntax=docker/dockerfile:1
# One image for every target: `agora serve --target <name>`.
#
#   docker build -t agora .
#   docker run --rm agora targets
#
# Dependencies are compiled in their own layer (cargo-chef), so a change to
# Agora's code rebuilds only Agora. The runtime is distroless (glibc, no
# shell, no package manager) and runs as the non-root user 65532.

FROM rust:1-bookworm AS chef
# cmake and clang build aws-lc (rustls' crypto provider) on every platform.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/* \
 && cargo install --locked cargo-chef@0.1.73
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin agora
COPY . .
ARG AGORA_GIT_COMMIT=unknown
ENV AGORA_GIT_COMMIT=${AGORA_GIT_COMMIT}
RUN cargo build --release --locked --bin agora \
 && install -D target/release/agora /out/agora

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/agora /usr/local/bin/agora
USER 65532:65532
# edge, users, catalog, chat, analytics, admin (metrics and probes)
EXPOSE 3000 3001 3002 3003 8000 9090
ENTRYPOINT ["/usr/local/bin/agora"]
CMD ["serve"]
