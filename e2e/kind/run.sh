#!/usr/bin/env bash
# e2e/kind/run.sh: the e2e scenario (e2e/scenario.sh, the same one e2e/cluster runs) on a
# dual-stack kind cluster (a control plane and two workers) with Multus, srv6pipes installed with
# `helm install` in Multus mode. Runs with no registry and no internet but Debian's packages and
# the Go module proxy; `scripts/test --kind` runs it.
#
#   e2e/kind/run.sh            as root; KEEP=1 keeps the cluster and the engine
#
# What it does, and what it leaves:
# 1. Builds, all cached under ~/.cache/srv6pipes: kind, kubectl and Helm (scripts/kube-build),
#    the node image and the cluster's images (e2e/kind/node-image), srv6pipes' images
#    (images/build).
# 2. Starts a private Docker engine (e2e/kind/engine: Debian's docker.io in its own network
#    namespace, installed if missing) unless one runs; everything below runs in that namespace
#    (kind's API server port is published on its 127.0.0.1), so the host's interfaces, routes and
#    iptables are never touched.
# 3. `kind create cluster` with the node image, no default CNI: the pod network is the `ptp` CNI
#    plugin with host-local IPAM over each node's pod CIDRs (both families) and a route per
#    peer node's CIDR (what kind's kindnetd does, without its image); then Multus (the vendored
#    e2e/kind/multus-daemonset.yml), `helm install`, the scenario, with `helm upgrade` under a
#    steady flow and `helm uninstall` at the end.
# 4. On exit: `kind delete cluster`, and the engine stopped if this run started it (which
#    deletes its namespace and restores the host sysctls kind's nodes change).
#
# Environment: CLUSTER (default srv6pipes-e2e), KUBE_VERSION (default v1.36.3, as node-image's:
# kind v0.31.0, the last release whose node files run on these cgroup-v1 hosts, writes kubeadm's
# v1beta3 configuration, which kubeadm 1.37 no longer reads; the other tiers run 1.37,
# scripts/kube-build's default).
set -euo pipefail
export KUBE_VERSION="${KUBE_VERSION:-v1.36.3}"
repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/e2e/kind
cluster=${CLUSTER:-srv6pipes-e2e}
stamp() { echo "kind e2e: $(date +%T) $*"; }

if [[ -z ${SRV6PIPES_KIND_WORK:-} ]]; then
  [[ $(id -u) == 0 ]] || { echo "run.sh: needs root (a Docker engine, network namespaces)" >&2; exit 1; }
  for t in go cargo gcc ip nsenter; do command -v $t >/dev/null || { echo "run.sh: $t is required" >&2; exit 1; }; done
  bin=$("$repo/scripts/kube-build" kind kubectl helm)
  work=$(mktemp -d /var/tmp/srv6pipes-kind.XXXXXX)
  stop_engine=
  [[ -f /run/srv6pipes-kind/started ]] || stop_engine=1
  # What the host has before, to prove afterwards that the run left nothing on it.
  host_state() (
    set +e +o pipefail
    ip -o link show | awk -F': ' '{print $2}' | sort
    ip route show; ip -6 route show; ip netns list; iptables-save | grep -v '^[#:]'; ip6tables-save | grep -v '^[#:]'
    sysctl -n kernel.panic kernel.panic_on_oops vm.overcommit_memory fs.inotify.max_user_instances \
      fs.inotify.max_user_watches net.ipv4.ip_forward net.ipv6.conf.all.forwarding
    findmnt -rn -o TARGET | grep -v '^/proc/' | sort
  )
  host_state >"$work/host-before"
  # On any exit: the engine stopped if this run started it, then the host compared with before.
  finish() {
    local rc=$1
    if [[ -n $stop_engine && -z ${KEEP:-} ]]; then
      "$here/engine" stop
      host_state >"$work/host-after"
      if ! diff "$work/host-before" "$work/host-after" >&2; then
        echo "kind e2e: FAILED: the host is not as it was before the run (diff above)" >&2
        rc=1
      else
        echo "kind e2e: the host is as before the run (links, routes, netns, iptables, sysctls, mounts)"
      fi
      pgrep -f "srv6pipes-kind/docker.sock" >&2 && { echo "kind e2e: FAILED: dockerd still runs" >&2; rc=1; }
    fi
    rm -rf "$work"
    exit "$rc"
  }
  trap 'finish $?' EXIT
  stamp "engine"
  engine_env=$("$here/engine" start)
  eval "$engine_env"
  stamp "node image"
  image=$("$here/node-image")
  stamp "srv6pipes images"
  "$repo/images/build" "$work/img" >/dev/null
  # Into the engine's network namespace; `finish` runs when it returns.
  SRV6PIPES_KIND_WORK=$work SRV6PIPES_KIND_IMAGE=$image PATH="$bin:$PATH" "$here/engine" exec "$0" "$@"
  exit
