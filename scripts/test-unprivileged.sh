#!/usr/bin/env bash
# Runs every package's tests as an unprivileged user (nobody): the pure
# tests must pass without root, and every privileged test must skip
# (internal/testenv is their one gate). Run as root: it compiles the test
# binaries, then drops privileges to run them.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
bins=$(mktemp -d)
trap 'rm -rf "$bins"' EXIT
chmod 755 "$bins"
mkdir "$bins/home" && chown 65534:65534 "$bins/home"
# The tests run in a copy of the tree that nobody may read (a checkout may
# sit in a private directory): those that read sources need it.
mkdir "$bins/src"
tar --exclude=./.git --exclude=./bin -cf - . | tar -xf - -C "$bins/src"
chmod -R a+rX "$bins"
# These two run the go tool on this tree (go list, go build), which needs
# the module cache under root's home: they run in the root suite only.
skip='^(TestProductBinariesLinkNoHarness|TestReadmeProgramIsTheExample)$'
failed=0
pkgs=$(go list ./...) # a failure here stops the script (set -e), unlike in a for list
for pkg in $pkgs; do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  ls "$dir"/*_test.go >/dev/null 2>&1 || continue
  bin=$bins/$(echo "$pkg" | tr / _).test
  go test -c -o "$bin" "$pkg"
  chmod 755 "$bin"
  rel=${dir#"$PWD"}
  if out=$(cd "$bins/src$rel" && setpriv --reuid=65534 --regid=65534 --clear-groups env HOME="$bins/home" "$bin" -test.count=1 -test.skip "$skip" 2>&1); then
    echo "ok (unprivileged) $pkg"
  else
    echo "$out" | tail -n 20
    echo "FAIL (unprivileged) $pkg"
    failed=1
  fi
done
exit $failed
