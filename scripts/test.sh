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
