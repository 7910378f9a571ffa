//! `lab up --kubeconfig`: the lab acts as the cluster's kubelets. It registers its Nodes (with
//! their locators, podCIDRs and underlay addresses) and Pods (with IPs, phase and readiness) in
//! the API server, runs the node daemons and the operator in kube mode, and sends the file's
//! ServiceChains to the API server; from then on `kubectl apply` / `kubectl delete` steer.
//!
//! Node daemons live in the nodes' network namespaces; a loopback API server is reached there
//! through a forwarder the lab runs per node (`lab forward-api`), listening on the same
//! address inside the node's netns, so the user's kubeconfig works unchanged.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use srv6pipes_crds::{NodeProgram, NodeProgramSlice, NodeSidTable, ServiceChain, CLEANUP_FINALIZER, LOCATOR_ANNOTATION, NODE_LABEL};

use super::state::{LabState, NodeState, PodState};

/// Field manager of what the lab writes (it plays the kubelets and the user's first apply).
pub const MANAGER: &str = "srv6pipes-lab";
/// Label on the Nodes and Pods a lab registered.
pub const LAB_LABEL: &str = "srv6pipes.io/lab";

pub struct Cluster {
    rt: tokio::runtime::Runtime,
    client: Client,
}

fn apply() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

impl Cluster {
    pub fn connect(kubeconfig: &Path) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let client = rt.block_on(srv6pipes_crds::client(Some(kubeconfig))).map_err(anyhow::Error::msg)?;
        let c = Cluster { rt, client };
        c.rt.block_on(c.client.apiserver_version()).with_context(|| format!("API server of {}", kubeconfig.display()))?;
        Ok(c)
    }

    /// The committed CRDs (what `kubectl apply -f crds/` would install).
    pub fn apply_crds(&self) -> anyhow::Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let yaml = srv6pipes_crds::crd_yaml();
        let crds: Vec<CustomResourceDefinition> = serde_saphyr::from_multiple(&yaml)?;
        self.rt.block_on(async {
            for crd in &crds {
                api.patch(&crd.name_any(), &apply(), &Patch::Apply(crd)).await.with_context(|| format!("CRD {}", crd.name_any()))?;
            }
            // Established before anything uses them.
            for name in crds.iter().map(|c| c.name_any()) {
                let cond = kube::runtime::conditions::is_crd_established();
                tokio::time::timeout(Duration::from_secs(20), kube::runtime::wait::await_condition(api.clone(), &name, cond))
                    .await
                    .map_err(|_| anyhow!("CRD {name} not established"))??;
            }
            Ok(())
        })
    }

    /// The node as a kubelet would register it, with the lab's locator annotation.
    pub fn register_node(&self, lab: &str, n: &NodeState) -> anyhow::Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": n.name, "labels": {LAB_LABEL: lab}, "annotations": {LOCATOR_ANNOTATION: n.locator.to_string()}},
            "spec": {"podCIDR": n.pod_cidrs.first().map(|c| c.to_string()), "podCIDRs": n.pod_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>()},
        });
        let status = json!({
            "apiVersion": "v1", "kind": "Node",
            "status": {
                "addresses": [{"type": "InternalIP", "address": n.underlay6.to_string()}, {"type": "InternalIP", "address": n.underlay4.to_string()}, {"type": "Hostname", "address": n.name}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "LabNodeReady", "message": "srv6pipes lab node", "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
            },
        });
        self.rt
            .block_on(async {
                api.patch(&n.name, &apply(), &Patch::Apply(&node)).await?;
                // Not server-side apply: the 1.20 schema keys addresses by type, so a dual-stack
                // node's two InternalIPs cannot be applied (kubelets patch this too).
                api.patch_status(&n.name, &PatchParams::default(), &Patch::Merge(&status)).await?;
                anyhow::Ok(())
            })
            .with_context(|| format!("register node {}", n.name))
    }

    /// The pod as a kubelet would report it: Running and Ready, with the primary IPs. The
    /// namespace and its `default` ServiceAccount are created as a controller-manager would.
    pub fn register_pod(&self, lab: &str, p: &PodState, node: &NodeState) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &p.namespace);
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels.iter().map(|(k, v)| (k.clone(), json!(v))).chain([(LAB_LABEL.to_string(), json!(lab))]).collect::<serde_json::Map<_, _>>()},
            // No token: without a controller-manager nobody mints the ServiceAccount's secret
            // (1.20's admission waits for it otherwise), and lab processes do not call the API.
            "spec": {"nodeName": p.node, "automountServiceAccountToken": false, "containers": [{"name": "main", "image": "srv6pipes.io/lab-process", "command": p.command}]},
        });
        let ips: Vec<_> = p.ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
        let status = json!({
            "apiVersion": "v1", "kind": "Pod",
            "status": {
                "phase": "Running",
                "hostIP": node.underlay6.to_string(),
                "podIP": p.ips.first().map(|ip| ip.to_string()),
                "podIPs": ips,
                "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": now()},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now()},
                ],
            },
        });
        self.rt
            .block_on(async {
                self.ensure_namespace(&p.namespace).await?;
                pods.patch(&p.name, &apply(), &Patch::Apply(&pod)).await?;
                // A merge patch, as a kubelet does: on 1.20 an apply of the status subresource by
                // the same manager would drop the metadata and spec it applied before.
                pods.patch_status(&p.name, &PatchParams::default(), &Patch::Merge(&status)).await?;
                anyhow::Ok(())
            })
            .with_context(|| format!("register pod {}/{}", p.namespace, p.name))
    }

    async fn ensure_namespace(&self, ns: &str) -> anyhow::Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        namespaces.patch(ns, &apply(), &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))).await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}});
        accounts.patch("default", &apply(), &Patch::Apply(sa)).await?;
        Ok(())
    }

    pub fn apply_chain(&self, c: &ServiceChain) -> anyhow::Result<()> {
        let ns = c.namespace().unwrap_or_else(|| "default".into());
        let api: Api<ServiceChain> = Api::namespaced(self.client.clone(), &ns);
        let body = json!({"apiVersion": "srv6pipes.io/v1alpha1", "kind": "ServiceChain", "metadata": {"name": c.name_any(), "namespace": ns}, "spec": c.spec});
        self.rt
            .block_on(async {
                self.ensure_namespace(&ns).await?;
                api.patch(&c.name_any(), &apply(), &Patch::Apply(&body)).await?;
                anyhow::Ok(())
            })
            .with_context(|| format!("apply ServiceChain {ns}/{}", c.name_any()))
    }

    /// Every ServiceChain in the cluster.
    pub fn chains(&self) -> anyhow::Result<Vec<ServiceChain>> {
        let api: Api<ServiceChain> = Api::all(self.client.clone());
        Ok(self.rt.block_on(api.list(&Default::default()))?.items)
    }

    /// Waits until the operator reports on each of `chains` for its current generation.
    pub fn wait_reported(&self, chains: &[ServiceChain], timeout: Duration) -> anyhow::Result<Vec<ServiceChain>> {
        let start = Instant::now();
        loop {
            let all = self.chains()?;
            let current: Vec<ServiceChain> = chains
                .iter()
                .filter_map(|c| {
                    all.iter().find(|x| x.name_any() == c.name_any() && x.namespace() == c.namespace().or(Some("default".into()))).cloned()
                })
                .collect();
            let reported = current.len() == chains.len()
                && current.iter().all(|c| c.status.as_ref().is_some_and(|s| s.observed_generation == c.metadata.generation));
            if reported {
                return Ok(current);
            }
            if start.elapsed() > timeout {
                bail!("the operator did not report on every chain within {timeout:?} (see the lab's logs/operator.log)");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Removes what the lab registered: its Pods (force, as no kubelet confirms), its Nodes and
    /// their NodeSidTables, NodeProgramSlices and NodePrograms (no garbage collector without a
    /// controller-manager). The chains stay, without the operator's cleanup finalizer: the
    /// lab's operator, stopped, would never remove it, and a later delete would hang.
    pub fn unregister(&self, st: &LabState) -> anyhow::Result<()> {
        let force = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
        self.rt.block_on(async {
            for p in &st.pods {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &p.namespace);
                gone(api.delete(&p.name, &force).await)?;
            }
            for n in &st.nodes {
                let slices: Api<NodeProgramSlice> = Api::all(self.client.clone());
                let by_node = ListParams::default().labels(&format!("{NODE_LABEL}={}", n.name));
                for s in slices.list(&by_node).await.with_context(|| format!("list node {}'s program slices", n.name))? {
                    gone(slices.delete(&s.name_any(), &force).await)?;
                }
                gone(Api::<NodeProgram>::all(self.client.clone()).delete(&n.name, &force).await)?;
                gone(Api::<NodeSidTable>::all(self.client.clone()).delete(&n.name, &force).await)?;
                gone(Api::<Node>::all(self.client.clone()).delete(&n.name, &force).await)?;
            }
            let chains: Api<ServiceChain> = Api::all(self.client.clone());
            for c in chains.list(&ListParams::default()).await.context("list servicechains")? {
                let kept: Vec<&String> = c.finalizers().iter().filter(|f| *f != CLEANUP_FINALIZER).collect();
                if kept.len() != c.finalizers().len() {
                    let api: Api<ServiceChain> = Api::namespaced(self.client.clone(), &c.namespace().unwrap_or_default());
                    let patch = json!({"metadata": {"finalizers": kept, "resourceVersion": c.resource_version()}});
                    gone(api.patch(&c.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await)?;
                }
            }
            anyhow::Ok(())
        })
    }
}

fn gone<T>(r: Result<T, kube::Error>) -> anyhow::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().round(k8s_openapi::jiff::Unit::Second).expect("rounds").to_string()
}

/// The API server's address from the kubeconfig's current context; the lab's nodes reach only
/// a loopback one (through their forwarders).
pub fn api_address(kubeconfig: &Path) -> anyhow::Result<SocketAddr> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).with_context(|| format!("read {}", kubeconfig.display()))?;
    let ctx_name = kc.current_context.clone().ok_or_else(|| anyhow!("{}: no current-context", kubeconfig.display()))?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| anyhow!("context {ctx_name} not found"))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| anyhow!("cluster {} not found", ctx.cluster))?;
    let server = cluster.server.ok_or_else(|| anyhow!("cluster {} has no server", ctx.cluster))?;
    let uri: http::Uri = server.parse().with_context(|| format!("server {server:?}"))?;
    let host = uri.host().ok_or_else(|| anyhow!("server {server:?} has no host"))?.trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(443);
    let addr = (host, port).to_socket_addrs()?.next().ok_or_else(|| anyhow!("server {server:?} does not resolve"))?;
    if !addr.ip().is_loopback() {
        bail!("the lab's nodes reach the API server through a loopback forwarder; {server} is not a loopback address");
    }
    Ok(addr)
}

/// `lab forward-api`: listens on `addr` inside network namespace `netns` and relays each
/// connection to `addr` in this process's own namespace. Runs until killed.
pub fn forward(netns: &Path, addr: SocketAddr) -> anyhow::Result<()> {
    let own = std::fs::File::open("/proc/self/ns/net")?;
    let target = std::fs::File::open(netns).with_context(|| format!("open {}", netns.display()))?;
    nix::sched::setns(target.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).context("enter the node's netns")?;
    let listener = TcpListener::bind(addr).with_context(|| format!("listen on {addr} in {}", netns.display()));
    nix::sched::setns(own.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).context("return to the lab's netns")?;
    let listener = listener?;
    for conn in listener.incoming() {
        let Ok(inbound) = conn else { continue };
        std::thread::spawn(move || {
            let Ok(outbound) = TcpStream::connect(addr) else { return };
            let (mut a, mut b) = (inbound.try_clone().expect("clone"), outbound.try_clone().expect("clone"));
            let up = std::thread::spawn(move || relay(&mut a, &mut b));
            let (mut c, mut d) = (outbound, inbound);
            relay(&mut c, &mut d);
            let _ = up.join();
        });
    }
    Ok(())
}

fn relay(from: &mut TcpStream, to: &mut TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
