# The three binaries in one image; the manifests pick one with `command:`
# (/usr/local/bin/sharder, /usr/local/bin/worker or /usr/local/bin/relay,
# each with --config).
#   DOCKER_BUILDKIT=1 docker build -t bulwark:dev \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg SOURCE=https://github.com/YOUR/FORK .
#
# Build and runtime are both Debian 12 (bookworm), so the binaries link
# against the glibc they run with. The defaults are the production bases;
# CI passes local ones built from Debian's packages (.ci/image), as it
# cannot pull from public registries. Another base must keep that pairing:
# a bookworm (or older glibc) builder with cargo on PATH and a C compiler,
# and a glibc runtime with CA certificates.
#
# No `# syntax=` line: it would pull a frontend image from Docker Hub. The
# frontend built into BuildKit (Docker 20.10 and later) has RUN --mount.
ARG BUILDER_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
COPY . .
# --bins: every binary of the three packages. Each one the manifests run
# must be there: a missing binary fails the build, not a pod at start-up.
# The caches keep crates and compiled dependencies between builds, so a
# rebuild compiles only what changed.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins -p sharder -p worker -p relay \
 && mkdir -p /out \
 && for bin in sharder worker relay; do \
      test -x "target/release/$bin" || { echo "missing binary $bin" >&2; exit 1; }; \
      cp "target/release/$bin" /out/; \
    done

# distroless/cc: glibc + libgcc, CA certificates, no shell, user 65532
# (nonroot).
FROM ${RUNTIME_IMAGE}
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="bulwark" \
      org.opencontainers.image.description="Discord gateway sharder, cache worker and relay" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /out/ /usr/local/bin/
# The manifests' user (runAsUser 65532, runAsNonRoot): numeric, so it needs
# no passwd entry in the base.
USER 65532:65532
# No ENTRYPOINT: each workload names its binary.
CMD ["/usr/local/bin/worker", "--help"]
