//! The CLI against a cluster: chains, SID tables and program slices from the API server, and
//! each node daemon's live counters through it (the daemon pods' `pods/proxy` subresource to
//! their health port's `/stats`), never by a direct connection to the nodes. What it reads is
//! what the chart's `srv6pipes-viewer` ClusterRole and its Role on the release's namespace grant.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Context};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use srv6::node_api::NodeStats;
use srv6pipes_crds::{NodeProgramSlice, NodeSidTable, ServiceChain, NODE_LABEL};

use crate::view::{Registration, View, ViewNode, ViewPod};

/// The node daemons' pods, as the chart labels them.
const DAEMON_PODS: &str = "app.kubernetes.io/name=srv6pipes,app.kubernetes.io/component=node";

pub struct Cluster {
    rt: tokio::runtime::Runtime,
    client: Client,
    /// The kubeconfig context's namespace (else "default"): where `-n` is not given.
    pub default_namespace: String,
}

impl Cluster {
    /// Connects as kubectl would: `kubeconfig` and `context` when given, else KUBECONFIG,
    /// ~/.kube/config, or the in-cluster service account.
    pub fn connect(kubeconfig: Option<&Path>, context: Option<&str>) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let options = kube::config::KubeConfigOptions { context: context.map(String::from), ..Default::default() };
        let config = rt.block_on(async {
            match (kubeconfig, context) {
                (Some(path), _) => {
                    let kc = kube::config::Kubeconfig::read_from(path).with_context(|| format!("read kubeconfig {}", path.display()))?;
                    kube::Config::from_custom_kubeconfig(kc, &options).await.with_context(|| format!("kubeconfig {}", path.display()))
                }
                (None, Some(_)) => kube::Config::from_kubeconfig(&options).await.context("kubeconfig (KUBECONFIG, ~/.kube/config)"),
                (None, None) => {
                    kube::Config::infer().await.context("no lab is up and no kubeconfig was found (KUBECONFIG, ~/.kube/config)")
                }
            }
        })?;
        let default_namespace = config.default_namespace.clone();
        // The client's buffer spawns onto the runtime: made inside it.
        let client = rt.block_on(async { Client::try_from(config) }).context("kube client")?;
        Ok(Cluster { rt, client, default_namespace })
    }

    /// ServiceChains in `namespace`, or in every namespace.
    pub fn chains(&self, namespace: Option<&str>) -> anyhow::Result<Vec<ServiceChain>> {
        let api: Api<ServiceChain> = match namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let mut chains = self.rt.block_on(api.list(&ListParams::default())).context("list servicechains")?.items;
        chains.sort_by_key(crate::view::chain_key);
        Ok(chains)
    }

    /// ServiceChain `namespace/name`, if it exists. An error a later request may not have (no
    /// connection or no answer, a 5xx or 429 answer) is a [`crate::wait::NoAnswer`]; any other
    /// (refused credentials, a bad certificate, a 4xx) is not.
    pub fn chain(&self, namespace: &str, name: &str) -> anyhow::Result<Option<ServiceChain>> {
        let api: Api<ServiceChain> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("get servicechain {namespace}/{name}");
        match self.rt.block_on(api.get_opt(name)) {
            Ok(chain) => Ok(chain),
            Err(kube::Error::Api(s)) if s.code >= 500 || s.code == 429 => Err(crate::wait::NoAnswer(format!("{what}: {s}")).into()),
            Err(e @ (kube::Error::HyperError(_) | kube::Error::Service(_))) => Err(crate::wait::NoAnswer(format!("{what}: {e}")).into()),
            Err(e) => Err(anyhow::Error::new(e).context(what)),
        }
    }

    /// The cluster's view: every node's SID table and live counters, the pods of `pods_in` (the
    /// sources a trace shows), and the chains of `namespace` (all when None).
    pub fn view(&self, namespace: Option<&str>, pods_in: Option<&str>) -> anyhow::Result<View> {
        let mut v = View { chains: self.chains(namespace)?, ..Default::default() };
        let tables: Api<NodeSidTable> = Api::all(self.client.clone());
        let tables = self.rt.block_on(tables.list(&ListParams::default())).context("list nodesidtables")?.items;
        for t in &tables {
            let locator =
                t.spec.locator.parse().map_err(|e| anyhow!("NodeSidTable {}: locator {:?}: {e}", t.name_any(), t.spec.locator))?;
            let registrations = t
                .spec
                .registrations
                .iter()
                .filter_map(|r| {
                    let sid = srv6::sid::Sid(r.sid.parse().ok()?);
                    Some(Registration { pod: format!("{}/{}", r.pod_namespace, r.pod_name), interface: r.interface.clone(), sid })
                })
                .collect();
            v.nodes.push(ViewNode { name: t.name_any(), locator, registrations });
        }
        if let Some(ns) = pods_in {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
            let pods = self.rt.block_on(pods.list(&ListParams::default())).with_context(|| format!("list pods in {ns}"))?.items;
            v.pods = pods
                .iter()
                .filter_map(|p| {
                    let node = p.spec.as_ref()?.node_name.clone()?;
                    Some(ViewPod { namespace: ns.to_string(), name: p.name_any(), node, labels: p.labels().clone() })
                })
                .collect();
        }
        let (stats, unreachable) = self.rt.block_on(self.node_stats(v.nodes.iter().map(|n| n.name.clone()).collect()))?;
        (v.stats, v.unreachable) = (stats, unreachable);
        Ok(v)
    }

    /// Each node daemon's `/stats`, through the API server; the nodes that did not answer, why.
    async fn node_stats(&self, nodes: Vec<String>) -> anyhow::Result<(BTreeMap<String, NodeStats>, BTreeMap<String, String>)> {
        let daemons = self.daemon_pods().await?;
        let mut unreachable = BTreeMap::new();
        let mut calls = tokio::task::JoinSet::new();
        for node in nodes {
            let Some(pod) = daemons.get(&node) else {
                unreachable.insert(node, "no srv6pipes-node pod runs there".to_string());
                continue;
            };
            let (client, uri) = (self.client.clone(), stats_uri(pod));
            calls.spawn(async move {
                let answer = match uri {
                    Ok(uri) => {
                        let request = http::Request::get(&uri).body(Vec::new()).expect("a GET request");
                        tokio::time::timeout(std::time::Duration::from_secs(5), client.request::<NodeStats>(request))
                            .await
                            .map_err(|_| "no answer within 5 s".to_string())
                            .and_then(|r| r.map_err(|e| format!("{uri}: {e}")))
                    }
                    Err(e) => Err(e),
                };
                (node, answer)
            });
        }
        let mut stats = BTreeMap::new();
        while let Some(done) = calls.join_next().await {
            match done? {
                (node, Ok(s)) => _ = stats.insert(node, s),
                (node, Err(why)) => _ = unreachable.insert(node, why),
            }
        }
        Ok((stats, unreachable))
    }

    /// The running node daemon pod of each node.
    async fn daemon_pods(&self) -> anyhow::Result<BTreeMap<String, Pod>> {
        let api: Api<Pod> = Api::all(self.client.clone());
        let pods = api.list(&ListParams::default().labels(DAEMON_PODS)).await.context("list the srv6pipes-node pods")?.items;
        Ok(pods
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter_map(|p| Some((p.spec.as_ref()?.node_name.clone()?, p)))
            .collect())
    }

    /// `srv6pipes status` on a cluster: each node's locator, SIDs, program and daemon, then the chains.
    pub fn status(&self, namespace: Option<&str>) -> anyhow::Result<Value> {
        let tables: Api<NodeSidTable> = Api::all(self.client.clone());
        let slices: Api<NodeProgramSlice> = Api::all(self.client.clone());
        let (tables, slices, daemons) = self.rt.block_on(async {
            anyhow::Ok((
                tables.list(&ListParams::default()).await.context("list nodesidtables")?.items,
                slices.list(&ListParams::default()).await.context("list nodeprogramslices")?.items,
                self.daemon_pods().await?,
            ))
        })?;
        let nodes: Vec<Value> = tables
            .iter()
            .map(|t| {
                let node = t.name_any();
                let mine: Vec<&NodeProgramSlice> = slices.iter().filter(|s| s.labels().get(NODE_LABEL) == Some(&node)).collect();
                let programmed = mine.iter().all(|s| {
                    let status = s.status.clone().unwrap_or_default();
                    status.observed_generation == s.metadata.generation
                        && status.conditions.iter().any(|c| c.type_ == "Programmed" && c.status == "True")
                });
                let daemon = daemons.get(&node).map(|p| {
                    let ready = p
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .into_iter()
                        .flatten()
                        .any(|c| c.type_ == "Ready" && c.status == "True");
                    json!({"pod": format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()), "ready": ready})
                });
                json!({
                    "name": node,
                    "locator": t.spec.locator,
                    "decapSid": t.spec.decap_sid,
                    "sids": t.spec.registrations.len(),
                    "slices": mine.len(),
                    "programmed": !mine.is_empty() && programmed,
                    "daemon": daemon,
                })
            })
            .collect();
        Ok(json!({"nodes": nodes, "chains": self.chains(namespace)?}))
    }
}

