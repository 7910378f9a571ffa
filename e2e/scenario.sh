#!/usr/bin/env bash
# The e2e scenario on a real Kubernetes with srv6pipes deployed from the chart, shared by
# e2e/cluster (this machine) and e2e/kind/run.sh. Needs kubectl and $KUBECONFIG.
#
#   e2e/scenario.sh NODE1 NODE2 [REDEPLOY_CMD...] [:: UNINSTALL_CMD...]
#
# Client on NODE1, server on NODE2, VNF "fw" on NODE1 and "ids" on NODE2 (test image pods that
# ask for the srv6pipes network by annotation), all in a namespace of their own (e2e-apps, or
# SRV6PIPES_APPS_NAMESPACE), as applications run: not `default`, not srv6pipes' (the VNFs name
# the network as `default/srv6pipes`, the NetworkAttachmentDefinition in `default` that the
# chart makes in Multus mode; in chained mode srv6pipes reads only the name). A ServiceChain
# client -> fw -> ids -> server is applied with kubectl; then: it is Ready, it steers (each
# VNF's chain interface counts the pings), the return path answers, a Service answers beside
# it, SRv6 pipes (when the release deploys stream proxies in that namespace: a chain of fw then
# a `replace` stream function rewrites the web pod's HTTP answer, before and after the upgrade),
# a DaemonSet pod deleted and recreated under a steady flow loses no packet (its Role deleted
# meanwhile: a refused identity is no uninstall), REDEPLOY_CMD (an upgrade: new pod template,
# fresh daemons reloading their BPF objects) loses none either, RBAC refuses the node daemon's
# identity what it must not write, the node-writes admission policy refuses one node's daemon
# another node's objects, and deleting the chains unsteers. Then UNINSTALL_CMD (helm uninstall,
# or its equivalent) must leave neither node with srv6pipes' CNI binary or conflist entry, pins
# or routes to locators, and pods must still start. Prints one line per check; exits non-zero
# at the first failure.
set -euo pipefail
n1=$1 n2=$2; shift 2
redeploy=() uninstall=()
while (($#)) && [[ $1 != "::" ]]; do redeploy+=("$1"); shift; done
(($#)) && { shift; uninstall=("$@"); }
ns=${SRV6PIPES_NAMESPACE:-kube-system}
apps=${SRV6PIPES_APPS_NAMESPACE:-e2e-apps}
image=${TESTBOX_IMAGE:-localhost/srv6pipes-testbox:latest}
t=$(mktemp -d); trap 'rm -rf "$t"' EXIT
ok() { echo "scenario: ok: $*"; }
fail() { echo "scenario: FAILED: $*" >&2; exit 1; }

pod() { # NAME NODE LABEL [vnf | host | ""] [COMMAND]: vnf asks for the srv6pipes network (and
        # may set its own firewall rules: NET_ADMIN, as a firewall VNF has); host
        # is a probe on the node's network with its CNI directories and bpffs mounted read-only
        # under /host; COMMAND (sh -c) instead of idling
  local ann="" host="" mounts="" caps="" cmd=${5:-"trap 'exit 0' TERM; while true; do sleep 1; done"}
  if [[ ${4:-} == vnf ]]; then
    ann="annotations: {k8s.v1.cni.cncf.io/networks: default/srv6pipes}"
    caps="securityContext: {capabilities: {add: [NET_ADMIN]}}"
  fi
  if [[ ${4:-} == host ]]; then
    host="hostNetwork: true"
    mounts="volumeMounts: [{name: bin, mountPath: /host/cni/bin, readOnly: true}, {name: conf, mountPath: /host/cni/net.d, readOnly: true}, {name: bpf, mountPath: /host/bpf, readOnly: true}]"
  fi
  cat <<Y
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: $apps, labels: {$3}, $ann}
spec:
  nodeName: $2
  $host
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
  - name: box
    image: $image
    imagePullPolicy: IfNotPresent
    command: ["/bin/sh", "-c", "$cmd"]
    $caps
    $mounts
Y
  [[ $host ]] && cat <<Y
  volumes:
  - {name: bin, hostPath: {path: /opt/cni/bin}}
  - {name: conf, hostPath: {path: /etc/cni/net.d}}
  - {name: bpf, hostPath: {path: /sys/fs/bpf}}
Y
  echo "---"
}
{ pod e2e-client "$n1" "app: e2e-client"; pod e2e-server "$n2" "app: e2e-server"
  pod e2e-fw "$n1" "vnf: e2e-fw" vnf; pod e2e-ids "$n2" "vnf: e2e-ids" vnf
  # A web server behind a Service (kube-proxy): Services must keep working beside the chains.
  pod e2e-web "$n2" "app: e2e-web" "" "mkdir -p /tmp/www; echo e2e-web > /tmp/www/index.html; exec httpd -f -p 8080 -h /tmp/www"
  cat <<Y
apiVersion: v1
kind: Service
metadata: {name: e2e-web, namespace: $apps}
spec: {selector: {app: e2e-web}, ports: [{port: 80, targetPort: 8080}]}
Y
} > "$t/pods.yaml"
# (Made beforehand when the release deploys the stream proxies there; deleted at the end only if
# made here.)
made_apps=
kubectl get namespace "$apps" >/dev/null 2>&1 || { kubectl create namespace "$apps" >/dev/null; made_apps=1; }
# The namespace's ServiceAccount comes from the controller-manager, and pods wait for it.
for i in $(seq 100); do kubectl -n "$apps" get serviceaccount default >/dev/null 2>&1 && break; sleep 0.2; done
kubectl apply -f "$t/pods.yaml" >/dev/null
kubectl -n "$apps" wait --for=condition=Ready pod/e2e-client pod/e2e-server pod/e2e-fw pod/e2e-ids pod/e2e-web --timeout=120s >/dev/null
ok "pods Running on $n1 and $n2"
ex() { kubectl -n "$apps" exec "$1" -- "${@:2}"; }
ex e2e-fw ip link show net1 >/dev/null && ex e2e-ids ip link show net1 >/dev/null || fail "annotated VNF pods have no net1"
! ex e2e-client ip link show net1 >/dev/null 2>&1 || fail "the client (not annotated) got a chain interface"
ok "annotated pods got net1, the others only the primary network"

server=$(ex e2e-server ip -6 -o addr show dev eth0 scope global | awk '{print $4}' | cut -d/ -f1 | head -1)
[[ $server ]] || fail "server has no global IPv6 address"
sleep 1.5   # DAD of fresh IPv6 addresses
rx() { ex "$1" cat /sys/class/net/net1/statistics/rx_packets; }
ping_ok() { ex e2e-client ping -6 -c "$1" -i "${2:-0.05}" -W 2 "$server" > "$t/ping" 2>&1 || true
  grep -q " 0% packet loss" "$t/ping"; }
ping_ok 3 || fail "client cannot reach server $server unchained: $(cat "$t/ping")"
fw0=$(rx e2e-fw) ids0=$(rx e2e-ids)
ping_ok 5 || fail "ping"
(( $(rx e2e-fw) - fw0 < 5 && $(rx e2e-ids) - ids0 < 5 )) || fail "VNFs saw the pings before any chain"
ok "unchained: client reaches server $server, the VNFs see nothing"

cat > "$t/chain.yaml" <<Y
apiVersion: srv6pipes.io/v1alpha1
kind: ServiceChain
metadata: {name: e2e, namespace: $apps}
spec:
  sources: {podSelector: {matchLabels: {app: e2e-client}}}
  match: {destinationPrefixes: ["$server/128"]}
  functions:
    - {name: fw, podSelector: {matchLabels: {vnf: e2e-fw}}}
    - {name: ids, podSelector: {matchLabels: {vnf: e2e-ids}}}
Y
kubectl apply -f "$t/chain.yaml" >/dev/null
kubectl -n "$apps" wait --for=condition=Ready servicechain/e2e --timeout=60s >/dev/null || { kubectl -n "$apps" get servicechain e2e -o yaml >&2; fail "chain not Ready"; }
kubectl -n "$apps" get servicechains | tee "$t/chains" | grep -E "^e2e +True +Programmed" >/dev/null || fail "kubectl get servicechains: $(cat "$t/chains")"
# The operator records the chain's Ready transition as an Event in the chain's namespace.
chain_event() { kubectl -n "$apps" get events.events.k8s.io -o json | jq -e '[.items[] | select(.regarding.kind == "ServiceChain"
  and .regarding.name == "e2e" and .regarding.namespace == "'"$apps"'")] | length > 0' >/dev/null; }
for i in $(seq 20); do chain_event && break; sleep 0.25; done
chain_event || fail "no Event on chain $apps/e2e: $(kubectl -n "$apps" get events.events.k8s.io 2>&1)"
ok "kubectl get servicechains -n $apps: e2e Ready (Programmed), with its Event"
# Programs reach both nodes' datapaths right after Ready: allow them a moment.
for i in $(seq 20); do fw0=$(rx e2e-fw); ex e2e-client ping -6 -c1 -W1 "$server" >/dev/null 2>&1 || true; (( $(rx e2e-fw) > fw0 )) && break; sleep 0.25; done
fw0=$(rx e2e-fw) ids0=$(rx e2e-ids)
ping_ok 20 || fail "steered ping lost packets (return path): $(cat "$t/ping")"
dfw=$(( $(rx e2e-fw) - fw0 )) dids=$(( $(rx e2e-ids) - ids0 ))
(( dfw >= 20 && dids >= 20 )) || fail "not steered: fw net1 +$dfw, ids net1 +$dids packets for 20 pings"
ok "steered: 20/20 replies; fw net1 +$dfw, ids net1 +$dids packets"

# A rejecting firewall: the client hears its reset at once, though kube-proxy drops what conntrack
# calls INVALID and its node's conntrack never saw the steered SYN (the VNF's stack routes the
# reset out of net1 by the reply mark, and the node sends it to the client past netfilter).
ex e2e-fw nft "add table inet e2e; add chain inet e2e filter { type filter hook forward priority 0; };
  add rule inet e2e filter iifname net1 tcp dport 7 reject with tcp reset" || fail "nft in e2e-fw"
ex e2e-client nc -w 5 "$server" 7 </dev/null > "$t/nc" 2>&1 || true
grep -q "refused" "$t/nc" || fail "the firewall's reset did not reach the client: $(cat "$t/nc")"
ex e2e-fw nft delete table inet e2e
ok "a rejecting firewall's reset reaches the client: $(grep -o 'Connection refused' "$t/nc")"

# The CLI against the cluster (SRV6PIPES_CLI: the srv6pipes binary), as a user bound to the
# chart's read-only viewer roles: the chain, and live counters from both nodes' daemons through
# the API server.
if [[ ${SRV6PIPES_CLI:-} ]]; then
  viewer() { kubectl "$1" "$2" e2e-viewer "${@:3}" >/dev/null; }
  viewer create serviceaccount -n default
  viewer create clusterrolebinding --clusterrole=srv6pipes-viewer --serviceaccount=default:e2e-viewer
  viewer create rolebinding -n "$ns" --role=srv6pipes-viewer --serviceaccount=default:e2e-viewer
  kubectl config view --minify --raw > "$t/viewer"
  KUBECONFIG=$t/viewer kubectl config set-credentials e2e-viewer --token="$(kubectl create token e2e-viewer -n default)" >/dev/null
  KUBECONFIG=$t/viewer kubectl config set-context --current --user=e2e-viewer >/dev/null
  cli() { "$SRV6PIPES_CLI" "$@" --kubeconfig "$t/viewer"; }
  cli wait e2e -n "$apps" --timeout 10s | grep -q "^$apps/e2e: Ready (Programmed)" || fail "srv6pipes wait e2e -n $apps"
  cli chains -A | tee "$t/cli-chains" | grep -Eq "^$apps/e2e +True +Programmed +fw,ids +1 " || fail "srv6pipes chains: $(cat "$t/cli-chains")"
  cli trace "$apps/e2e" -o json > "$t/trace.json" || fail "srv6pipes trace $apps/e2e"
  jq -e --arg n1 "$n1" --arg apps "$apps" '.sources == [{pod: "\($apps)/e2e-client", node: $n1}] and .unreachable == null
    and .headends[0].node == $n1 and .headends[0].packets >= 20 and .decap.counters.packets >= 20
    and ([.hops[].replicas[].counters.packets] | length == 2 and all(. >= 20))' "$t/trace.json" >/dev/null \
    || fail "srv6pipes trace e2e -o json: $(cat "$t/trace.json")"
  cli trace e2e -n "$apps" -o dot | grep -q "r2_0 -> d \[label=" || fail "srv6pipes trace e2e -n $apps -o dot"
  cli stats -n "$apps" -o json | jq -e --arg apps "$apps" '.unreachable == null and ([.sids[] | select(.pod == "\($apps)/e2e-fw" or .pod == "\($apps)/e2e-ids") | .packets]
    | length == 2 and all(. >= 20)) and ([.chains[] | select(.chain == "\($apps)/e2e")] | length == 1)' >/dev/null \
    || fail "srv6pipes stats -n $apps: $(cli stats -n "$apps" -o json)"
  # The live monitor, streamed from the daemons through the API server: the chain's packets
  # (traces), then a drop on one node (a pod addressing a SID: the closed domain).
  monitor() { cli monitor "$@" --duration 30s -o json > "$t/monitor.json" 2> "$t/monitor.err" & mon=$!
    for _ in $(seq 100); do grep -q "listening on" "$t/monitor.err" && break; sleep 0.1; done; }
  monitor --type trace --chain "$apps/e2e" --count 3
  ping_ok 3 || true
  wait $mon || fail "srv6pipes monitor --type trace: $(cat "$t/monitor.err")"
  jq -se --arg chain "$apps/e2e" 'length == 3 and all(.type == "trace" and .chain == $chain)' "$t/monitor.json" >/dev/null \
    || fail "srv6pipes monitor --type trace --chain $apps/e2e: $(cat "$t/monitor.json")"
  decap=$(kubectl get nodesidtable "$n2" -o jsonpath='{.spec.decapSid}')
  monitor --node "$n1" --count 1
  ex e2e-client ping -6 -c 1 -W 1 "$decap" >/dev/null 2>&1 || true
  wait $mon || fail "srv6pipes monitor --node $n1: $(cat "$t/monitor.err")"
  jq -e --arg n1 "$n1" --arg sid "$decap" '.type == "drop" and .reason == "closed_domain" and .node == $n1 and .hook == "headend"
    and .flow.dst == $sid' "$t/monitor.json" >/dev/null || fail "srv6pipes monitor --node $n1: $(cat "$t/monitor.json")"
  ! KUBECONFIG=$t/viewer kubectl -n "$apps" delete servicechain e2e --dry-run=server >/dev/null 2>&1 || fail "the viewer may delete a chain"
  kubectl delete rolebinding -n "$ns" e2e-viewer >/dev/null
  kubectl delete clusterrolebinding e2e-viewer >/dev/null
  kubectl delete serviceaccount -n default e2e-viewer >/dev/null
  ok "srv6pipes wait, chains, trace (sources, live counters of both hops and the decapsulation), stats, monitor (the chain's traces, a drop) against the cluster as a read-only viewer"
fi

# Services beside the chain, through kube-proxy: from the client (selected, but the chain
# matches only $server) and from the server (no chain selects it), the Service's cluster IP.
svc=$(kubectl -n "$apps" get service e2e-web -o jsonpath='{.spec.clusterIP}')
for p in e2e-client e2e-server; do
  for i in $(seq 20); do
    # (busybox-static's wget crashes: HTTP by hand over nc)
    # (`|| true`: under pipefail a failed try would end the script here, not be retried)
    got=$(ex $p sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 $svc 80" 2>&1 | tail -1) || true
    [[ $got == e2e-web ]] && break
    sleep 0.5
  done
  [[ $got == e2e-web ]] || fail "$p cannot reach Service e2e-web at $svc: $got"
done
ok "Services: e2e-client (steered to $server only) and e2e-server (no chain) reach Service e2e-web at $svc"

# SRv6 pipes, when the release deploys stream proxies in this namespace (stream.enabled): a
# chain of both kinds of function, the packet VNF fw then a bytestream function done by a
# proxy, for the client's HTTP to the web pod (its own address, not the Service): the proxy
# rewrites the answer's bytes on the fly (e2e-web -> e2e-WEB, the same length).
pipes=$(kubectl -n "$apps" get deployment -l app.kubernetes.io/component=stream -o name | head -1)
web=$(ex e2e-web ip -6 -o addr show dev eth0 scope global | awk '{print $4}' | cut -d/ -f1 | head -1)
# (busybox nc's -w bounds only the connect: a connection that is accepted and never answered
# would hang the fetch until TCP gives up, so the whole exchange is bounded too: 124 is a hang)
fetch() { ex e2e-client sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | timeout 10 nc -w 3 $web 8080; echo \" (exit \$?)\"" 2>&1 | tail -2 | tr -d '\n' || true; }
pipes_diag() { # what the proxies and the client saw, for a failed or hung try
  kubectl -n "$apps" logs -l app.kubernetes.io/component=stream --prefix --tail=20 2>&1 | sed 's/^/  proxy: /' >&2 || true
  ex e2e-client netstat -tn 2>&1 | grep ":8080 " | sed 's/^/  client: /' >&2 || true
  kubectl -n "$apps" get pods -l app.kubernetes.io/component=stream -o wide 2>&1 | sed 's/^/  pods: /' >&2 || true
  kubectl get nodeprogramslices -o custom-columns=NAME:.metadata.name,GENERATION:.metadata.generation,OBSERVED:.status.observedGeneration 2>&1 \
    | sed 's/^/  slices: /' >&2 || true
  [[ ${SRV6PIPES_CLI:-} ]] && "$SRV6PIPES_CLI" trace "$apps/e2e-pipes" -o json 2>&1 | jq -c '.. | objects | select(has("errors"))' 2>/dev/null \
    | sed 's/^/  proxy counters: /' >&2 || true; }
pipes_ok() { # WHEN: the answer comes rewritten, through fw; how long it took, each try that did not
  local got fw0 t0=$SECONDS t1
  for i in $(seq 20); do
    fw0=$(rx e2e-fw) t1=$SECONDS; got=$(fetch)
    [[ $got == "e2e-WEB (exit 0)" ]] && break
    echo "scenario: $1: try $i: '$got' after $((SECONDS - t1)) s" >&2
    [[ $got == *"(exit 124)" ]] && pipes_diag
    sleep 0.5
  done
  [[ $got == "e2e-WEB (exit 0)" ]] || { pipes_diag; fail "$1: the web pod's answer through the pipes chain: '$got', not e2e-WEB"; }
  (( $(rx e2e-fw) > fw0 )) || fail "$1: the pipes chain's packets did not cross fw"
  echo "$i tries, $((SECONDS - t0)) s"
}
if [[ $pipes ]]; then
  t0=$SECONDS
  kubectl -n "$apps" rollout status "$pipes" --timeout=120s >/dev/null
  echo "scenario: stream proxies available after $((SECONDS - t0)) s" >&2
  [[ $(fetch) == "e2e-web (exit 0)" ]] || fail "the web pod does not answer the client directly: $(fetch)"
  cat > "$t/pipes.yaml" <<Y
apiVersion: srv6pipes.io/v1alpha1
kind: ServiceChain
metadata: {name: e2e-pipes, namespace: $apps}
spec:
  sources: {podSelector: {matchLabels: {app: e2e-client}}}
  match: {protocol: TCP, destinationPrefixes: ["$web/128"], destinationPorts: ["8080"]}
  functions:
    - {name: fw, podSelector: {matchLabels: {vnf: e2e-fw}}}
    - name: rewrite
      podSelector: {matchLabels: {app: srv6pipes-stream}}   # the chart's stream.labels
      stream: {function: replace, args: {from: e2e-web, to: e2e-WEB}, direction: Reverse}
Y
  kubectl apply -f "$t/pipes.yaml" >/dev/null
  kubectl -n "$apps" wait --for=condition=Ready servicechain/e2e-pipes --timeout=60s >/dev/null \
    || { kubectl -n "$apps" get servicechain e2e-pipes -o yaml >&2; fail "chain e2e-pipes not Ready"; }
  echo "scenario: chain e2e-pipes Ready after $((SECONDS - t0)) s" >&2
  took=$(pipes_ok "SRv6 pipes")
  ok "SRv6 pipes: chain e2e-pipes (fw, then replace by a stream proxy ($pipes)) rewrites the web pod's answer ($took)"
fi

flow() { # COUNT: a steady flow of COUNT pings at 50/s, in the background; check with flow_done
  ex e2e-client ping -6 -c "$1" -i 0.02 -W 2 "$server" > "$t/flow" 2>&1 & echo $! > "$t/flow.pid"; }
flow_done() { wait "$(cat "$t/flow.pid")" || true
  grep -q " 0% packet loss" "$t/flow" || fail "$1: the steady flow lost packets: $(tail -2 "$t/flow")"
  ok "$1: no packet lost ($(grep -o '[0-9]* packets transmitted, [0-9]* packets received' "$t/flow"))"; }
fw0=$(rx e2e-fw)
flow 1500
sleep 2
# An RBAC regression during the restart (the daemon's namespaced Role, which lets it read its
# DaemonSet, is gone): the terminating daemon is refused (403) and must not take that for an
# uninstall; the flow would lose packets if it wiped the node.
kubectl -n "$ns" get role,rolebinding -l app.kubernetes.io/component=node -o json \
  | jq '.items[].metadata |= {name, namespace, labels}' > "$t/node-rbac.json"
kubectl -n "$ns" delete role,rolebinding -l app.kubernetes.io/component=node >/dev/null
old=$(kubectl -n "$ns" get pod -l app.kubernetes.io/component=node --field-selector spec.nodeName="$n1" -o name)
kubectl -n "$ns" delete "$old" --wait=true >/dev/null
kubectl -n "$ns" rollout status daemonset/srv6pipes-node --timeout=120s >/dev/null
new=$(kubectl -n "$ns" get pod -l app.kubernetes.io/component=node --field-selector spec.nodeName="$n1" -o name)
[[ $new && $new != "$old" ]] || fail "the DaemonSet pod on $n1 was not recreated"
kill -0 "$(cat "$t/flow.pid")" 2>/dev/null || fail "the steady flow ended before the DaemonSet pod was recreated (lengthen it)"
flow_done "DaemonSet pod $old deleted with its Role gone (403: not an uninstall), $new took over"
(( $(rx e2e-fw) - fw0 >= 1500 )) || fail "the flow was not steered through fw during the restart"
kubectl create -f "$t/node-rbac.json" >/dev/null

# An upgrade from a release before slices, whose operator wrote each node's whole program as one
# NodeProgram. That cluster's state is made from this one: the operator stopped, each node's
# slices merged into its NodeProgram and deleted (the daemons fall back to it), the daemons
# restarted on the NodeProgram alone (as the new release's daemons start). Then the operator
# starts under the steady flow: it writes slices, the daemons move to them, and it deletes the
# NodePrograms once their daemons report on slice 0; no packet may be lost on the way.
fw0=$(rx e2e-fw)
flow 4000
sleep 2
replicas=$(kubectl -n "$ns" get deployment/srv6pipes-operator -o jsonpath='{.spec.replicas}')
kubectl -n "$ns" scale deployment/srv6pipes-operator --replicas=0 >/dev/null
kubectl -n "$ns" wait --for=delete pod -l app.kubernetes.io/component=operator --timeout=60s >/dev/null 2>&1 || true
for n in "$n1" "$n2"; do
  kubectl get nodeprogramslices -l "srv6pipes.io/node=$n" -o json | jq --arg n "$n" '{
    apiVersion: "srv6pipes.io/v1alpha1", kind: "NodeProgram", metadata: {name: $n},
    spec: {tables: (reduce .items[].spec.tables as $s ({}; reduce ($s | to_entries[]) as $e (.; .[$e.key] += $e.value))),
           peers: ([.items[] | select(.metadata.name == "\($n).0") | .spec.peers // []] | add // [])}}' > "$t/legacy-$n.json"
  jq -e '.spec.tables.headends + .spec.tables.proxies + .spec.tables.decaps | length > 0' "$t/legacy-$n.json" >/dev/null \
    || fail "$n's slices hold none of chain e2e's entries: $(cat "$t/legacy-$n.json")"
  kubectl create -f "$t/legacy-$n.json" >/dev/null
  kubectl delete nodeprogramslices -l "srv6pipes.io/node=$n" --wait=true >/dev/null
done
legacy_reported() { # NODE: its daemon programmed its NodeProgram and said so
  [[ $(kubectl get nodeprogram "$1" -o jsonpath='{.status.observedGeneration}/{.metadata.generation}/{.status.conditions[?(@.type=="Programmed")].status}' 2>/dev/null) == 1/1/True ]]; }
for i in $(seq 60); do legacy_reported "$n1" && legacy_reported "$n2" && break; sleep 0.5; done
legacy_reported "$n1" && legacy_reported "$n2" || fail "the daemons did not program their NodeProgram: $(kubectl get nodeprogram -o yaml)"
kubectl -n "$ns" rollout restart daemonset/srv6pipes-node >/dev/null
kubectl -n "$ns" rollout status daemonset/srv6pipes-node --timeout=120s >/dev/null
kubectl -n "$ns" scale deployment/srv6pipes-operator --replicas="$replicas" >/dev/null
for i in $(seq 120); do [[ -z $(kubectl get nodeprograms -o name) ]] && break; sleep 0.5; done
[[ -z $(kubectl get nodeprograms -o name) ]] || fail "the operator kept the NodePrograms: $(kubectl get nodeprograms,nodeprogramslices -o yaml)"
for n in "$n1" "$n2"; do
  kubectl get nodeprogramslice "$n.0" -o json | jq -e '.status.observedGeneration == .metadata.generation and
    (.spec.tables.headends + .spec.tables.proxies + .spec.tables.decaps | length > 0)' >/dev/null \
    || fail "$n did not move to its slices: $(kubectl get nodeprogramslice "$n.0" -o yaml)"
done
kill -0 "$(cat "$t/flow.pid")" 2>/dev/null || fail "the steady flow ended before the upgrade from NodeProgram did (lengthen it)"
flow_done "upgrade from the pre-slice NodeProgram (operator stopped, daemons restarted on it, slices back)"
(( $(rx e2e-fw) - fw0 >= 4000 )) || fail "the flow was not steered through fw during the upgrade from NodeProgram"
kubectl -n "$apps" wait --for=condition=Ready servicechain/e2e --timeout=30s >/dev/null || fail "chain e2e not Ready after the move to slices"

if ((${#redeploy[@]})); then
  flow 3000
  sleep 2
  took=$SECONDS
  "${redeploy[@]}" > "$t/redeploy" 2>&1 || fail "${redeploy[*]}: $(cat "$t/redeploy")"
  took=$((SECONDS - took))
  kill -0 "$(cat "$t/flow.pid")" 2>/dev/null || fail "the steady flow (60 s) ended before the upgrade did ($took s): lengthen it"
  flow_done "upgrade (${redeploy[*]}, $took s)"
  if [[ $pipes ]]; then
    took=$(pipes_ok "after the upgrade")
    ok "SRv6 pipes after the upgrade: the answer still rewritten ($took)"
  fi
fi

# RBAC: the node daemon's identity reads its program and writes only its status and SID table.
as=(--as="system:serviceaccount:$ns:srv6pipes-node")
kubectl "${as[@]}" auth can-i patch nodeprogramslices.srv6pipes.io --subresource=status >/dev/null 2>&1 || fail "the node daemon may not report status"
for verb in "patch nodeprogramslices.srv6pipes.io" "patch nodeprograms.srv6pipes.io" "delete nodesidtables.srv6pipes.io" "patch servicechains.srv6pipes.io" "list secrets" "patch nodes"; do
  ! kubectl "${as[@]}" auth can-i $verb >/dev/null 2>&1 || fail "the node daemon's identity may $verb"
done
! kubectl "${as[@]}" patch nodeprogramslice "$n2.0" --type=merge -p '{"spec":{"tables":{}}}' > "$t/out" 2>&1 || fail "the node daemon's identity rewrote $n2's program"
grep -q Forbidden "$t/out" || fail "expected Forbidden: $(cat "$t/out")"
ok "RBAC: the node daemon's identity is refused writing programs (another node's: $n2), deleting SID tables, chains, secrets, nodes"

# Per node, which RBAC cannot say: the daemon on $n1, with its own pod-bound token, writes its
# node's SID table and program status, and the node-writes admission policy refuses it $n2's.
dspod=$(kubectl -n "$ns" get pod -l app.kubernetes.io/component=node --field-selector spec.nodeName="$n1" -o name)
tok=$(kubectl -n "$ns" exec "${dspod#pod/}" -c node -- cat /var/run/secrets/kubernetes.io/serviceaccount/token)
srv=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
as_daemon() { # PATH: an empty merge patch (a write that changes nothing) as that daemon; prints the HTTP code
  curl -sk -o "$t/write" -w '%{http_code}' -X PATCH -H "Authorization: Bearer $tok" \
    -H 'Content-Type: application/merge-patch+json' -d '{}' "$srv/apis/srv6pipes.io/v1alpha1/$1"; }
for r in "nodesidtables/$n1" "nodeprogramslices/$n1.0/status"; do
  [[ $(as_daemon "$r") == 200 ]] || fail "the daemon on $n1 may not write $r: $(cat "$t/write")"
done
for r in "nodesidtables/$n2" "nodeprogramslices/$n2.0/status"; do
  [[ $(as_daemon "$r") == 403 ]] && grep -q "may write only node" "$t/write" || fail "the daemon on $n1 wrote $r: $(cat "$t/write")"
done
# Pods (node.repairPods deletes those that came up without srv6pipes-cni): its node's only.
delete_as_daemon() { # POD: a dry-run delete as that daemon; prints the HTTP code
  curl -sk -o "$t/write" -w '%{http_code}' -X DELETE -H "Authorization: Bearer $tok" "$srv/api/v1/namespaces/$apps/pods/$1?dryRun=All"; }
[[ $(delete_as_daemon e2e-fw) == 200 ]] || fail "the daemon on $n1 may not delete pod e2e-fw on its node: $(cat "$t/write")"
[[ $(delete_as_daemon e2e-ids) == 403 ]] && grep -q "may write only node" "$t/write" || fail "the daemon on $n1 deleted pod e2e-ids on $n2: $(cat "$t/write")"
ok "node-writes policy: the daemon on $n1 (its own token) writes $n1's SID table and program status and may delete its pods, is refused $n2's"

kubectl -n "$apps" delete servicechain e2e e2e-pipes --ignore-not-found --wait=true --timeout=60s >/dev/null
if [[ $pipes ]]; then
  for i in $(seq 10); do [[ $(fetch) == "e2e-web (exit 0)" ]] && break; sleep 0.5; done
  [[ $(fetch) == "e2e-web (exit 0)" ]] || fail "the web pod's answer is still rewritten after e2e-pipes was deleted: $(fetch)"
fi
fw0=$(rx e2e-fw) ids0=$(rx e2e-ids)
ping_ok 10 || fail "ping after the chain was deleted: $(cat "$t/ping")"
(( $(rx e2e-fw) - fw0 < 10 && $(rx e2e-ids) - ids0 < 10 )) || fail "still steered after delete"
ok "chain deleted: unsteered, the client still reaches the server"
kubectl delete -f "$t/pods.yaml" --wait=true --timeout=60s >/dev/null

if ((${#uninstall[@]})); then
  "${uninstall[@]}" > "$t/uninstall" 2>&1 || fail "${uninstall[*]}: $(cat "$t/uninstall")"
  # The daemons clean their nodes as their pods terminate, after their DaemonSet is gone.
  for i in $(seq 120); do
    [[ -z $(kubectl -n "$ns" get pods -l app.kubernetes.io/name=srv6pipes -o name) ]] && break
    (( i < 120 )) || fail "srv6pipes pods still there 60 s after the uninstall"
    sleep 0.5
  done
  # What is left on each node, seen from a host-network pod with the host's directories.
  { pod e2e-probe1 "$n1" "app: e2e-probe" host; pod e2e-probe2 "$n2" "app: e2e-probe" host
    pod e2e-after "$n1" "app: e2e-after"; } > "$t/after.yaml"
  kubectl apply -f "$t/after.yaml" >/dev/null
  kubectl -n "$apps" wait --for=condition=Ready pod/e2e-probe1 pod/e2e-probe2 pod/e2e-after --timeout=120s >/dev/null \
    || fail "pods do not start after the uninstall: $(kubectl -n "$apps" describe pod e2e-after | tail -5)"
  for p in e2e-probe1 e2e-probe2; do
    left=$(ex $p sh -c 'cd /host; ls cni/net.d | grep -q conf || echo "(the probe sees no CNI configuration)";
      [ -e cni/bin/srv6pipes-cni ] && echo "cni/bin/srv6pipes-cni";
      grep -l srv6pipes-cni cni/net.d/* 2>/dev/null; [ -e bpf/srv6pipes ] && ls -R bpf/srv6pipes | head -5;
      ip -6 route show | grep "^fcbb:bb00:"; true')
    [[ -z $left ]] || fail "left on $(kubectl -n "$apps" get pod $p -o jsonpath='{.spec.nodeName}') after the uninstall: $left"
  done
  kubectl delete -f "$t/after.yaml" --wait=true --timeout=60s >/dev/null
  [[ -z $made_apps ]] || kubectl delete namespace "$apps" --wait=true --timeout=60s >/dev/null
  ok "uninstalled (${uninstall[*]}): no CNI binary, conflist entry, pin or locator route left on $n1 and $n2; new pods start"
fi
ok "scenario passed"
