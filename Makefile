GO      ?= go
BINARIES = pushprox-proxy pushprox-client

.PHONY: all build test e2e lint check bench clean

all: build

## build: compile ./pushprox-proxy and ./pushprox-client
build:
	$(GO) build -o pushprox-proxy ./cmd/proxy
	$(GO) build -o pushprox-client ./cmd/client

## test: every Go test, with the race detector
test:
	$(GO) test -race -count=1 ./...

## e2e: a real Prometheus scrapes node exporters through the real binaries
e2e: build
	./end-to-end-test.sh

## lint: gofmt, go vet and go mod tidy must leave no diff
lint:
	@unformatted=$$(gofmt -l .); if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) mod tidy -diff

## check: everything CI runs
check: lint test e2e

clean:
	rm -f $(BINARIES)
