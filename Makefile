# iserd: a userspace iSCSI/iSER target.
#   make run      build and start the target on the embedded default
#   make test     install what the tests need (root), then run every test
#   make test-vm  run the Linux-initiator / rdma_rxe scenarios in a qemu VM
#   make bench    side-by-side benchmark against tgt (and LIO in the VM)
#   make soak     SOAK_MINUTES (30) of fio verify in the VM while iserd is killed and restarted
#   make deb      the Debian package bin/iserd_VERSION_ARCH.deb (packaging/)
export CGO_ENABLED := 0
GO ?= go
BIN := bin

.PHONY: all build run test deps vet unit fuzz conformance test-vm bench soak deb clean

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

# Every scenario but the benchmarks (make bench runs those) and the soak, with
# the rdma package's device tests built for the VM.
test-vm: build
	mkdir -p $(BIN)/vmtest
	$(GO) test -c -o $(BIN)/vmtest/rdma.test ./rdma
	VM_TESTBIN_DIR=$(CURDIR)/$(BIN)/vmtest scripts/vm/run-all.sh $$(ls scripts/vm/scenarios/*.sh | grep -Ev '/(bench-[^/]*|soak)\.sh$$')

# Not part of test or CI: fio crc32c verify over TCP and iSER at once for
# SOAK_MINUTES while iserd is SIGKILLed and restarted every 2 minutes and
# connections are dropped at random (scripts/vm/scenarios/soak.sh).
SOAK_MINUTES ?= 30
soak: build
	VM_ENV="SOAK_MINUTES=$(SOAK_MINUTES)" VM_SCENARIO_TIMEOUT=$$(( $(SOAK_MINUTES) * 60 + 600 )) \
		scripts/vm/run-all.sh scripts/vm/scenarios/soak.sh

test: deps vet unit fuzz conformance
	@if scripts/vm/can-run.sh; then $(MAKE) test-vm; else echo "test-vm skipped: qemu cannot run here (see scripts/vm/can-run.sh)"; fi

bench: build
	bench/run.sh

deb:
	packaging/build-deb.sh

clean:
	rm -rf $(BIN)
