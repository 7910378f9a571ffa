//! The operator's Prometheus metrics (prometheus-client, Prometheus text format 0.0.4), served
//! at /metrics on its health address: how long reconciles, compilations and publications take,
//! the chains by their Ready condition, the nodes it programs, and every write it sends to the
//! API server (counted in the client, whatever wrote it).

use std::sync::LazyLock;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `chain` or `node`.
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    /// `Ready` or `Degraded`.
    pub condition: String,
    /// `True` or `False`.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// POST, PUT, PATCH, DELETE.
    pub verb: String,
    /// The resource written: `servicechains`, `nodeprogramslices`, `events`, `leases`, ...
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// What a chain's reconcile ended with: `status` (written), `unchanged`, `not_planned` (the
    /// plan does not hold the chain yet), `conflict` (the chain changed meanwhile: again in 1 s).
    pub outcome: String,
    /// `true` when the plan was older than the world (the chain is reconciled again once a
    /// newer one is made).
    pub stale_plan: String,
}

fn histogram() -> Histogram {
    // 1 ms to ~33 s, doubling.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    pub reconcile: Histograms<ControllerLabels>,
    pub compile: Histogram,
    pub publish: Histogram,
    pub chains: Family<ConditionLabels, Gauge>,
    pub nodes: Gauge,
    pub writes: Family<WriteLabels, Counter>,
    pub chain_reconciles: Family<OutcomeLabels, Counter>,
}

/// The process's metrics: one operator per process.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    reconcile: Family::new_with_constructor(histogram),
    compile: histogram(),
    publish: histogram(),
    chains: Family::default(),
    nodes: Gauge::default(),
    writes: Family::default(),
    chain_reconciles: Family::default(),
});

/// Observes into its histogram the time from its making to its drop (early returns and errors
/// included). Holds a handle on the histogram (shared, as every clone of one is).
pub struct Timer(Histogram, Instant);

impl Timer {
    pub fn start(histogram: &Histogram) -> Self {
        Timer(histogram.clone(), Instant::now())
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.0.observe(self.1.elapsed().as_secs_f64());
    }
}

/// A reconcile's timer, by controller.
pub fn reconcile(controller: &str) -> Timer {
    Timer(METRICS.reconcile.get_or_create_owned(&ControllerLabels { controller: controller.into() }), Instant::now())
}

/// Counts a chain's reconcile that applied it (not a deletion's), by what it ended with.
pub fn chain_reconciled(outcome: &str, stale_plan: bool) {
    METRICS.chain_reconciles.get_or_create(&OutcomeLabels { outcome: outcome.into(), stale_plan: stale_plan.to_string() }).inc();
}

/// After each compilation: the chains by condition, and the nodes with a program.
pub fn planned(plan: &crate::world::Plan) {
    let m = &*METRICS;
    let count = |ready: bool| plan.verdicts.values().filter(|v| v.ready == ready).count() as i64;
    let degraded = plan.verdicts.values().filter(|v| v.degraded.is_some()).count() as i64;
    for (condition, status, n) in [("Ready", "True", count(true)), ("Ready", "False", count(false)), ("Degraded", "True", degraded)] {
        m.chains.get_or_create(&ConditionLabels { condition: condition.into(), status: status.into() }).set(n);
    }
    m.nodes.set(plan.programs.len() as i64);
}

/// Counts a request the operator's client sends, when it writes (the client's layer).
pub fn count_request<B>(request: http::Request<B>) -> http::Request<B> {
    if let Some(labels) = write_labels(request.method(), request.uri().path()) {
        METRICS.writes.get_or_create(&labels).inc();
    }
    request
}

