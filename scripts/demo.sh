#!/usr/bin/env bash
# The main job, locally: a real control plane (etcd + kube-apiserver), the
# bpfleet CRDs, the operator, and three node agents as local processes
# standing for three nodes (Node objects annotated with each agent's
# socket; each agent pins under /sys/fs/bpf/bpfleet-<node>/), and a local
# OCI registry (Debian's docker-registry, TLS from a CA made here, basic
# auth) holding the programs as images pushed by `kubectl bpfleet image
# push` and signed by cosign. Then:
#   1. the HTTP tracer rolled out to every node from its image (a pull
#      secret, cosign verified by each agent), traffic to a local server,
#      and what the agents' metrics say about it;
#   2. a syscall counter v1, then v2 by canary (one node, pause, all), shown
#      as `kubectl get tp -w` would;
#   3. a deliberately unhealthy v3 that fails its analysis gate and is
#      rolled back automatically, explained by `kubectl bpfleet status`;
#   4. everything deleted: the finalizer unloads every program from every node.
# With --keep it stays up after step 3 until Ctrl-C and prints the
# KUBECONFIG to use. Run as root (the agents load BPF programs).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

keep=0
case "${1:-}" in
  --keep) keep=1 ;;
  "") ;;
  -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "demo.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (the agents load BPF programs)" >&2; exit 1; }

run=$root/.run
rm -rf "$run"
mkdir -p "$run"
export KUBECONFIG=$run/kubeconfig
export PATH=$root/.cache/controlplane/bin:$root/target/debug:$PATH
nodes=(node-a node-b node-c)
pids=()

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  for n in "${nodes[@]}"; do rm -rf "/sys/fs/bpf/bpfleet-$n"; done
}
trap cleanup EXIT INT TERM

say "building the control plane harness, operator, agent and example objects"
cargo build -q --locked -p bpfleet-e2e --bin bpfleet-controlplane \
  -p bpfleet-operator --bin bpfleet-operator --bin kubectl-bpfleet \
  -p bpfleet-agent --bin bpfleet-agent -p bpfleet-bpf --bin bpfleet-objects \
  -p bpfleet-tracer --bin http-tracer-manifest
bpfleet-objects "$run/objects" >/dev/null
sha() { sha256sum "$run/objects/$1" | cut -d' ' -f1; }

say "a local registry with TLS and basic auth; the programs pushed as signed images"
reg=$run/registry
mkdir -p "$reg/data"
reg_host=127.0.0.1:5443
reg_user=demo
reg_pass=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=bpfleet-demo-ca -keyout "$reg/ca.key" -out "$reg/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
  -keyout "$reg/tls.key" -out "$reg/tls.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$reg/san.ext"
openssl x509 -req -in "$reg/tls.csr" -CA "$reg/ca.pem" -CAkey "$reg/ca.key" -CAcreateserial \
  -days 1 -extfile "$reg/san.ext" -out "$reg/tls.crt" 2>/dev/null
htpasswd -Bbn "$reg_user" "$reg_pass" >"$reg/htpasswd" 2>/dev/null
cat >"$reg/config.yml" <<YAML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $reg/data}}
http: {addr: $reg_host, tls: {certificate: $reg/tls.crt, key: $reg/tls.key}}
auth: {htpasswd: {realm: bpfleet-demo, path: $reg/htpasswd}}
YAML
docker-registry serve "$reg/config.yml" >"$reg/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' --cacert "$reg/ca.pem" "https://$reg_host/v2/")" = 401 ] && break
  sleep 0.2
