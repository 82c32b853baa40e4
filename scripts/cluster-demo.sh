#!/usr/bin/env bash
# bpfleet on a real cluster, for a person to watch: the images built from
# Dockerfile.operator and Dockerfile.agent (e2e/cluster/images.sh), a
# two-node cluster on this machine (e2e/cluster/cluster.sh: kubelets,
# containerds, kube-proxies), `helm install` of charts/bpfleet, then:
#   1. the operator's two replicas and an agent pod per node Ready, and the
#      agents' real capabilities and seccomp mode read from /proc;
#   2. the HTTP tracer rolled out to both nodes by the operator (through the
#      agents' pods, mTLS from the chart's certificates), counting a server
#      pod's requests, labelled with its namespace and name;
#   3. syscount v1, then v2 by canary on one node of two, an agent pod
#      deleted in the pause, promoted; an unhealthy v3 rolled back;
#   4. `helm upgrade` to another agent image under traffic: the new agents
#      report every request, also those made while no agent ran;
#   5. everything deleted: the programs unloaded, `helm uninstall`, the
#      cluster stopped and removed.
# With --keep it stays up after step 4 until Ctrl-C and prints the
# KUBECONFIG to use. Run as root.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
keep=0
case "${1:-}" in
  --keep) keep=1 ;;
  "") ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "cluster-demo.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "cluster-demo.sh: run as root (it starts nodes)" >&2; exit 1; }
bin=$root/.cache/controlplane/bin
run=$root/.run/cluster
export KUBECONFIG=$run/admin.kubeconfig
export PATH=$bin:$PATH
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
bg=()
cleanup() {
  for p in "${bg[@]}"; do kill "$p" 2>/dev/null; done
  bash e2e/cluster/cluster.sh down >/dev/null
}
trap cleanup EXIT INT TERM
# in_net NODE CMD...: CMD in the node's network namespace.
in_net() { local n=$1; shift; nsenter --net="/run/netns/bpfleet-$n" "$@"; }
# agent_ip NODE: the pod IP of the node's agent that runs and is not going.
agent_ip() {
  kubectl get pods -n bpfleet-system -l app.kubernetes.io/component=agent \
    --field-selector "spec.nodeName=$1,status.phase=Running" -o json |
    python3 -c 'import json,sys; print([p["status"]["podIP"] for p in json.load(sys.stdin)["items"] if not p["metadata"].get("deletionTimestamp")][0])'
}
# web_metrics NODE: what the node's agent counted of the web pod.
web_metrics() {
  in_net "$1" curl -s "http://$(agent_ip "$1"):9091/metrics" |
    grep '^http_server_request_duration_seconds_count' | grep 'k8s_pod_name="web"' || true
}
# slots NODE: syscount's counting slots on the node's own bpffs (v1 counts
# into slot 0, v2 into 1, v3 into 2).
slots() {
  nsenter --mount="/proc/$(pgrep -f "node.sh $1 " | head -1)/ns/mnt" \
    bpftool -j map dump pinned /sys/fs/bpf/bpfleet/syscount/_map_counts |
    python3 -c 'import json,sys; d={e["formatted"]["key"]: e["formatted"]["value"] for e in json.load(sys.stdin)}; print("v1 %d  v2 %d  v3 %d" % (d.get(0,0), d.get(1,0), d.get(2,0)))'
}

say "images from the Dockerfiles (buildah, bases made from Debian's packages)"
bash e2e/cluster/images.sh
say "a two-node cluster: control plane on the host, each node its own namespaces"
bash e2e/cluster/cluster.sh down >/dev/null
bash e2e/cluster/cluster.sh up
kubectl get nodes -o wide

say "helm install (the chart's defaults; local images; no CAP_SYS_RESOURCE here)"
kubectl create namespace bpfleet-system
kubectl label namespace bpfleet-system pod-security.kubernetes.io/enforce=privileged
helm install bpfleet charts/bpfleet -n bpfleet-system --wait --timeout 300s \
  --set operator.image.repository=localhost/bpfleet/bpfleet-operator \
  --set operator.image.tag=dev --set operator.image.pullPolicy=Never \
  --set agent.image.repository=localhost/bpfleet/bpfleet-agent \
  --set agent.image.tag=dev --set agent.image.pullPolicy=Never \
  --set agent.grantSysResource=false --set agent.signatures.allowUnsigned=true
kubectl rollout status ds/bpfleet-agent -n bpfleet-system --timeout=180s
kubectl get pods -n bpfleet-system -o wide
kubectl get lease -n bpfleet-system bpfleet-operator -o jsonpath='leader: {.spec.holderIdentity}{"\n"}'
for pid in $(pgrep -x bpfleet-agent); do
  echo "agent pid $pid: $(grep -E '^(CapEff|Seccomp|NoNewPrivs):' "/proc/$pid/status" | tr -s '\t\n' '  ')"
done

say "the HTTP tracer rolled out to both nodes"
cargo build -q --locked -p bpfleet-bpf --bin bpfleet-objects -p bpfleet-tracer --bin http-tracer-manifest
for n in node-a node-b; do
  target/debug/bpfleet-objects "$run/$n/bpfleet/objects" >/dev/null
done
target/debug/http-tracer-manifest --object /var/lib/bpfleet/objects/http_tracer.bpf.o \
  --sha256 "$(sha256sum "$run/node-a/bpfleet/objects/http_tracer.bpf.o" | cut -d' ' -f1)" |
  kubectl apply --server-side -f -
kubectl wait tracerprogram/http-tracer --for=jsonpath='{.status.phase}'=Healthy --timeout=180s
kubectl get tracerprograms
bpftool prog show | grep -E '^[0-9]+: ' | grep -c tracepoint | sed 's/^/tracepoint programs loaded on this machine: /'

