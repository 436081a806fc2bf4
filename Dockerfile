# syntax=docker/dockerfile:1
# The three binaries in one image; the manifests pick one with `command:`
# (/usr/local/bin/sharder, /usr/local/bin/worker or /usr/local/bin/relay,
# each with --config).
#   docker build -t bulwark:dev .

# Build and runtime are both Debian 12 (bookworm), so the binaries link
# against the glibc they run with.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# --bins: every binary of the three packages. Each one the manifests run
# must be there: a missing binary fails the build, not a pod at start-up.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins -p sharder -p worker -p relay \
 && mkdir -p /out \
 && for bin in sharder worker relay; do \
      test -f "target/release/$bin" || { echo "missing binary $bin" >&2; exit 1; }; \
      cp "target/release/$bin" /out/; \
    done

# glibc + libgcc, CA certificates, no shell, user 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
# No ENTRYPOINT: each workload names its binary.
CMD ["/usr/local/bin/worker", "--help"]
