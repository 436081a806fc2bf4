# syntax=docker/dockerfile:1
# Both binaries in one image; the manifests pick one with `command:`
# (/usr/local/bin/sharder or /usr/local/bin/worker, each with --config).
#   docker build -t bulwark:dev .

# Build and runtime are both Debian 12 (bookworm), so the binaries link
# against the glibc they run with.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# --bins: every binary of the two packages (the sharder's binary is not
# written yet; when it is, it is picked up without changing this file).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins -p sharder -p worker \
 && mkdir -p /out \
 && for bin in sharder worker; do \
      if [ -f "target/release/$bin" ]; then cp "target/release/$bin" /out/; fi; \
    done \
 && test -f /out/worker

# glibc + libgcc, CA certificates, no shell, user 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
# No ENTRYPOINT: each workload names its binary.
CMD ["/usr/local/bin/worker", "--help"]
