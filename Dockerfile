# syntax=docker/dockerfile:1
#
# s3cse container image: the Rust binary (AWS-LC and SQLite compiled in, glibc linked) on
# distroless.
#   docker build -t s3cse:dev .
#   docker run --rm s3cse:dev help rekey
#
# Builder: the full rust image (Debian bookworm, so the binary's glibc matches the runtime's
# debian12). It already has gcc/g++ and make, which is all aws-lc-sys (via aws-lc-rs, rustls'
# crypto) and libsqlite3-sys (sqlx "sqlite", bundled SQLite) need: both compile C with the `cc`
# crate. cmake is added because aws-lc-sys falls back to its CMake build when the cc build
# can't be used (other targets, no-asm/FIPS builds); clang/libclang would only be needed for
# bindgen on targets without pre-generated bindings, which x86_64 and aarch64 Linux have.
FROM rust:1.95-bookworm AS builder

RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*

# AWS_LC_SYS_USE_SYSTEM=0: build AWS-LC from the crate's sources and link it statically, never
# a system install. SQLX_OFFLINE: sqlx's query! macros read the committed .sqlx/ metadata (if the
# crate uses them) instead of a live database.
ENV AWS_LC_SYS_USE_SYSTEM=0 \
    SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never

WORKDIR /src
# The whole context (see .dockerignore): Cargo.toml/lock, src/, migrations/ (embedded by
# sqlx::migrate!), .sqlx/, benches/ (declared in Cargo.toml, so they must exist), build.rs if any.
COPY . .

# Cache mounts keep the registry and target dir between builds without putting them in a layer;
# the binary is copied out of the cached target dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin s3cse \
 && install -D -m 0755 target/release/s3cse /out/usr/local/bin/s3cse \
 && install -d -m 0750 /out/var/lib/s3cse \
 && install -d /out/usr/share/bash-completion/completions /out/usr/share/zsh/vendor-completions \
      /out/usr/share/fish/vendor_completions.d /out/usr/share/man/man1 \
 && target/release/s3cse completions bash > /out/usr/share/bash-completion/completions/s3cse \
 && target/release/s3cse completions zsh > /out/usr/share/zsh/vendor-completions/_s3cse \
 && target/release/s3cse completions fish > /out/usr/share/fish/vendor_completions.d/s3cse.fish \
 && target/release/s3cse man | gzip -9n > /out/usr/share/man/man1/s3cse.1.gz

# Runtime: distroless cc (glibc, libgcc, CA certificates, tzdata; no shell, no package manager),
# running as the image's nonroot user 65532, the uid the Helm chart's securityContext expects.
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="s3cse" \
      org.opencontainers.image.description="Amazon S3 client-side encryption: read every format, write V2/V3, re-key legacy buckets" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/usr/local/bin/s3cse /usr/local/bin/s3cse
# Shell completions and the man page, generated from the clap definitions by the binary itself
# (for images built FROM this one with a shell, and for `docker cp`).
COPY --from=builder /out/usr/share /usr/share
# State directory for local runs; on Kubernetes a PVC is mounted over it (fsGroup 65532).
COPY --from=builder --chown=65532:65532 /out/var/lib/s3cse /var/lib/s3cse

USER 65532:65532
WORKDIR /var/lib/s3cse
# Prometheus metrics when run with --metrics-addr 0.0.0.0:9464.
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/s3cse"]
CMD ["--help"]
