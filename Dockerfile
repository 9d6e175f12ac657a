# Builds both PushProx binaries into one small image.
#   docker build -t pushprox .
#   docker run pushprox                                    # the proxy (default)
#   docker run --entrypoint /bin/pushprox-client pushprox --proxy-url=http://proxy:8080/

# ---- build stage: compile on the build host's platform, cross-compile to the target
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
ARG TARGETOS
ARG TARGETARCH
WORKDIR /src

# Dependencies first, so this layer stays cached until go.mod/go.sum change.
COPY go.mod go.sum ./
RUN go mod download

COPY . .
# The version shown by --version and pushprox_build_info:
#   docker build --build-arg VERSION=$(git describe --tags --always) .
ARG VERSION=unknown
ENV CGO_ENABLED=0
RUN LDFLAGS="-s -w -X github.com/prometheus/common/version.Version=${VERSION}" && \
    GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH} \
        go build -trimpath -ldflags="$LDFLAGS" -o /out/pushprox-proxy ./cmd/proxy && \
    GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH} \
        go build -trimpath -ldflags="$LDFLAGS" -o /out/pushprox-client ./cmd/client

# ---- runtime stage: static binaries, CA certificates, no shell, non-root
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/pushprox-proxy /out/pushprox-client /bin/
# Numeric "nonroot" user of the distroless image, so Kubernetes'
# runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/bin/pushprox-proxy"]