done
# cosign offline: no transparency log, no trusted-root download, and no way
# out but loopback (the proxy variables point at a closed port).
cosign_offline() {
  HOME=$run/cosign-home DOCKER_CONFIG=$run/cosign-home TUF_ROOT=$run/cosign-home/tuf \
    HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.1,localhost \
    COSIGN_PASSWORD=demo cosign "$@"
}
mkdir -p "$run/cosign-home" "$run/keys"
(cd "$run/keys" && cosign_offline generate-key-pair >/dev/null 2>&1)
export BPFLEET_REGISTRY_PASSWORD=$reg_pass
push() { # object repository:tag program=type...
  local obj=$1 ref=$2 out ref_pinned
  shift 2
  local args=()
  for p in "$@"; do args+=(--program "$p"); done
  out=$(kubectl-bpfleet image push "$run/objects/$obj" "$reg_host/$ref" "${args[@]}" \
    --username "$reg_user" --registry-ca "$reg/ca.pem")
  ref_pinned=$(awk '/^    reference: /{print $2}' <<<"$out")
  cosign_offline sign --key "$run/keys/cosign.key" --tlog-upload=false --yes \
    --registry-cacert "$reg/ca.pem" --registry-username "$reg_user" \
    --registry-password "$reg_pass" "$ref_pinned" >"$reg/sign.log" 2>&1 \
    || { cat "$reg/sign.log" >&2; exit 1; }
  echo "$ref_pinned"
}
tracer_programs=()
for p in $(http-tracer-manifest --object /x --sha256 "$(sha http_tracer.bpf.o)" | awk '/- \{name: /{gsub(",", "", $3); print $3}'); do
  tracer_programs+=("$p=tracepoint")
done
declare -A image
image[http_tracer.bpf.o]=$(push http_tracer.bpf.o bpfleet/http-tracer:1.0.0 "${tracer_programs[@]}")
for v in v1 v2 faulty; do
  image[syscount_$v.bpf.o]=$(push "syscount_$v.bpf.o" "bpfleet/syscount:$v" count_getppid=tracepoint)
done
echo "pushed (kubectl bpfleet image push) and signed (cosign sign):"
for k in "${!image[@]}"; do echo "  ${image[$k]}"; done

say "starting etcd + kube-apiserver and installing the CRDs"
bpfleet-controlplane --kubeconfig "$KUBECONFIG" --install-crds >"$run/controlplane.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 240); do
  grep -q '^KUBECONFIG=' "$run/controlplane.log" 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$run/controlplane.log" >&2; exit 1; }
  sleep 0.5
done
grep -q '^KUBECONFIG=' "$run/controlplane.log" || { echo "control plane did not come up" >&2; cat "$run/controlplane.log" >&2; exit 1; }
kubectl get crd

say "three node agents (local processes) and their Node objects"
i=0
for n in "${nodes[@]}"; do
  mkdir -p "$run/$n"
  rm -rf "/sys/fs/bpf/bpfleet-$n"
  bpfleet-agent serve --pin-root "/sys/fs/bpf/bpfleet-$n" --state-file "$run/$n/state.json" \
    --audit-log "$run/$n/audit.jsonl" --socket "$run/$n/agent.sock" \
    --trusted-key "$run/keys/cosign.pub" --registry-ca "$reg/ca.pem" \
    --node-name "$n" --metrics-listen "127.0.0.1:$((9101 + i))" >"$run/$n/agent.log" 2>&1 &
  pids+=($!)
  i=$((i + 1))
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $n
  labels: {kubernetes.io/hostname: $n, kubernetes.io/os: linux}
  annotations: {bpfleet.dev/agent-endpoint: "unix://$run/$n/agent.sock"}
EOF
done
kubectl get nodes -L kubernetes.io/hostname 2>/dev/null || kubectl get nodes

echo "+ the registry's credentials, a dockerconfigjson Secret in the operator's namespace"
kubectl create secret docker-registry demo-registry --docker-server="$reg_host" \
  --docker-username="$reg_user" --docker-password="$reg_pass" -n default >/dev/null
kubectl get secret demo-registry -n default

say "the operator"
bpfleet-operator --namespace default --metrics-listen 127.0.0.1:9100 --resync-seconds 10 \
  >"$run/operator.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 60); do curl -sf http://127.0.0.1:9100/readyz >/dev/null && break; sleep 0.5; done
curl -sf http://127.0.0.1:9100/readyz

wait_phase() { # name phase [revision-field=value] timeout
  kubectl wait --for=jsonpath='{.status.phase}'="$2" "tp/$1" --timeout="${3:-120s}" >/dev/null
}

say "1. the HTTP tracer on every node"
http-tracer-manifest --image "${image[http_tracer.bpf.o]}" --pull-secret demo-registry \
  --sha256 "$(sha http_tracer.bpf.o)" >"$run/http-tracer.yaml"