/// A write's verb and resource from its method and path (`/api/v1/namespaces/N/pods/P`,
/// `/apis/G/V/namespaces/N/R/NAME/status`); None for reads.
fn write_labels(method: &http::Method, path: &str) -> Option<WriteLabels> {
    if [http::Method::GET, http::Method::HEAD, http::Method::OPTIONS].contains(method) {
        return None;
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // Skip the group and version: /api/v1/... or /apis/GROUP/VERSION/...
    let rest = match parts.first() {
        Some(&"api") => parts.get(2..),
        Some(&"apis") => parts.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let resource = match rest {
        [resource, _, sub, ..] => format!("{resource}/{sub}"),
        [resource, ..] => resource.to_string(),
        [] => "namespaces".to_string(),
    };
    Some(WriteLabels { verb: method.as_str().into(), resource })
}

/// The Prometheus text of the operator's metrics.
pub fn encode() -> Result<String, std::fmt::Error> {
    let m = &*METRICS;
    let mut root = Registry::with_prefix("srv6pipes");
    let info = Family::<BuildLabels, Gauge>::default();
    info.get_or_create(&BuildLabels { component: "operator".into(), version: env!("CARGO_PKG_VERSION").into() }).set(1);
    root.register("build_info", "The running srv6pipes component and its version (always 1).", info);
    let registry = root.sub_registry_with_prefix("operator");
    registry.register_with_unit("reconcile_duration", "Time of one reconcile, by controller.", Unit::Seconds, m.reconcile.clone());
    registry.register_with_unit("compile_duration", "Time to compile every chain into node programs.", Unit::Seconds, m.compile.clone());
    registry.register_with_unit("publish_duration", "Time to publish one plan's node programs.", Unit::Seconds, m.publish.clone());
    registry.register("chains", "ServiceChains by condition, as of the last compilation.", m.chains.clone());
    registry.register("nodes", "Nodes with a program (a locator), as of the last compilation.", m.nodes.clone());
    registry.register("api_writes", "Writes sent to the API server, by verb and resource.", m.writes.clone());
    let help = "Reconciles that applied a chain, by what they ended with and whether their plan was older than the world.";
    registry.register("chain_reconciles", help, m.chain_reconciles.clone());
    if let Some(bytes) = crate::memory::heap_bytes() {
        let heap = Gauge::<i64>::default();
        heap.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        let help =
            "Heap in use (the bytes jemalloc has allocated) at this scrape; the RSS beyond it is free memory the allocator keeps, code and stacks.";
        registry.register_with_unit("heap", help, Unit::Bytes, heap);
    }
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &root)?;
    Ok(out)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    component: String,
    version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_named_by_verb_and_resource() {
        let w = |m: http::Method, p: &str| write_labels(&m, p).map(|l| format!("{} {}", l.verb, l.resource));
        assert_eq!(w(http::Method::GET, "/apis/srv6pipes.io/v1alpha1/servicechains"), None);
        assert_eq!(
            w(http::Method::PATCH, "/apis/srv6pipes.io/v1alpha1/namespaces/default/servicechains/web/status").as_deref(),
            Some("PATCH servicechains/status")
        );
        assert_eq!(
            w(http::Method::PATCH, "/apis/srv6pipes.io/v1alpha1/nodeprogramslices/n1.0").as_deref(),
            Some("PATCH nodeprogramslices")
        );
        assert_eq!(w(http::Method::POST, "/apis/events.k8s.io/v1/namespaces/default/events").as_deref(), Some("POST events"));
        assert_eq!(w(http::Method::PATCH, "/api/v1/nodes/n1").as_deref(), Some("PATCH nodes"));
        assert_eq!(w(http::Method::DELETE, "/apis/srv6pipes.io/v1alpha1/nodeprograms/n1").as_deref(), Some("DELETE nodeprograms"));
    }

    #[test]
    fn the_text_carries_every_family() {
        drop(reconcile("chain"));
        chain_reconciled("unchanged", true);
        METRICS.writes.get_or_create(&WriteLabels { verb: "PATCH".into(), resource: "servicechains/status".into() }).inc();
        let text = encode().unwrap();
        for want in [
            "srv6pipes_build_info{component=\"operator\",version=\"",
            "# TYPE srv6pipes_operator_reconcile_duration_seconds histogram",
            "srv6pipes_operator_reconcile_duration_seconds_count{controller=\"chain\"}",
            "srv6pipes_operator_api_writes_total{verb=\"PATCH\",resource=\"servicechains/status\"}",
            "# TYPE srv6pipes_operator_compile_duration_seconds histogram",
            "# TYPE srv6pipes_operator_heap_bytes gauge",
            "srv6pipes_operator_chain_reconciles_total{outcome=\"unchanged\",stale_plan=\"true\"}",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }
}
