//! The node daemon's Prometheus metrics, through prometheus-client in the Prometheus text format
//! (0.0.4, what `promtool check metrics` reads): the datapath's counters (read from its maps at
//! each scrape), the stream proxies', and the durations the daemon measures as it works
//! (program applications, CNI requests), kept across scrapes. Pods are named by separate
//! `namespace` and `pod` labels, chains by `namespace` and `chain`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use srv6::node_api::NodeStats;
use srv6::sid::Sid;

/// 1 ms to ~33 s, doubling: a CNI request takes milliseconds, a 10,000-SID program seconds.
fn buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 16)
}

fn histogram() -> Histogram {
    Histogram::new(buckets())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `register` (CNI ADD), `unregister` (DEL), `lookup` (CHECK), `gc` (GC), `pod_networks`,
    /// `sids`, `stats`, `program`.
    pub request: String,
}

/// What the daemon times as it works: kept for the process's life, read at each scrape.
#[derive(Clone)]
pub struct Timings {
    /// Applying one program (maps, routes, the program file).
    pub program_apply: Histogram,
    /// Answering one request on the socket (the CNI plugin's, the lab's).
    pub requests: Family<RequestLabels, Histogram, fn() -> Histogram>,
}

impl Default for Timings {
    fn default() -> Self {
        Timings { program_apply: histogram(), requests: Family::new_with_constructor(histogram) }
    }
}

/// The owner of a proxy SID: (namespace, pod, interface).
pub type Owner = (String, String, String);

/// One scrape's inputs.
pub struct Scrape<'a> {
    pub node: &'a str,
    pub stats: &'a NodeStats,
    /// A proxy SID's owner, empty strings for the node's own SIDs.
    pub owner: &'a dyn Fn(Sid) -> Owner,
    /// Proxy SIDs allocated on this node.
    pub sids: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SidLabels {
    node: String,
    sid: String,
    behavior: String,
    namespace: String,
    pod: String,
    interface: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChainLabels {
    node: String,
    namespace: String,
    chain: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    node: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    node: String,
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    node: String,
    namespace: String,
    pod: String,
    sid: String,
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamBytesLabels {
    node: String,
    namespace: String,
    pod: String,
    sid: String,
    function: String,
    direction: String,
    side: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamErrorLabels {
    node: String,
    namespace: String,
    pod: String,
    sid: String,
    function: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub component: String,
    pub version: String,
}

/// `srv6pipes_build_info{component, version} 1`, in `registry`.
pub fn register_build_info(registry: &mut Registry, component: &str) {
    let info = Family::<BuildLabels, Gauge>::default();
    info.get_or_create(&BuildLabels { component: component.into(), version: env!("CARGO_PKG_VERSION").into() }).set(1);
    registry.register("build_info", "The running srv6pipes component and its version (always 1).", info);
}

fn split(namespaced: &str) -> (String, String) {
    match namespaced.split_once('/') {
        Some((ns, name)) => (ns.into(), name.into()),
        None => (String::new(), namespaced.into()),
    }
}

fn counter_family<L: Clone + std::hash::Hash + Eq + std::fmt::Debug + EncodeLabelSet + Send + Sync + 'static>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    values: impl IntoIterator<Item = (L, u64)>,
) {
    let family = Family::<L, Counter>::default();
    for (labels, v) in values {
        family.get_or_create(&labels).inc_by(v);
    }
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, family),
        None => registry.register(name, help, family),
    }
}

