#!/usr/bin/env bash
# The whole test suite: formatting, vet, unit tests and the privileged
# integration tests (real namespaces, devices, nftables and packets).
# Packages run one at a time (-p 1): they share the root namespace's
# rule set, which one test counts.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export PATH="/usr/local/go/bin:$PATH"

bad=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$bad" ]; then
  echo "gofmt would change: $bad" >&2
  exit 1
fi
go vet ./...
./scripts/check-generated.sh
go test -p 1 -count=1 -timeout 30m ./... "$@"
# The client's examples and its concurrency test again under the race
# detector: one client shared by 16 goroutines against an in-process
# daemon, whose acquire and release paths it covers too.
go test -race -count=1 -timeout 10m ./client/
# The same packages as an unprivileged user: pure tests pass, privileged
# ones skip.
./scripts/test-unprivileged.sh

# Every fuzz target, briefly: FUZZTIME executions each (default 50000x, a
# few seconds; a count, not a duration: with a duration, Go 1.26's fuzzing
# coordinator can fail a run at the deadline with "context deadline
# exceeded" and no failing input, golang/go#75804, fixed in Go 1.27). The
# seed corpora already ran above as tests. Longer runs:
#   go test -run '^$' -fuzz '^FuzzPrograms$' -fuzztime 10m ./internal/datapath
fuzztime="${FUZZTIME:-50000x}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
pkgs=$(go list ./...) # a failure here stops the script (set -e), unlike in a for list
for pkg in $pkgs; do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
    echo "fuzz $target ($pkg, $fuzztime)"
    go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
    tail -n 1 "$log"
  done
done
