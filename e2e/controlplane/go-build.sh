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

# The common part of a tool's build script (helm, cosign, prometheus,
# alertmanager, jaeger: each a Go module of its own in $here, beside its
# build.sh, the caller). `tool_begin LABEL STAMP MODULE BIN...` exits the
# caller when the stamp `$out/STAMP` matches its go.mod, go.sum and
# build.sh and every BIN is there; otherwise it sets `version` (MODULE's
# version in go.mod), moves to $here and announces the build, which the
# caller then runs and ends with `tool_done`.
tool_begin() {
  local label=$1 module=$3
  tool_label=$label
  tool_stamp="$out/$2"
  shift 3
  tool_want=$(inputs_digest "$here/go.mod" "$here/go.sum" "$here/build.sh")
  if up_to_date "$tool_stamp" "$tool_want" "$@"; then
    echo "$label up to date in $out"
    exit 0
  fi
  version=$(awk -v m="$module" '$1 == m {print $2; exit}' "$here/go.mod")
  mkdir -p "$out"
  tool_start=$(date +%s)
  cd "$here"
  echo "building $label $version into $out"
}

# Records the build `tool_begin` announced: its stamp, and how long it took.
tool_done() {
  echo "$tool_want" > "$tool_stamp"
  echo "$tool_label built in $(( $(date +%s) - tool_start ))s"
}