impl Cluster {
    /// `srv6pipes monitor`: each daemon's `/monitor` stream (of `node`, or every node) through
    /// the API server. Once every stream has answered (its first line, `{"result":"ok"}`) or
    /// been skipped (`monitor::opened`), `consume` gets their lines as `(node, line)` (an empty
    /// line: that node's stream ended), the nodes read and the nodes skipped; the streams are
    /// read on a thread of their own, which drives this client's runtime until `consume` returns.
    pub fn monitor<T>(
        &self,
        node: Option<&str>,
        request: &srv6::node_api::MonitorRequest,
        consume: impl FnOnce(&std::sync::mpsc::Receiver<(String, String)>, Vec<String>, Vec<String>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let daemons = self.rt.block_on(self.daemon_pods())?;
        let chosen: Vec<(String, String)> = daemons
            .iter()
            .filter(|(n, _)| node.is_none_or(|x| x == n.as_str()))
            .map(|(n, pod)| {
                let uri =
                    stats_uri(pod).map_err(|e| anyhow!(e))?.replace("/proxy/stats", &format!("/proxy/monitor?{}", request.to_query()));
                Ok((n.clone(), uri))
            })
            .collect::<anyhow::Result<_>>()?;
        if chosen.is_empty() {
            anyhow::bail!("no srv6pipes-node pod runs on {}", node.unwrap_or("any node"));
        }
        let (lines, rx) = std::sync::mpsc::channel();
        let (ready, answered) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::scope(|s| {
            s.spawn(|| self.rt.block_on(self.stream_monitors(chosen, node.is_some(), lines, ready, stopped)));
            let (nodes, skipped) = answered.recv().unwrap_or_else(|_| Err(anyhow!("the monitor's streams ended")))?;
            let result = consume(&rx, nodes, skipped);
            let _ = stop.send(());
            result
        })
    }

    /// Opens every stream at once, each given `monitor::OPEN_TIMEOUT` (telling `ready` the nodes
    /// read and skipped, or the failure; `named`: the node was named, its failure is the
    /// command's), then sends their lines until they all end or `stop`.
    async fn stream_monitors(
        &self,
        chosen: Vec<(String, String)>,
        named: bool,
        lines: std::sync::mpsc::Sender<(String, String)>,
        ready: std::sync::mpsc::Sender<anyhow::Result<(Vec<String>, Vec<String>)>>,
        stop: tokio::sync::oneshot::Receiver<()>,
    ) {
        use futures::{AsyncBufReadExt, StreamExt};
        let attempts = futures::future::join_all(chosen.into_iter().map(|(node, uri)| async move {
            let request = http::Request::get(&uri).body(Vec::new()).expect("a GET request");
            let open = async {
                let mut body = Box::pin(self.client.request_stream(request).await?).lines();
                match body.next().await {
                    Some(Ok(first)) if first.contains("\"ok\"") => Ok(body),
                    other => Err(anyhow!("unexpected answer {other:?} (a daemon older than this CLI?)")),
                }
            };
            let attempt = match tokio::time::timeout(crate::monitor::OPEN_TIMEOUT, open).await {
                Ok(opened) => opened.map_err(|e| e.context(uri)),
                Err(_) => Err(anyhow!("{uri}: no answer within {:?}", crate::monitor::OPEN_TIMEOUT)),
            };
            (node, attempt)
        }))
        .await;
        let streams = match crate::monitor::opened(attempts, named) {
            Ok((streams, skipped)) => {
                let _ = ready.send(Ok((streams.iter().map(|(n, _)| n.clone()).collect(), skipped)));
                streams
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let pumps = streams.into_iter().map(|(node, mut body)| {
            let lines = lines.clone();
            async move {
                while let Some(Ok(line)) = body.next().await {
                    if lines.send((node.clone(), line)).is_err() {
                        return;
                    }
                }
                let _ = lines.send((node, String::new()));
            }
        });
        tokio::select! {
            _ = futures::future::join_all(pumps) => {}
            _ = stop => {}
        }
    }
}

/// The API server's path to a daemon pod's `/stats` (its container port named `health`).
fn stats_uri(pod: &Pod) -> Result<String, String> {
    let port = pod
        .spec
        .as_ref()
        .into_iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("health"))
        .map(|p| p.container_port)
        .ok_or_else(|| format!("pod {} has no port named health (a chart older than this CLI?)", pod.name_any()))?;
    Ok(format!("/api/v1/namespaces/{}/pods/{}:{port}/proxy/stats", pod.namespace().unwrap_or_default(), pod.name_any()))
}

/// `srv6pipes status`'s text on a cluster.
pub fn status_text(doc: &Value, chains: &[ServiceChain]) -> String {
    use std::fmt::Write;
    let mut out =
        format!("{:<16} {:<21} {:<21} {:>5} {:>6}  {:<10} {}\n", "NODE", "LOCATOR", "DECAP", "SIDS", "SLICES", "PROGRAMMED", "DAEMON");
    for n in doc["nodes"].as_array().into_iter().flatten() {
        let daemon = match n["daemon"]["ready"].as_bool() {
            Some(true) => format!("{} Ready", n["daemon"]["pod"].as_str().unwrap_or_default()),
            Some(false) => format!("{} NOT READY", n["daemon"]["pod"].as_str().unwrap_or_default()),
            None => "none".into(),
        };
        let _ = writeln!(
            out,
            "{:<16} {:<21} {:<21} {:>5} {:>6}  {:<10} {daemon}",
            n["name"].as_str().unwrap_or_default(),
            n["locator"].as_str().unwrap_or_default(),
            n["decapSid"].as_str().unwrap_or_default(),
            n["sids"],
            n["slices"],
            if n["programmed"] == true { "True" } else { "False" },
        );
    }
    out.push('\n');
    out.push_str(&crate::view::chains_text(chains, false));
    out
}
