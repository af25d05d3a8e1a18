# iserd: a userspace iSCSI/iSER target.
#   make run      build and start the target on the embedded default
#   make test     install what the tests need (root), then run every test
#   make test-vm  run the Linux-initiator / rdma_rxe scenarios in a qemu VM
#   make bench    side-by-side benchmark against tgt (and LIO in the VM)
#   make deb      the Debian package bin/iserd_VERSION_ARCH.deb (packaging/)
export CGO_ENABLED := 0
GO ?= go
BIN := bin

.PHONY: all build run test deps vet unit fuzz conformance test-vm bench deb clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

run: build
	$(BIN)/iserd $(ARGS)

deps:
	scripts/install-deps.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.6.1 ./...
	@! grep -rl --include='*.go' '^import "C"' . || { echo 'cgo is not allowed'; exit 1; }

# The race detector's runtime needs cgo for the test binaries only; the
# product builds and runs with CGO_ENABLED=0.
unit:
	CGO_ENABLED=1 $(GO) test -count=1 -race ./...
	$(GO) test -count=1 -run 'Allocs|HostilePeerRSS' ./...   # allocations and memory are measured without the race detector

fuzz:
	scripts/fuzz-short.sh

conformance: build
	scripts/conformance.sh

# Every scenario but the benchmarks (make bench runs those), with the rdma
# package's device tests built for the VM.
test-vm: build
	mkdir -p $(BIN)/vmtest
	$(GO) test -c -o $(BIN)/vmtest/rdma.test ./rdma
	VM_TESTBIN_DIR=$(CURDIR)/$(BIN)/vmtest scripts/vm/run-all.sh $$(ls scripts/vm/scenarios/*.sh | grep -v '/bench-')

test: deps vet unit fuzz conformance
	@if scripts/vm/can-run.sh; then $(MAKE) test-vm; else echo "test-vm skipped: qemu cannot run here (see scripts/vm/can-run.sh)"; fi

bench: build
	bench/run.sh

deb:
	packaging/build-deb.sh

clean:
	rm -rf $(BIN)
