# One node of the cluster harness (cluster.sh starts it; not run by hand):
# runs in the node's network namespace and in a mount namespace of its own
# (unshare --propagation slave: the host's mounts reach it, its own mounts
# never reach the host), so that the node's containerd, kubelet, kube-proxy
# and pods see their own
#   /sys/fs/bpf      a bpffs of this node alone, shared so that the agent's
#                    HostToContainer mount sees pins made after it started
#   /var/log/pods    the kubelet's pod log directory (the tracer's pod
#                    identity), /var/lib/bpfleet (the agent's state),
#                    /run/containerd (the shims' sockets) and /run/netns
#                    (the pods' network namespaces), all from $d.
# Args: NAME DIR BIN NODE_IP KUBECONFIG IMAGES.
set -euo pipefail
n=$1 d=$2 bin=$3 ip=$4 kubeconfig=$5 images=$6

readlink /proc/self/ns/mnt > "$d/mntns"
# The host's bpffs goes from this namespace first (only from this one: the
# namespace is a slave): containerd judges a hostPath's propagation by the
# first mount on the path, and the host's is private here.
while mountpoint -q /sys/fs/bpf; do umount -l /sys/fs/bpf; done
mount -t bpf bpffs /sys/fs/bpf
mount --make-shared /sys/fs/bpf
for p in /var/log/pods:pods /var/lib/bpfleet:bpfleet /run/containerd:run /run/netns:netns; do
  mkdir -p "${p%%:*}"
  mount --bind "$d/${p#*:}" "${p%%:*}"
done

pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait' TERM INT EXIT

containerd --config "$d/containerd.toml" >> "$d/containerd.log" 2>&1 &
pids+=($!)
for ((i = 0; i < 240; i++)); do
  ctr --address "$d/containerd.sock" version >/dev/null 2>&1 && break
  sleep 0.5
done
# The images the pods run (the sandbox's among them): imported, never pulled.
for f in "$images"/*.tar; do
  for try in 1 2 3; do
    ctr --address "$d/containerd.sock" -n k8s.io images import "$f" >> "$d/import.log" 2>&1 && break
    echo "node $n: importing $f failed (try $try; $d/import.log)" >&2
    [ "$try" = 3 ] && exit 1
    sleep 2
  done
done
echo "node $n: images imported" >&2

"$bin/kubelet" --config "$d/kubelet.yaml" --kubeconfig "$kubeconfig" \
  --root-dir "$d/kubelet" --hostname-override "$n" --node-ip "$ip" --v=1 \
  >> "$d/kubelet.log" 2>&1 &
pids+=($!)
"$bin/kube-proxy" --config "$d/kube-proxy.yaml" --v=1 >> "$d/kube-proxy.log" 2>&1 &
pids+=($!)
wait -n
echo "node $n: a component exited; stopping the node" >&2
