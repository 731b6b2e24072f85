# One image for every checkline binary; the command picks which one runs
# (checkline-api, checkline-worker, checkline-token, checkline-loadtest).
#
#   docker build -t checkline .
#   docker run --rm checkline checkline-token --sub admin --role admin

FROM rust:1-bookworm AS build
WORKDIR /src
# Queries checked at compile time use the prepared metadata, not a live database.
ENV SQLX_OFFLINE=true
COPY . .
# The target directory is a build cache, so the binaries are copied out in the
# same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --exclude checkline-e2e --bins \
    && mkdir -p /out \
    && cp target/release/checkline-api target/release/checkline-worker \
          target/release/checkline-token target/release/checkline-loadtest /out/

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin checkline
WORKDIR /app
COPY --from=build /out/ /usr/local/bin/
COPY migrations/ /app/migrations/
USER checkline
ENV CHECKLINE_HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080
CMD ["checkline-api"]