/// The Prometheus text of one scrape.
pub fn encode(s: &Scrape<'_>, timings: &Timings) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("srv6pipes");
    let node = || s.node.to_string();
    let sid_labels = |c: &srv6::node_api::SidCounters| {
        let (namespace, pod, interface) = (s.owner)(c.sid);
        SidLabels { node: node(), sid: c.sid.to_string(), behavior: c.behavior.clone(), namespace, pod, interface }
    };
    let sids = &s.stats.sids;
    counter_family(
        &mut registry,
        "sid_packets",
        "Packets processed by a local SID.",
        None,
        sids.iter().map(|c| (sid_labels(c), c.packets)),
    );
    counter_family(
        &mut registry,
        "sid",
        "Bytes processed by a local SID.",
        Some(Unit::Bytes),
        sids.iter().map(|c| (sid_labels(c), c.bytes)),
    );
    counter_family(&mut registry, "sid_drops", "Packets a local SID dropped.", None, sids.iter().map(|c| (sid_labels(c), c.drops)));
    let chain_labels = |c: &srv6::node_api::ChainCounters| {
        let (namespace, chain) = split(&c.chain);
        ChainLabels { node: node(), namespace, chain }
    };
    let chains = &s.stats.chains;
    let help = "this node's headend steered into a chain.";
    counter_family(&mut registry, "chain_packets", &format!("Packets {help}"), None, chains.iter().map(|c| (chain_labels(c), c.packets)));
    counter_family(&mut registry, "chain", &format!("Bytes {help}"), Some(Unit::Bytes), chains.iter().map(|c| (chain_labels(c), c.bytes)));
    let dropped = "Packets of a chain this node's headend dropped.";
    counter_family(&mut registry, "chain_drops", dropped, None, chains.iter().map(|c| (chain_labels(c), c.drops)));
    let drops = s.stats.drops.iter().map(|(r, n)| (ReasonLabels { node: node(), reason: r.clone() }, *n));
    counter_family(&mut registry, "drops", "Packets the datapath dropped, by reason.", None, drops);
    let events = s.stats.events.iter().map(|(e, n)| (EventLabels { node: node(), event: e.clone() }, *n));
    counter_family(&mut registry, "events", "Datapath events: ICMP errors sent or rate limited, TCP MSS clamps.", None, events);
    stream_metrics(&mut registry, s.node, &s.stats.streams);
    let allocated = Family::<NodeLabels, Gauge>::default();
    allocated.get_or_create(&NodeLabels { node: node() }).set(s.sids as i64);
    registry.register("sids", "Proxy SIDs allocated on this node.", allocated);
    registry.register_with_unit(
        "node_program_apply_duration",
        "Time to apply one node program (maps, routes, the program file).",
        Unit::Seconds,
        timings.program_apply.clone(),
    );
    registry.register_with_unit(
        "node_request_duration",
        "Time to answer one request on the node's socket (register: CNI ADD, unregister: DEL, lookup: CHECK, gc: GC).",
        Unit::Seconds,
        timings.requests.clone(),
    );
    register_build_info(&mut registry, "node");
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// The stream proxies' counters (SRv6 pipes), per proxy pod, SID and function.
fn stream_metrics(registry: &mut Registry, node: &str, streams: &[srv6::pipes::StreamCounters]) {
    let labels = |c: &srv6::pipes::StreamCounters| {
        let (namespace, pod) = split(&c.pod);
        StreamLabels { node: node.into(), namespace, pod, sid: c.sid.to_string(), function: c.function.clone() }
    };
    let active = Family::<StreamLabels, Gauge>::default();
    for c in streams {
        active.get_or_create(&labels(c)).set(c.active as i64);
    }
    registry.register("stream_connections_active", "Connections a stream proxy relays now.", active);
    counter_family(
        registry,
        "stream_connections",
        "Connections a stream proxy accepted.",
        None,
        streams.iter().map(|c| (labels(c), c.total)),
    );
    let failed = "Connections a stream proxy ended with a reset.";
    counter_family(registry, "stream_connections_failed", failed, None, streams.iter().map(|c| (labels(c), c.failed)));
    let bytes = streams.iter().flat_map(|c| {
        let l = labels(c);
        [
            ("forward", "in", c.forward_in),
            ("forward", "out", c.forward_out),
            ("reverse", "in", c.reverse_in),
            ("reverse", "out", c.reverse_out),
        ]
        .map(|(direction, side, v)| {
            let StreamLabels { node, namespace, pod, sid, function } = l.clone();
            (StreamBytesLabels { node, namespace, pod, sid, function, direction: direction.into(), side: side.into() }, v)
        })
    });
    let help =
        "Bytes through a stream proxy, by direction (forward: client to server) and side (in: read, out: written after the functions).";
    counter_family(registry, "stream", help, Some(Unit::Bytes), bytes);
    let errors = streams.iter().flat_map(|c| {
        let l = labels(c);
        c.errors.iter().map(move |(reason, n)| {
            let StreamLabels { node, namespace, pod, sid, function } = l.clone();
            (StreamErrorLabels { node, namespace, pod, sid, function, reason: reason.clone() }, *n)
        })
    });
    counter_family(registry, "stream_errors", "Connections a stream proxy reset, by reason.", None, errors);
}

#[cfg(test)]
mod tests {
    use super::*;
    use srv6::node_api::{ChainCounters, SidCounters};

    #[test]
    fn counters_carry_separate_namespace_and_pod_labels_and_conventional_names() {
        let sid = Sid("fcbb:bb00:1:e001::".parse().unwrap());
        let stats = NodeStats {
            sids: vec![SidCounters { sid, behavior: "End.AD".into(), function: None, packets: 5, bytes: 500, drops: 1 }],
            chains: vec![ChainCounters { chain: "default/web".into(), packets: 5, bytes: 500, drops: 0 }],
            drops: vec![("closed_domain".into(), 2)],
            ..Default::default()
        };
        let owner = |_: Sid| ("default".to_string(), "fw".to_string(), "net1".to_string());
        let timings = Timings::default();
        timings.program_apply.observe(0.02);
        timings.requests.get_or_create(&RequestLabels { request: "register".into() }).observe(0.004);
        let text = encode(&Scrape { node: "n1", stats: &stats, owner: &owner, sids: 1 }, &timings).unwrap();
        for want in [
            "# TYPE srv6pipes_sid_packets_total counter\n",
            "srv6pipes_sid_packets_total{node=\"n1\",sid=\"fcbb:bb00:1:e001::\",behavior=\"End.AD\",namespace=\"default\",pod=\"fw\",interface=\"net1\"} 5\n",
            "srv6pipes_sid_bytes_total{node=\"n1\",sid=\"fcbb:bb00:1:e001::\",behavior=\"End.AD\",namespace=\"default\",pod=\"fw\",interface=\"net1\"} 500\n",
            "srv6pipes_chain_packets_total{node=\"n1\",namespace=\"default\",chain=\"web\"} 5\n",
            "srv6pipes_drops_total{node=\"n1\",reason=\"closed_domain\"} 2\n",
            "srv6pipes_sids{node=\"n1\"} 1\n",
            "# TYPE srv6pipes_node_program_apply_duration_seconds histogram\n",
            "srv6pipes_node_program_apply_duration_seconds_count 1\n",
            "srv6pipes_node_request_duration_seconds_count{request=\"register\"} 1\n",
            "srv6pipes_build_info{component=\"node\",version=\"",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }
}