fi

work=$SRV6PIPES_KIND_WORK
cleanup() { [[ ${KEEP:-} ]] || kind delete cluster --name "$cluster" >/dev/null 2>&1 || true; }
trap cleanup EXIT

etcd_tag=$(docker image inspect -f '{{index .Config.Labels "io.srv6pipes.etcd-tag"}}' "$SRV6PIPES_KIND_IMAGE")
cat >"$work/kind.yaml" <<Y
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking: {ipFamily: dual, disableDefaultCNI: true}
nodes: [{role: control-plane}, {role: worker}, {role: worker}]
kubeadmConfigPatches:
- |
  kind: ClusterConfiguration
  etcd: {local: {imageTag: "$etcd_tag"}}
- |
  kind: KubeletConfiguration
  failCgroupV1: false  # these hosts are cgroup v1: kubelet 1.35 and later refuse them otherwise
Y
stamp "kind create cluster"
kind create cluster --name "$cluster" --image "$SRV6PIPES_KIND_IMAGE" --config "$work/kind.yaml"
export KUBECONFIG=$work/kubeconfig
kind get kubeconfig --name "$cluster" >"$KUBECONFIG"
all=($(kind get nodes --name "$cluster"))

stamp "pod network"
# Each node: forwarding on, a ptp conflist over its pod CIDRs, a route to each peer's CIDRs via
# that peer's address on kind's network.
declare -A cidrs addrs
for n in "${all[@]}"; do
  cidrs[$n]=$(kubectl get node "$n" -o jsonpath='{.spec.podCIDRs[*]}')
  addrs[$n]=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{.GlobalIPv6Address}}{{end}}' "$n")
done
for n in "${all[@]}"; do
  read -r c4 c6 <<<"${cidrs[$n]}"
  docker exec -i "$n" sh -c 'sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 &&
    cat >/etc/cni/net.d/10-ptp.conflist' <<J
{"cniVersion": "0.4.0", "name": "kind-ptp", "plugins": [
  {"type": "ptp", "mtu": 1500, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$c4"}], [{"subnet": "$c6"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
J
  for m in "${all[@]}"; do
    [[ $m == "$n" ]] && continue
    read -r p4 p6 <<<"${cidrs[$m]}"
    read -r a4 a6 <<<"${addrs[$m]}"
    docker exec "$n" ip route replace "$p4" via "$a4"
    docker exec "$n" ip -6 route replace "$p6" via "$a6"
  done
done
kubectl wait --for=condition=Ready node --all --timeout=180s
nodes=($(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o jsonpath='{.items[*].metadata.name}'))

stamp "images, Multus"
for i in srv6pipes-node srv6pipes-operator srv6pipes-stream srv6pipes-testbox; do
  kind load image-archive "$work/img/$i.tar" --name "$cluster"
done
kubectl apply -f "$here/multus-daemonset.yml"
kubectl -n kube-system rollout status daemonset/kube-multus-ds --timeout=180s

stamp "helm install"
# The stream proxies (SRv6 pipes) in the namespace of the scenario's applications, whose chains
# select them.
values=(--namespace kube-system --set cni.mode=multus --set cni.networkAttachmentDefinition.create=true
  --set image.pullPolicy=Never --set stream.enabled=true --set stream.namespace=e2e-apps)
kubectl create namespace e2e-apps >/dev/null
helm install srv6pipes "$repo/charts/srv6pipes" "${values[@]}" --wait --timeout 180s
stamp "scenario"
# The upgrade the scenario runs under a steady flow: the node image's other tag.
SRV6PIPES_NAMESPACE=kube-system "$repo/e2e/scenario.sh" "${nodes[0]}" "${nodes[1]}" \
  helm upgrade srv6pipes "$repo/charts/srv6pipes" "${values[@]}" --set image.node.tag=latest --wait --timeout 180s \
  :: helm uninstall srv6pipes --namespace kube-system --wait
stamp "passed"
