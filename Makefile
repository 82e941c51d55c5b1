# spiwatch. Targets: build (default), generate, check-generated, test, fuzz, lint,
# test-vm, demo, bench, soak. test, fuzz, demo, bench and soak need root (BPF, namespaces);
# generate needs clang and llvm; build needs only Go.

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
FUZZTIME  ?= 60s
BINARIES  := bin/spiwatch bin/spiwatch-gen

.PHONY: all build generate check-generated test test-vm fuzz lint demo bench soak clean

all: build

build: $(BINARIES)

# Static (CGO_ENABLED=0): one file to copy to a gateway, and Go can then change the
# credentials of every thread when spiwatch drops its privileges.
bin/%: FORCE
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $@ ./cmd/$*

FORCE:

# Rebuild the BPF objects (needs clang and llvm-strip).
generate:
	$(GO) generate ./bpf

# Fail when the committed BPF objects do not match bpf/*.c.
check-generated: generate
	@git diff --exit-code --stat -- bpf/ || \
	  { echo "the committed BPF objects are stale: run make generate and commit them" >&2; exit 1; }

# The test command (as root; with CI=true privileged tests fail instead of skipping).
test:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 20m ./...

# The tests that need a kernel with ESP (the xfrm source end to end, the xfrm lookup
# option, the BPF tables) in VMs booting Debian's 6.1 and 6.12 kernels under qemu
# (TCG), about 50 s each; see docs/VMTEST.md.
# Needs root, qemu-system-x86, busybox-static, kmod, cpio; downloads the kernel
# package once into $(VM_CACHE).
VM_CACHE ?= /var/cache/spiwatch-vm
test-vm:
	VM_CACHE=$(VM_CACHE) .ci/vm/run 6.1
	VM_CACHE=$(VM_CACHE) .ci/vm/run 6.12

# Differential fuzzing of the BPF program against the Go reference, then the
# reference, the known-SPI parsers and the capture reader on their own, FUZZTIME each
# (.ci/fuzz: Go 1.26's race at the end of -fuzztime is told apart from a failure).
fuzz:
	GO=$(GO) .ci/fuzz FuzzDifferential ./bpf $(FUZZTIME)
	GO=$(GO) .ci/fuzz FuzzClassify ./internal/classify $(FUZZTIME)
	GO=$(GO) .ci/fuzz FuzzParse ./internal/knownsa $(FUZZTIME)
	GO=$(GO) .ci/fuzz FuzzRead ./internal/knownsa $(FUZZTIME)
	GO=$(GO) .ci/fuzz FuzzReader ./internal/capread $(FUZZTIME)
	GO=$(GO) .ci/fuzz FuzzParse ./internal/sasource/xfrm $(FUZZTIME)

lint:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt needed" >&2; exit 1; }
	$(GO) vet ./...

# A namespace lab with spiwatch on one end of a veth and realistic traffic on the
# other, for about 20 seconds; everything is removed afterwards.
demo: build
	$(GO) run ./cmd/spiwatch-demo -spiwatch bin/spiwatch -gen bin/spiwatch-gen

# Per-packet cost against baselines, end to end on veth, an unknown-SPI flood and
# the loader's cost, all in one run: writes docs/PERFORMANCE.md (a few minutes).
bench: build
	$(GO) run ./cmd/spiwatch-bench -spiwatch bin/spiwatch -out docs/PERFORMANCE.md

# The 10-minute unknown-SPI flood soak (make test runs a 60-second one): samples
# spiwatch's memory, goroutines and open files every 10 s.
soak:
	SPIWATCH_SOAK=10m $(GO) test -count=1 -run '^TestSoak$$' -v -timeout 30m ./cmd/spiwatch

clean:
	rm -rf bin