grep -A3 'bytecode:' "$run/http-tracer.yaml"
kubectl apply -f "$run/http-tracer.yaml"
wait_phase http-tracer Healthy
kubectl get tp http-tracer
echo "+ a TracerPolicy narrows it to one port: written into every node's maps, no reload"
kubectl apply -f - <<EOF
apiVersion: bpfleet.dev/v1alpha1
kind: TracerPolicy
metadata: {name: http-tracer-demo}
spec:
  targets: {programNames: [http-tracer]}
  config:
    payloadBytes: 512
    filters: {ports: [18080]}
EOF
kubectl wait --for=condition=Ready tpol/http-tracer-demo --timeout=60s >/dev/null
kubectl get tpol http-tracer-demo
kubectl get tp http-tracer -o jsonpath='{.status.policy}{"\n"}'
python3 -m http.server 18080 --bind 127.0.0.1 --directory "$run/objects" >/dev/null 2>&1 &
pids+=($!)
sleep 1
for _ in $(seq 1 20); do curl -s -o /dev/null http://127.0.0.1:18080/; curl -s -o /dev/null http://127.0.0.1:18080/missing; done
sleep 2
echo "+ curl node-a's agent metrics (HTTP requests it traced)"
curl -s http://127.0.0.1:9101/metrics | grep -E '^(http_server_request_duration_seconds_count|bpfleet_program_runs_total)' | head -8 || true

say "2. syscount v1 (immediate), then v2 by canary"
python3 -c 'import os, time
while True:
    os.getppid(); time.sleep(0.001)' &
pids+=($!)
kubectl apply -f - <<EOF
apiVersion: bpfleet.dev/v1alpha1
kind: TracerPolicy
metadata: {name: syscount-health}
spec:
  targets: {programNames: [syscount]}
  health: {maxProgramFailures: 0, minSamples: 1, consecutiveFailureLimit: 1}
EOF
syscount() { # version object strategy
  cat <<EOF
apiVersion: bpfleet.dev/v1alpha1
kind: TracerProgram
metadata: {name: syscount}
spec:
  version: "$1"
  bytecode: {image: {reference: "${image[$2]}", pullSecret: demo-registry}}
  sha256: $(sha "$2")
  programs:
    - {name: count_getppid, type: Tracepoint, tracepoint: {category: syscalls, name: sys_enter_getppid}}
  persistentMaps: [counts]
  strategy: $3
EOF
}
syscount 1.0.0 syscount_v1.bpf.o '{immediate: {}}' | kubectl apply -f -
wait_phase syscount Healthy
kubectl get tp syscount
kubectl get tp syscount -w >"$run/watch.log" 2>&1 &
watch_pid=$!
pids+=("$watch_pid")
syscount 2.0.0 syscount_v2.bpf.o '{canary: {steps: [{setNodePercent: 33}, {pause: {duration: 5s}}, {setNodePercent: 100}]}}' | kubectl apply -f -
until [ "$(kubectl get tp syscount -o jsonpath='{.status.phase}/{.status.history[0].version}')" = Healthy/2.0.0 ]; do
  sleep 1
done
sleep 1
kill "$watch_pid" 2>/dev/null || true
echo "+ kubectl get tp syscount -w"
cat "$run/watch.log"

say "3. an unhealthy v3: program errors fail the analysis gate, rolled back"
syscount 3.0.0 syscount_faulty.bpf.o '{canary: {steps: [{setNodePercent: 33}, {analysis: {durationSeconds: 12, intervalSeconds: 3}}, {setNodePercent: 100}]}}' | kubectl apply -f -
wait_phase syscount Aborted 120s
kubectl get tp
echo "+ kubectl bpfleet status syscount"
kubectl-bpfleet status syscount
echo "+ kubectl get events (syscount)"
kubectl get events --field-selector involvedObject.name=syscount --sort-by=.lastTimestamp 2>/dev/null | tail -8 || true

if [ "$keep" = 1 ]; then
  echo
  echo "everything stays up; in another shell: export KUBECONFIG=$KUBECONFIG PATH=$root/.cache/controlplane/bin:$root/target/debug:\$PATH"
  echo "Ctrl-C stops it."
  wait "${pids[1]}"
fi

say "4. delete: the finalizer unloads every program from every node"
kubectl delete tp --all --wait=true --timeout=120s
left=$(find "${nodes[@]/#//sys/fs/bpf/bpfleet-}" -type f 2>/dev/null | wc -l)
echo "pins left under the agents' roots: $left"
[ "$left" = 0 ]
echo "demo done"
