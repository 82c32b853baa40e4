# Entry points; README.md explains each. All of them set the machine up first.
.PHONY: setup demo cluster-demo test crds

setup:
	bash scripts/setup.sh

## The main job: local control plane, CRDs, examples, `kubectl get`.
demo: setup
	bash scripts/demo.sh

## bpfleet on a real two-node cluster (kubelets, containerds, images built
## from the Dockerfiles, helm install), for a person to watch.
cluster-demo: setup
	bash scripts/cluster-demo.sh

## Every check CI runs: fmt, stale CRDs, clippy, all tests (as root).
test: setup
	bash scripts/test.sh

## Regenerate crds/ and charts/bpfleet/crds/ after changing the API types.
crds:
	cargo run -q -p bpfleet-api --bin crdgen
