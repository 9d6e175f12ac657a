GO      ?= go
BINARIES = pushprox-proxy pushprox-client

# Build information shown by --version and the pushprox_build_info metric.
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
BRANCH   ?= $(shell git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)
VERSION_PKG = github.com/prometheus/common/version
LDFLAGS  = -X $(VERSION_PKG).Version=$(VERSION) -X $(VERSION_PKG).Revision=$(REVISION) \
           -X $(VERSION_PKG).Branch=$(BRANCH) -X $(VERSION_PKG).BuildUser=$(shell id -un)@$(shell hostname) \
           -X $(VERSION_PKG).BuildDate=$(shell date -u +%Y%m%d-%H:%M:%S)

.PHONY: all build test e2e mixin-test lint check bench clean helm chart-test

# Helm for the chart's tests, built from the Go module proxy into .cache/
# (about two minutes the first time; kept afterwards).
HELM_VERSION ?= v3.22.0
HELM_BIN     := $(CURDIR)/.cache/bin
HELM         ?= $(HELM_BIN)/helm
# helm template otherwise assumes a cluster older than the chart allows.
CHART_KUBE_VERSION ?= 1.31.0

all: build

## build: compile ./pushprox-proxy and ./pushprox-client
build:
	$(GO) build -ldflags '$(LDFLAGS)' -o pushprox-proxy ./cmd/proxy
	$(GO) build -ldflags '$(LDFLAGS)' -o pushprox-client ./cmd/client

## test: every Go test, with the race detector
test:
	$(GO) test -race -count=1 ./...

## e2e: a real Prometheus scrapes node exporters through the real binaries
e2e: build
	./end-to-end-test.sh

## mixin-test: the alerting rules and dashboard (mixin/): promtool checks and
## unit tests, the dashboard generated from its source, and a real Prometheus
## evaluating every rule and dashboard query against the real binaries
mixin-test: build
	promtool check rules mixin/alerts.yaml
	promtool test rules mixin/alerts_test.yaml
	python3 mixin/dashboards/generate.py --check
	python3 mixin/mixin_tool.py selftest
	./mixin/e2e-test.sh

## lint: gofmt, go vet and go mod tidy must leave no diff
lint:
	@unformatted=$$(gofmt -l .); if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) mod tidy -diff

## helm: build helm $(HELM_VERSION) into .cache/bin unless it is there (or HELM names another)
# A stamp file records the version built: go install leaves helm's own
# version string unset.
helm:
	@if [ "$(HELM)" = "$(HELM_BIN)/helm" ] && [ ! -f "$(HELM_BIN)/.helm-$(HELM_VERSION)" ]; then \
		echo "building helm $(HELM_VERSION) into $(HELM_BIN)"; \
		GOBIN="$(HELM_BIN)" $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION) && \
		touch "$(HELM_BIN)/.helm-$(HELM_VERSION)"; \
	fi

## chart-test: helm lint of the chart with each ci/ values file, then its Go tests (chart/ is a module of its own)
# helm lint only logs the chart's fail and required messages; the Go tests
# render each values file with helm template, which fails on them.
chart-test: helm
	$(HELM) lint --strict --kube-version $(CHART_KUBE_VERSION) chart
	@for values in chart/ci/*-values.yaml; do \
		echo "$(HELM) lint --strict --kube-version $(CHART_KUBE_VERSION) chart --values $$values"; \
		out=$$($(HELM) lint --strict --kube-version $(CHART_KUBE_VERSION) chart --values $$values 2>&1) || { echo "$$out"; exit 1; }; \
	done
	cd chart && $(GO) vet ./... && $(GO) mod tidy -diff
	cd chart && HELM="$(HELM)" $(GO) test -count=1 ./...

## check: everything CI runs
check: lint test chart-test e2e mixin-test

## bench: the real binaries on loopback, direct against polls and tunnels, one table (docs/performance.md)
bench: build
	$(GO) run ./bench --proxy=./pushprox-proxy --client=./pushprox-client $(BENCH_FLAGS)

clean:
	rm -f $(BINARIES)
