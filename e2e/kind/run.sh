#!/usr/bin/env bash
# e2e/kind/run.sh: the e2e scenario (e2e/scenario.sh, the same one e2e/cluster runs) on a
# dual-stack kind cluster with Multus, srv6pipes installed with `helm install` in Multus mode.
# For machines with docker, kind, helm and kubectl (a laptop, a CI runner); these CI machines have
# no docker, so it is not run by .ci/run. The cluster is deleted on exit (KEEP=1 keeps it).
#
#   e2e/kind/run.sh
#
# Environment: CLUSTER (default srv6pipes-e2e), MULTUS_MANIFEST (default: Multus v4.1.4's thin
# plugin DaemonSet).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cluster=${CLUSTER:-srv6pipes-e2e}
multus=${MULTUS_MANIFEST:-https://raw.githubusercontent.com/k8snetworkplumbingwg/multus-cni/v4.1.4/deployments/multus-daemonset.yml}
for t in docker kind helm kubectl cargo; do command -v $t >/dev/null || { echo "run.sh: $t is required" >&2; exit 1; }; done
work=$(mktemp -d)
cleanup() { [[ ${KEEP:-} ]] || kind delete cluster --name "$cluster" >/dev/null 2>&1; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/kind.yaml" <<Y
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking: {ipFamily: dual}
nodes: [{role: control-plane}, {role: worker}, {role: worker}]
Y
kind create cluster --name "$cluster" --config "$work/kind.yaml" --wait 180s
export KUBECONFIG=$work/kubeconfig
kind get kubeconfig --name "$cluster" > "$KUBECONFIG"
nodes=($(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o jsonpath='{.items[*].metadata.name}'))
# The node daemon pins under /sys/fs/bpf: kind's node containers do not mount bpffs by default.
for n in $(kind get nodes --name "$cluster"); do
  docker exec "$n" sh -c 'mountpoint -q /sys/fs/bpf || mount -t bpf bpffs /sys/fs/bpf'
done

"$repo/images/build" "$work/img"
for i in srv6pipes-node srv6pipes-operator srv6pipes-testbox; do kind load image-archive "$work/img/$i.tar" --name "$cluster"; done

kubectl apply -f "$multus"
kubectl -n kube-system rollout status daemonset/kube-multus-ds --timeout=180s

values=(--namespace kube-system --set cni.mode=multus --set cni.networkAttachmentDefinition.create=true
        --set image.pullPolicy=Never)
helm install srv6pipes "$repo/charts/srv6pipes" "${values[@]}" --wait --timeout 180s
# The upgrade the scenario runs under a steady flow: the node image's other tag.
SRV6PIPES_NAMESPACE=kube-system "$repo/e2e/scenario.sh" "${nodes[0]}" "${nodes[1]}" \
  helm upgrade srv6pipes "$repo/charts/srv6pipes" "${values[@]}" --set image.node.tag=latest --wait --timeout 180s \
  :: helm uninstall srv6pipes --namespace kube-system --wait
echo "kind e2e: passed"
