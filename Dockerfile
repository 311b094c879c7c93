# Neuropia gateway image: `docker build -t neuropia .`
# The same binary serves (`serve`, the default), migrates (`migrate`) and runs the mock
# upstream (`mock-upstream`). See docs/deployment.md.

# sqlx 0.9 needs rustc 1.94 or later.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY examples ./examples
RUN cargo build --release --locked --bin neuropia \
    && cp target/release/neuropia /usr/local/bin/neuropia

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 neuropia
COPY --from=build /usr/local/bin/neuropia /usr/local/bin/neuropia
USER neuropia
ENV NEUROPIA_BIND=0.0.0.0:3001 \
    RUST_LOG=info
EXPOSE 3001
HEALTHCHECK --interval=5s --timeout=2s --retries=12 \
    CMD curl -fsS http://127.0.0.1:3001/health >/dev/null || exit 1
ENTRYPOINT ["neuropia"]
CMD ["serve"]
