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

.PHONY: all build test e2e mixin-test lint check bench clean

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

## check: everything CI runs
check: lint test e2e mixin-test

## bench: the real binaries against a direct scrape on loopback, one table (docs/performance.md)
bench: build
	$(GO) run ./bench --proxy=./pushprox-proxy --client=./pushprox-client $(BENCH_FLAGS)

clean:
	rm -f $(BINARIES)