say "a server pod on node-a, requested from node-b; node-a's agent labels it from /var/log/pods"
kubectl create namespace shop
kubectl apply -f - <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  nodeSelector: {kubernetes.io/hostname: node-a}
  securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: web
      image: localhost/bpfleet/httpd:local
      imagePullPolicy: Never
      ports: [{containerPort: 8080, name: http}]
      readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 2}
      securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
YAML
kubectl wait -n shop pod/web --for=condition=Ready --timeout=120s
web=$(kubectl get pod -n shop web -o jsonpath='{.status.podIP}')
for d in "$run"/node-a/pods/shop_web_*; do echo "the kubelet wrote /var/log/pods/${d##*/}"; done
for _ in $(seq 20); do in_net node-b curl -s -o /dev/null "http://$web:8080/"; done
for _ in $(seq 5); do in_net node-b curl -s -o /dev/null "http://$web:8080/missing"; done
sleep 3
echo "+ node-a's agent /metrics (20 GET /, 5 GET /missing)"
web_metrics node-a

say "syscount v1, then v2 by canary on one node of two; an agent pod deleted in the pause"
python3 -c 'import os, time
while True:
    os.getppid(); time.sleep(0.001)' &
bg+=($!)
kubectl apply -f - <<'YAML'
apiVersion: bpfleet.dev/v1alpha1
kind: TracerPolicy
metadata: {name: syscount-health}
spec:
  targets: {programNames: [syscount]}
  health: {maxProgramFailures: 0, minSamples: 1, consecutiveFailureLimit: 1}
YAML
syscount() { # version object strategy
  cat <<YAML
apiVersion: bpfleet.dev/v1alpha1
kind: TracerProgram
metadata: {name: syscount}
spec:
  version: "$1"
  bytecode: {file: {path: /var/lib/bpfleet/objects/$2}}
  sha256: $(sha256sum "$run/node-a/bpfleet/objects/$2" | cut -d' ' -f1)
  programs:
    - {name: count_getppid, type: Tracepoint, tracepoint: {category: syscalls, name: sys_enter_getppid}}
  persistentMaps: [counts]
  strategy: $3
YAML
}
syscount 1.0.0 syscount_v1.bpf.o '{immediate: {}}' | kubectl apply -f -
kubectl wait tp/syscount --for=jsonpath='{.status.phase}'=Healthy --timeout=120s
syscount 2.0.0 syscount_v2.bpf.o '{canary: {steps: [{setNodePercent: 50}, {pause: {}}, {setNodePercent: 100}]}}' |
  kubectl apply -f -
kubectl wait tp/syscount --for=jsonpath='{.status.phase}'=Paused --timeout=120s
kubectl get tp syscount
sleep 2
canary=node-a
for n in node-a node-b; do
  c=$(slots "$n")
  echo "$n counts: $c"
  [ "$(awk '{print $4}' <<<"$c")" = 0 ] || canary=$n
done
echo "+ kubectl delete pod ($canary's agent, the canary's) in the pause"
kubectl delete pod -n bpfleet-system --field-selector "spec.nodeName=$canary" \
  -l app.kubernetes.io/component=agent --wait=true
kubectl rollout status ds/bpfleet-agent -n bpfleet-system --timeout=120s
kubectl get pods -n bpfleet-system -o wide -l app.kubernetes.io/component=agent
kubectl get tp syscount
echo "+ kubectl annotate tp syscount bpfleet.dev/promote=demo"
kubectl annotate tp syscount bpfleet.dev/promote=demo --overwrite
kubectl wait tp/syscount --for=jsonpath='{.status.phase}'=Healthy --timeout=120s
kubectl get tp syscount
sleep 2
for n in node-a node-b; do echo "$n counts: $(slots "$n")"; done

say "an unhealthy v3: program errors fail the analysis gate, rolled back"
syscount 3.0.0 syscount_faulty.bpf.o '{canary: {steps: [{setNodePercent: 50}, {analysis: {durationSeconds: 12, intervalSeconds: 3}}, {setNodePercent: 100}]}}' |
  kubectl apply -f -
kubectl wait tp/syscount --for=jsonpath='{.status.phase}'=Aborted --timeout=180s
kubectl get tp
kubectl get events --field-selector involvedObject.name=syscount --sort-by=.lastTimestamp | tail -4
sleep 2
for n in node-a node-b; do echo "$n counts: $(slots "$n")"; done

say "helm upgrade to another agent image (bpfleet-agent:next) under traffic"
(while :; do in_net node-b curl -s -o /dev/null "http://$web:8080/"; done) &
load=$!
bg+=("$load")
helm upgrade bpfleet charts/bpfleet -n bpfleet-system --reuse-values \
  --set agent.image.tag=next --wait --timeout 300s >/dev/null
kubectl rollout status ds/bpfleet-agent -n bpfleet-system --timeout=180s
sleep 2
kill "$load"
wait "$load" 2>/dev/null || true
kubectl get pods -n bpfleet-system -o wide
sleep 3
echo "+ node-a's new agent /metrics: every request since its predecessor's last read,"
echo "  those made while no agent ran on node-a included"
web_metrics node-a

if [ "$keep" = 1 ]; then
  say "up until Ctrl-C: export KUBECONFIG=$KUBECONFIG"
  sleep infinity &
  wait $! || true
fi

say "deleting: the programs unload, the release goes, the cluster stops"
kubectl delete tracerprogram --all --wait=true --timeout=120s
helm uninstall bpfleet -n bpfleet-system --wait --timeout 120s
for p in "${bg[@]}"; do kill "$p" 2>/dev/null || true; done
bash e2e/cluster/cluster.sh down
trap - EXIT INT TERM
