# Sourced by the build scripts of the Go tools the tests use (build.sh here,
# helm/build.sh, cosign/build.sh, prometheus/build.sh,
# alertmanager/build.sh, jaeger/build.sh): the Go settings they share and their input
# stamps. Not run on its own.

# Checks that Go is there and never lets it download a toolchain or change
# go.mod: this machine reaches only package registries. $1 names the caller.
go_env() {
  command -v go >/dev/null || { echo "$1: Go is required (go.mod wants $(awk '/^go /{print $2}' "$here/go.mod") or newer)" >&2; exit 1; }
  export GOTOOLCHAIN=local
  export GOFLAGS=-mod=readonly
}

# Prints the digest of the files given, this file and the Go version: what a
# build's output depends on.
inputs_digest() {
  (cat "$@" "${BASH_SOURCE[0]}"; go version) | sha256sum | cut -d' ' -f1
}

# True when stamp file $1 holds digest $2 and every binary named after them
# (in $out) is there and executable.
up_to_date() {
  local stamp=$1 want=$2 b
  shift 2
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] || return 1
  for b in "$@"; do [ -x "$out/$b" ] || return 1; done
}
