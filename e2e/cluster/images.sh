#!/usr/bin/env bash
# The images the cluster harness's nodes run, built here with buildah from
# Debian's packages, since this machine can pull nothing:
#   localhost/bpfleet/build-base:local  Debian bookworm (debootstrap) with
#       the BPF build packages and this machine's Rust toolchain under
#       /usr/local/cargo and /usr/local/rustup, as in rust:1.95-bookworm
#   localhost/bpfleet/cc-base:local     glibc, libgcc, base-files, netbase,
#       CA certificates and the users root and nonroot (65532): what
#       distroless/cc-debian12 holds, from the same Debian packages
#   localhost/bpfleet/pause:local       the pod sandbox (pause.c, static)
#   localhost/bpfleet/httpd:local       the test's server pod (httpd.c, static)
#   localhost/bpfleet/bpfleet-operator:dev, localhost/bpfleet/bpfleet-agent:dev
#       built by Dockerfile.operator and Dockerfile.agent themselves, with
#       the two bases above as their BUILD_IMAGE and RUNTIME_IMAGE and
#       CARGO_PROFILE_RELEASE_OPT_LEVEL=0 ($BPFLEET_IMAGE_OPT_LEVEL)
#   localhost/bpfleet/bpfleet-agent:next  the agent image again under a
#       second tag, with one more label (so another image id): what
#       `helm upgrade` rolls the DaemonSet to
# Each image is saved as a docker-archive in .cache/cluster/images, which
# node.sh imports into every node's containerd. buildah's storage is
# .cache/cluster/storage; a stamp per image skips what is up to date.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${BPFLEET_CLUSTER_CACHE:-$root/.cache/cluster}
out=$cache/images
mirror=${BPFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
# The packages Dockerfile.agent's build stage installs, so that its apt-get
# finds them there already.
build_packages=ca-certificates,gcc,libc6-dev,make,clang,llvm,libelf-dev,zlib1g-dev,pkg-config,bpftool
cc_packages=(libc6 libgcc-s1 base-files netbase)
# The bpfleet images' Rust optimisation level (the Dockerfiles' build
# argument; release images use 3). 0 halves the build, which the test
# images need to fit CI; they run the same code.
opt_level=${BPFLEET_IMAGE_OPT_LEVEL:-0}

die() { echo "images.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, buildah's overlay storage)"
for t in buildah debootstrap gcc apt-get dpkg; do
  command -v "$t" >/dev/null || die "$t is not installed (scripts/setup.sh installs it)"
done

mkdir -p "$out" "$cache/stamps"
cat > "$cache/policy.json" <<'EOF'
{"default": [{"type": "insecureAcceptAnything"}]}
EOF
# buildah keeps the Dockerfiles' cache mounts (cargo's registry and target
# directory) under $TMPDIR: here, beside its storage.
mkdir -p "$cache/tmp"
b() {
  TMPDIR=$cache/tmp buildah --root "$cache/storage" --runroot "$cache/runroot" --storage-driver overlay "$@"
}

# fresh NAME DIGEST TAG: true when NAME:TAG was built from inputs with
# DIGEST and is in the storage (and its archive in $out, for the images the
# nodes run).
fresh() {
  [ "$(cat "$cache/stamps/$1" 2>/dev/null)" = "$2" ] &&
    b inspect --type image "localhost/bpfleet/$1:$3" >/dev/null 2>&1 &&
    { [ "${4:-}" != node ] || [ -f "$out/$1.tar" ]; }
}

# save NAME TAG DIGEST [node]: the stamp, and for an image the nodes run
# (node) the archive node.sh imports.
save() {
  if [ "${4:-}" = node ]; then
    rm -f "$out/$1.tar"
    b push -q --signature-policy "$cache/policy.json" "localhost/bpfleet/$1:$2" \
      "docker-archive:$out/$1.tar:localhost/bpfleet/$1:$2" >/dev/null
  fi
  echo "$3" > "$cache/stamps/$1"
  echo "image localhost/bpfleet/$1:$2 built"
}

# from_rootfs NAME FILL-FUNCTION CONFIG...: an image FROM scratch whose root
# FILL-FUNCTION writes (given the mount point).
from_rootfs() {
  local name=$1 fill=$2 c mnt
  shift 2
  c=$(b from scratch)
  mnt=$(b mount "$c")
  if ! "$fill" "$mnt"; then
    b umount "$c" >/dev/null
    b rm "$c" >/dev/null
    die "filling $name failed"
  fi
  b umount "$c" >/dev/null
  [ $# -gt 0 ] && b config "$@" "$c"
  b commit -q --rm "$c" "localhost/bpfleet/$name:local" >/dev/null
}

toolchain=$(rustc --print sysroot)
rust_version=$(rustc --version | awk '{print $2}')

fill_build_base() {
  debootstrap --variant=minbase --include="$build_packages" "$suite" "$1" "$mirror" \
    > "$cache/debootstrap-build.log" 2>&1 || { tail -20 "$cache/debootstrap-build.log" >&2; return 1; }
  mkdir -p "$1/usr/local/rustup/toolchains" "$1/usr/local/cargo/bin"
  cp -a "$toolchain" "$1/usr/local/rustup/toolchains/$rust_version-x86_64-unknown-linux-gnu"
  rm -rf "$1/usr/local/rustup/toolchains/"*/share/doc
  local t
  for t in cargo rustc rustdoc; do
    ln -s "../../rustup/toolchains/$rust_version-x86_64-unknown-linux-gnu/bin/$t" "$1/usr/local/cargo/bin/$t"
  done
  # The build reaches crates.io and Debian's mirror through whatever this
  # machine's own trust store accepts (a proxy's CA, say): the build
  # stage's store gets the same local CAs.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/"
    chroot "$1" update-ca-certificates >/dev/null 2>&1
  fi
  rm -rf "$1/var/cache/apt/archives/"*.deb "$1/var/lib/apt/lists/"*
}

fill_cc_base() {
  local debs p
  debs=$(mktemp -d)
  (cd "$debs" && apt-get download -q -o APT::Sandbox::User=root "${cc_packages[@]}" >/dev/null) || { rm -rf "$debs"; return 1; }
  for p in "$debs"/*.deb; do dpkg -x "$p" "$1"; done
  rm -rf "$debs"
  mkdir -p "$1/etc/ssl/certs" "$1/tmp" "$1/home/nonroot"
  chmod 1777 "$1/tmp"
  chown 65532:65532 "$1/home/nonroot"
  cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$1/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$1/etc/group"
}

fill_pause() {
  gcc -static -O2 -Wall -Wextra -Werror -o "$1/pause" "$here/pause.c"
}

fill_httpd() {
  gcc -static -O2 -Wall -Wextra -Werror -o "$1/httpd" "$here/httpd.c"
}

# digest WHAT...: what an image is built from: the function that fills it
# (its text, so that editing the rest of this script rebuilds nothing), the
# files and words given.
digest() {
  local a
  for a in "$@"; do
    if declare -F "$a" >/dev/null; then declare -f "$a"
    elif [ -f "$a" ]; then cat "$a"
    else echo "$a"
    fi
  done | sha256sum | cut -d' ' -f1
}
start=$(date +%s)

want=$(digest fill_build_base from_rootfs "$build_packages" "$rust_version" "$mirror" "$suite" \
  /usr/local/share/ca-certificates/*.crt)
if ! fresh build-base "$want" local; then
  echo "building localhost/bpfleet/build-base:local (debootstrap $suite, Rust $rust_version; first build: minutes)"
  from_rootfs build-base fill_build_base \
    --env CARGO_HOME=/usr/local/cargo --env RUSTUP_HOME=/usr/local/rustup \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash
  save build-base local "$want"
fi

want=$(digest fill_cc_base from_rootfs "${cc_packages[*]}" /etc/ssl/certs/ca-certificates.crt)
if ! fresh cc-base "$want" local; then
  from_rootfs cc-base fill_cc_base --user 65532:65532
  save cc-base local "$want"
fi

want=$(digest fill_pause from_rootfs "$here/pause.c")
if ! fresh pause "$want" local node; then
  from_rootfs pause fill_pause --entrypoint '["/pause"]' --user 65535:65535
  save pause local "$want" node
fi

want=$(digest fill_httpd from_rootfs "$here/httpd.c")
if ! fresh httpd "$want" local node; then
  from_rootfs httpd fill_httpd --entrypoint '["/httpd", "8080"]' --user 65532:65532 --port 8080
  save httpd local "$want" node
fi

# The bpfleet images: the digest of the sources their cargo build reads
# (git's view of the work tree, tracked and untracked but not ignored, less
# what no crate compiles: docs, the chart, scripts, tests, this directory).
sources_digest() {
  (cd "$root" && git ls-files -co --exclude-standard -z -- . ':!docs' ':!charts' ':!scripts' \
    ':!e2e/cluster' ':!e2e/tests' ':!.ci' ':!*.md' | sort -z |
    xargs -0 sha256sum 2>/dev/null) | sha256sum | cut -d' ' -f1
}
src=$(sources_digest)
bases="$(cat "$cache/stamps/build-base") $(cat "$cache/stamps/cc-base")"
for c in operator agent; do
  bud=(bud --signature-policy "$cache/policy.json" --pull-never --network host --layers=false
    --ignorefile "Dockerfile.$c.dockerignore" -f "Dockerfile.$c"
    --build-arg BUILD_IMAGE=localhost/bpfleet/build-base:local
    --build-arg RUNTIME_IMAGE=localhost/bpfleet/cc-base:local
    --build-arg "CARGO_PROFILE_RELEASE_OPT_LEVEL=$opt_level"
    -t "localhost/bpfleet/bpfleet-$c:dev" .)
  want=$(digest "$src" "$bases" "${bud[*]}")
  fresh "bpfleet-$c" "$want" dev node && continue
  echo "building localhost/bpfleet/bpfleet-$c:dev from Dockerfile.$c (cargo build, opt-level $opt_level: minutes)"
  s=$(date +%s)
  (cd "$root" && b "${bud[@]}" > "$cache/build-$c.log" 2>&1) ||
    { tail -30 "$cache/build-$c.log" >&2; die "Dockerfile.$c failed (log: $cache/build-$c.log)"; }
  save "bpfleet-$c" dev "$want" node
  echo "bpfleet-$c built in $(( $(date +%s) - s ))s"
done

# The upgrade's target: the agent image with a label naming the build it
# came from, saved under its own archive (node.sh imports every one).
want=$(digest "$(cat "$cache/stamps/bpfleet-agent")" next)
if ! [ "$(cat "$cache/stamps/bpfleet-agent-next" 2>/dev/null)" = "$want" ] ||
  ! b inspect --type image localhost/bpfleet/bpfleet-agent:next >/dev/null 2>&1 ||
  ! [ -f "$out/bpfleet-agent-next.tar" ]; then
  c=$(b from --pull-never localhost/bpfleet/bpfleet-agent:dev)
  b config --label "dev.bpfleet.build=next" "$c"
  b commit -q --rm "$c" localhost/bpfleet/bpfleet-agent:next >/dev/null
  rm -f "$out/bpfleet-agent-next.tar"
  b push -q --signature-policy "$cache/policy.json" localhost/bpfleet/bpfleet-agent:next \
    "docker-archive:$out/bpfleet-agent-next.tar:localhost/bpfleet/bpfleet-agent:next" >/dev/null
  echo "$want" > "$cache/stamps/bpfleet-agent-next"
  echo "image localhost/bpfleet/bpfleet-agent:next built"
fi
# Images a rebuild left without a name (an older base, say) go.
b rmi --prune >/dev/null 2>&1 || true
echo "images up to date in $out ($(( $(date +%s) - start ))s)"
