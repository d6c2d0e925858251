#!/usr/bin/env bash
# Fails when generated code is not what its sources produce: the eBPF
# objects and their Go bindings (bpf/*.c -> internal/datapath), the
# constants header (internal/dpconst -> bpf/lib/consts.h) and the gRPC and
# protobuf bindings (api/netslot/v1/netslot.proto). It regenerates them
# with the pinned tools (scripts/generate.sh) and compares with git.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$HOME/go/bin:$PATH"

# The committed objects were compiled by this clang major version; another
# one emits different (valid) bytecode, which would read as stale.
want_clang=14
command -v clang >/dev/null || { echo "clang is not installed (scripts/deps.sh installs it)" >&2; exit 1; }
have_clang=$(clang --version | sed -n '1s/.*clang version \([0-9]*\)\..*/\1/p')
if [ "$have_clang" != "$want_clang" ]; then
  echo "clang $have_clang found; the eBPF objects are generated with clang $want_clang (apt-get install clang-$want_clang, or regenerate all with make generate and commit)" >&2
  exit 1
fi

# The programs compile against the vendored headers (bpf/include) and the
# compiler's own only, never the machine's packages.
resource=$(clang -print-resource-dir)
for src in bpf/*.c; do
  deps=$(clang -target bpf -I bpf/include -M "$src") # fails the script if clang does
  outside=$(printf '%s\n' "$deps" | tr ' \\' '\n\n' | grep '^/' | grep -v "^$PWD/bpf/\|^$resource/" || true)
  if [ -n "$outside" ]; then
    echo "$src includes headers from outside bpf/include: $outside" >&2
    exit 1
  fi
done

./scripts/generate.sh
if git rev-parse --git-dir >/dev/null 2>&1; then
  paths=(internal/datapath bpf/lib/consts.h api/netslot/v1)
  if ! git diff --quiet -- "${paths[@]}" || [ -n "$(git ls-files --others --exclude-standard -- "${paths[@]}")" ]; then
    git diff --stat -- "${paths[@]}" >&2
    git ls-files --others --exclude-standard -- "${paths[@]}" >&2
    echo "generated code is stale: run 'make generate' and commit the result" >&2
    exit 1
  fi
fi
