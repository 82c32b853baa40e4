#!/usr/bin/env bash
# A real Kubernetes cluster on this machine, for the cluster e2e test and
# `make cluster-demo`: etcd, kube-apiserver, kube-controller-manager and
# kube-scheduler on the host, and two nodes, each a kubelet, a containerd
# and a kube-proxy kept apart from the other node's (docs/controlplane.md,
# "The cluster harness").
#
#   cluster.sh up      start it (a no-op when it is up); prints the kubeconfig
#   cluster.sh down    stop everything and remove what `up` made, also after
#                      a failed or interrupted `up`
#   cluster.sh status  what runs
#   cluster.sh env     the shell variables a test or a person uses
#
# Binaries come from e2e/controlplane/build.sh (.cache/controlplane/bin);
# state lives in .run/cluster. Needs root, containerd and runc (Debian's),
# containernetworking-plugins, iproute2, iptables and openssl.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${BPFLEET_CONTROLPLANE_BIN:-$root/.cache/controlplane/bin}
run=${BPFLEET_CLUSTER_RUN:-$root/.run/cluster}
. "$here/net.sh"

die() { echo "cluster.sh: $*" >&2; exit 1; }

need() {
  [ "$(id -u)" = 0 ] || die "must run as root (it creates network namespaces, mounts and cgroups)"
  local b
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    [ -x "$bin/$b" ] || die "$bin/$b is missing: run e2e/controlplane/build.sh (or scripts/setup.sh)"
  done
  for b in containerd containerd-shim-runc-v2 runc iptables openssl nsenter unshare ip; do
    command -v "$b" >/dev/null || die "$b is not installed (scripts/setup.sh installs it)"
  done
  for b in bridge host-local loopback portmap; do
    [ -x "$cni_bin/$b" ] || die "CNI plugin $cni_bin/$b is missing (Debian's containernetworking-plugins)"
  done
}

# ---------------------------------------------------------------- certificates

# A CA, the apiserver's serving certificate and the service-account key.
# Clients authenticate with tokens from a static file: one per component,
# each node's kubelet as system:node:<name> in system:nodes, so that the Node
# authorizer and RBAC judge them as they would in a real cluster.
pki() {
  local d=$run/pki
  [ -f "$d/done" ] && return 0
  rm -rf "$d"
  mkdir -p "$d"
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=bpfleet-cluster-ca" \
      -keyout ca.key -out ca.crt 2>/dev/null
    cat > apiserver.ext <<EOF
subjectAltName = IP:$api_ip, IP:$service_api_ip, IP:127.0.0.1, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage = serverAuth
EOF
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
      -keyout apiserver.key -out apiserver.csr 2>/dev/null
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -days 30 -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    token() { openssl rand -hex 16; }
    {
      echo "$(token),bpfleet-admin,admin,\"system:masters\""
      echo "$(token),system:kube-controller-manager,kcm"
      echo "$(token),system:kube-scheduler,scheduler"
      echo "$(token),system:kube-proxy,kube-proxy,\"system:node-proxier\""
      for n in "${nodes[@]}"; do
        echo "$(token),system:node:$n,kubelet-$n,\"system:nodes\""
      done
    } > tokens.csv
    chmod 600 tokens.csv ca.key apiserver.key sa.key
  )
  kubeconfig admin bpfleet-admin
  kubeconfig kcm system:kube-controller-manager
  kubeconfig scheduler system:kube-scheduler
  kubeconfig kube-proxy system:kube-proxy
  for n in "${nodes[@]}"; do kubeconfig "kubelet-$n" "system:node:$n"; done
  touch "$d/done"
}

# kubeconfig FILE USER: a kubeconfig for USER's token at $run/FILE.kubeconfig.
kubeconfig() {
  local token
  token=$(awk -F, -v u="$2" '$2 == u {print $1; exit}' "$run/pki/tokens.csv")
  cat > "$run/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: bpfleet
  cluster:
    server: https://$api_ip:$api_port
    certificate-authority: $run/pki/ca.crt
users:
- name: $2
  user:
    token: $token
contexts:
- name: bpfleet
  context: {cluster: bpfleet, user: "$2"}
current-context: bpfleet
EOF
  chmod 600 "$run/$1.kubeconfig"
}

