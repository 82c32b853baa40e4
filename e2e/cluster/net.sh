# Sourced by cluster.sh: the cluster's names and addresses, and the host
# side of its network and cgroups. Not run on its own.
#
# Network: a bridge on the host, bpfleet0 (10.211.0.1/24), with one veth
# per node; each node is a network namespace (bpfleet-node-a, ...) whose
# eth0 is 10.211.0.1N. Pods get 10.244.N.0/24 from the CNI bridge plugin
# inside their node's namespace, which masquerades what leaves the pod
# range; each node routes the other nodes' pod ranges to them over the
# bridge. Nothing is routed off the machine and no host iptables rule is
# added: kube-proxy's and CNI's rules live in the nodes' namespaces and go
# with them.

nodes=(${BPFLEET_CLUSTER_NODES:-node-a node-b})
bridge=bpfleet0
api_ip=10.211.0.1
api_port=6443
etcd_port=12379
etcd_peer_port=12380
service_cidr=10.96.0.0/24
service_api_ip=10.96.0.1
pod_cidr=10.244.0.0/16
cni_bin=/usr/lib/cni
images=${BPFLEET_CLUSTER_IMAGES:-$root/.cache/cluster/images}
pause_image=localhost/bpfleet/pause:local

node_ip() { echo "10.211.0.1$1"; }
node_pod_cidr() { echo "10.244.$1.0/24"; }
netns_name() { echo "bpfleet-$1"; }
cgroup_name() { echo "bpfleet-$1"; }

bridge_up() {
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add "$bridge" type bridge
    ip addr add "$api_ip/24" dev "$bridge"
  fi
  ip link set "$bridge" up
}

bridge_down() {
  ip link del "$bridge" 2>/dev/null || true
}

# node_network NAME INDEX: the node's namespace, its veth on the bridge, its
# address and routes.
node_network() {
  local n=$1 i=$2 ns host_if j
  ns=$(netns_name "$n")
  host_if="bpfl-$n"
  host_if=${host_if:0:15}
  [ -e "/run/netns/$ns" ] || ip netns add "$ns"
  if ! ip link show "$host_if" >/dev/null 2>&1; then
    ip link add "$host_if" type veth peer name eth0 netns "$ns"
  fi
  ip link set "$host_if" master "$bridge" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr replace "$(node_ip "$i")/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route replace default via "$api_ip"
  for ((j = 1; j <= ${#nodes[@]}; j++)); do
    [ "$j" = "$i" ] && continue
    ip -n "$ns" route replace "$(node_pod_cidr "$j")" via "$(node_ip "$j")"
  done
  ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
}

node_network_down() {
  local ns host_if="bpfl-$1"
  ns=$(netns_name "$1")
  ip link del "${host_if:0:15}" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
}

# node_cgroups NAME create|remove: the node's cgroup root in every cgroup v1
# hierarchy (and the v2 one when mounted), which its kubelet's cgroupRoot
# names. remove takes the tree away bottom-up; it is empty once the node's
# processes are gone.
node_cgroups() {
  local cg m
  cg=$(cgroup_name "$1")
  for m in $(awk '$3 == "cgroup" || $3 == "cgroup2" {print $2}' /proc/self/mounts); do
    if [ "$2" = create ]; then
      mkdir -p "$m/$cg"
      # cpuset children start empty: copy the parent's.
      if [ -f "$m/cpuset.cpus" ] && [ -f "$m/$cg/cpuset.cpus" ]; then
        [ -s "$m/$cg/cpuset.cpus" ] || cat "$m/cpuset.cpus" > "$m/$cg/cpuset.cpus"
        [ -s "$m/$cg/cpuset.mems" ] || cat "$m/cpuset.mems" > "$m/$cg/cpuset.mems"
      fi
    elif [ -d "$m/$cg" ]; then
      find "$m/$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
    fi
  done
}
