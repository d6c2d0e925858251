GO ?= /usr/local/go/bin/go
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: all build demo test unit generate bench bench-pool bench-datapath bench-dhcp clean

all: build

build:
	$(GO) build -o bin/ ./cmd/netslotd ./cmd/netslot ./cmd/netslot-bench

# Start the daemon with its default pool and show a slot acquired and released.
demo:
	./scripts/demo.sh

# The whole test suite (installs what it needs; runs as root).
test:
	./scripts/test.sh

# Every test that needs no root: run as any other user, go test ./...
# skips the privileged ones (internal/testenv is their one gate).
unit:
	$(GO) test ./...

# Regenerate the gRPC bindings (api/netslot/v1/netslot.proto) and the eBPF
# objects and bindings (bpf/*.c -> internal/datapath).
generate:
	./scripts/generate.sh

# The bench report (root; builds its own lab): boot at 100 to 10,000 slots,
# device-creation orderings, attach latency against building on demand and
# the CNI plugins, the datapath against the replaced design, DHCP against
# dnsmasq; written to
# bench-report/ (report.md, SVG plots, CSV samples). QUICK=1 for small sizes.
bench:
	./scripts/deps.sh
	$(GO) build -o bin/ ./cmd/netslotd ./cmd/netslot ./cmd/netslot-bench
	./bin/netslot-bench --out bench-report $(if $(QUICK),--quick)

# A running pool's own figures at 4,000 slots (boot, restart, API latency,
# idle CPU, memory, rules) and the Go benchmarks.
bench-pool:
	./scripts/bench-pool.sh 4000
	$(GO) test -p 1 -run '^$$' -bench . -benchtime 2000x ./internal/daemon ./internal/datapath

# The eBPF datapath against the replaced design, side by side (root).
bench-datapath:
	./scripts/deps.sh
	$(GO) build -o bin/ ./cmd/netslotd ./cmd/netslot ./cmd/netslot-bench
	./bin/netslot-bench datapath --slots 4000 --rounds 5

# DHCP answered by the tap's program against dnsmasq per slot namespace
# (defaults and --no-ping), side by side; 4,000-slot boots with and without
# DHCP (root).
bench-dhcp:
	./scripts/deps.sh
	$(GO) build -o bin/ ./cmd/netslotd ./cmd/netslot ./cmd/netslot-bench
	./bin/netslot-bench dhcp --slots 50 --rounds 200 --boot-slots 4000 --boot-rounds 3

clean:
	rm -rf bin