# ---------------------------------------------------------------- processes

# start NAME CMD...: runs CMD in the background in its own session, output to
# $run/logs/NAME.log, pid in $run/pids/NAME.
start() {
  local name=$1
  shift
  mkdir -p "$run/logs" "$run/pids"
  setsid "$@" >> "$run/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$run/pids/$name"
}

running() {
  local f=$run/pids/$1
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

# wait_for WHAT SECONDS CMD...: polls CMD until it succeeds; on timeout,
# shows the end of every log before giving up.
wait_for() {
  local what=$1 secs=$2 i f
  shift 2
  for ((i = 0; i < secs * 2; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  for f in "$run"/logs/*.log "$run"/*/*.log; do
    [ -f "$f" ] || continue
    echo "--- ${f#"$run"/} (last lines)" >&2
    tail -n 15 "$f" >&2
  done
  die "timed out after ${secs}s waiting for $what (logs in $run/logs and $run/<node>/; down keeps them in $run.logs)"
}

kubectl_admin() { "$bin/kubectl" --kubeconfig "$run/admin.kubeconfig" "$@"; }

control_plane() {
  running etcd || start etcd "$bin/etcd" --name=bpfleet-cluster --data-dir="$run/etcd" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster="bpfleet-cluster=http://127.0.0.1:$etcd_peer_port" --unsafe-no-fsync=true --log-level=warn
  # The apiserver listens on the bridge's host address only: the nodes and
  # their pods reach it there (and as the `kubernetes` Service through
  # kube-proxy), nothing outside this machine can.
  running kube-apiserver || start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address="$api_ip" --advertise-address="$api_ip" --secure-port="$api_port" \
    --cert-dir="$run/pki" --tls-cert-file="$run/pki/apiserver.crt" --tls-private-key-file="$run/pki/apiserver.key" \
    --client-ca-file="$run/pki/ca.crt" --token-auth-file="$run/pki/tokens.csv" \
    --service-account-key-file="$run/pki/sa.pub" --service-account-signing-key-file="$run/pki/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range="$service_cidr" --authorization-mode=Node,RBAC \
    --kubelet-preferred-address-types=InternalIP \
    --allow-privileged=false --v=1
  wait_for "kube-apiserver" 120 kubectl_admin get --raw /readyz
  running kube-controller-manager || start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig="$run/kcm.kubeconfig" --authentication-kubeconfig="$run/kcm.kubeconfig" \
    --authorization-kubeconfig="$run/kcm.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false \
    --service-account-private-key-file="$run/pki/sa.key" --root-ca-file="$run/pki/ca.crt" \
    --use-service-account-credentials=true --service-cluster-ip-range="$service_cidr" \
    --cluster-cidr="$pod_cidr" --allocate-node-cidrs=false --v=1
  running kube-scheduler || start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig="$run/scheduler.kubeconfig" --authentication-kubeconfig="$run/scheduler.kubeconfig" \
    --authorization-kubeconfig="$run/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false --v=1
}

# ---------------------------------------------------------------- nodes

node_up() {
  local n=$1 i=$2
  local d=$run/$n ip
  ip=$(node_ip "$i")
  mkdir -p "$d"/{containerd,cni/net.d,cni/ipam,kubelet,pods,bpfleet,run,netns}
  node_network "$n" "$i"
  node_cgroups "$n" create
  cat > "$d/containerd.toml" <<EOF
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Root here has no CAP_SYS_RESOURCE in its bounding set: without this,
  # runc cannot lower a sandbox's oom_score_adj and every sandbox fails.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$cni_bin"
    conf_dir = "$d/cni/net.d"
EOF
  cat > "$d/cni/net.d/10-bpfleet.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "bpfleet",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$(node_pod_cidr "$i")"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$d/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cat > "$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 on these machines: kubelet refuses it unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$(cgroup_name "$n")
containerRuntimeEndpoint: unix://$d/containerd.sock
failSwapOn: false
# The nodes share one kernel and one disk with the host: no evictions for
# what the host itself uses.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
address: $ip
port: 10250
healthzBindAddress: 127.0.0.1
healthzPort: 10248
readOnlyPort: 0
# The apiserver reaches the kubelet (logs, exec) without a client
# certificate: the kubelet listens only on the nodes' private bridge.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
serializeImagePulls: false
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
staticPodPath: ""
protectKernelDefaults: false
EOF
  cat > "$d/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $run/kube-proxy.kubeconfig
hostnameOverride: $n
bindAddress: $ip
clusterCIDR: $pod_cidr
mode: iptables
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
# nf_conntrack_max is the host's, not the node's: leave it alone.
conntrack:
  maxPerCore: 0
  min: 0
EOF
  if ! running "$n"; then
    # The node's own mount namespace, in its network namespace (node.sh).
    start "$n" nsenter --net="/run/netns/$(netns_name "$n")" \
      unshare --mount --propagation slave \
      bash "$here/node.sh" "$n" "$d" "$bin" "$ip" "$run/kubelet-$n.kubeconfig" "$images"
  fi
}

status() {
  local p
  for p in etcd kube-apiserver kube-controller-manager kube-scheduler "${nodes[@]}"; do
    if running "$p"; then echo "$p: running (pid $(cat "$run/pids/$p"))"; else echo "$p: stopped"; fi
  done
  if running kube-apiserver; then kubectl_admin get nodes -o wide 2>&1 || true; fi
}

up() {
  need
  mkdir -p "$run"
  [ -d "$images" ] || die "no node images in $images: run e2e/cluster/images.sh first"
  pki
  bridge_up
  control_plane
  local i=0 n
  for n in "${nodes[@]}"; do
    i=$((i + 1))
    node_up "$n" "$i"
  done
  for n in "${nodes[@]}"; do
    wait_for "node $n Ready" 180 bash -c \
      "'$bin/kubectl' --kubeconfig '$run/admin.kubeconfig' get node '$n' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  done
  echo "cluster up: export KUBECONFIG=$run/admin.kubeconfig"
}

down() {
  local n p
  # Nodes first: their pods, shims and mounts go with their namespaces.
  for n in "${nodes[@]}"; do node_down "$n"; done
  for p in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_pid "$p"; done
  bridge_down
  # The logs of the run outlive it, for a failed test to be read.
  if [ -d "$run" ]; then
    rm -rf "$run.logs"
    mkdir -p "$run.logs"
    (cd "$run" && find . -name '*.log' -exec cp --parents {} "$run.logs/" \;)
  fi
  rm -rf "$run"
  echo "cluster down"
}

# stop_pid NAME: TERM, then KILL after 10 s, the process recorded for NAME.
stop_pid() {
  local f=$run/pids/$1 pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  kill -TERM "$pid" 2>/dev/null || { rm -f "$f"; return 0; }
  for ((i = 0; i < 20; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$f"
}

node_down() {
  local n=$1 d=$run/$1 ns="" sig i
  # Every process of the node: those in its mount namespace (kubelet,
  # kube-proxy, containerd, the shims; node.sh recorded the namespace, so
  # this works after node.sh itself died) and those in its cgroups (the
  # pods' processes, each in a mount namespace of its own).
  [ -f "$d/mntns" ] && ns=$(cat "$d/mntns")
  for sig in TERM KILL; do
    for pid in $(node_pids "$n" "$ns"); do kill -"$sig" "$pid" 2>/dev/null || true; done
    for ((i = 0; i < 20; i++)); do
      [ -z "$(node_pids "$n" "$ns")" ] && break
      sleep 0.5
    done
  done
  stop_pid "$n"
  node_cgroups "$n" remove
  node_network_down "$n"
}

# node_pids NAME MNTNS: the processes in mount namespace MNTNS (when given)
# and in node NAME's cgroups.
node_pids() {
  local p cg
  cg=$(cgroup_name "$1")
  if [ -n "$2" ]; then
    for p in /proc/[0-9]*; do
      [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$2" ] && echo "${p#/proc/}"
    done
  fi
  for p in $(awk '$3 == "cgroup" {print $2; exit}' /proc/self/mounts); do
    [ -d "$p/$cg" ] && find "$p/$cg" -name cgroup.procs -exec cat {} + 2>/dev/null
  done
  return 0
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) echo "KUBECONFIG=$run/admin.kubeconfig" ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
