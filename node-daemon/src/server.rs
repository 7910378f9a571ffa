//! The unix-socket API: mode 0600, callers checked with SO_PEERCRED, one JSON line each way.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use srv6::node_api::{Request, Response};
use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use srv6pipes_probe::{Answer, Health, Reply};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, Notify};
use tracing::{info, warn};

use crate::kube::KubePlane;
use crate::node::{CniUninstall, Node};

/// Where the node's programs come from and where its SIDs go. Both end in the same
/// `Node::program`; only the transport differs.
pub enum ControlPlane {
    /// The lab (or a script) reads SIDs and pushes programs over the socket.
    Local,
    /// The operator, through the API server (see `crate::kube`).
    Kube(Box<KubePlane>),
}

/// The daemon's HTTP endpoints.
pub struct Http {
    /// Where /metrics is served (it answers the probes' paths and /stats too).
    pub metrics: Option<SocketAddr>,
    /// What /healthz and /readyz report: the main loop beats it, readiness is set here.
    pub health: Arc<Health>,
    /// The health listener's way to the node, once it runs (for /stats).
    pub late: Late,
    /// The live monitor's limit: events per second per CPU.
    pub monitor_rate: u32,
}

/// The health listener starts before the node (so the probes answer while it waits for its
/// locator); it serves /stats once [`serve`] has the node.
#[derive(Clone, Default)]
pub struct Late(Arc<std::sync::OnceLock<Arc<Shared>>>);

impl Late {
    /// GET `target` on the health listener: /healthz, /readyz, /stats (the node's counters as
    /// JSON, `srv6::node_api::NodeStats`: what `srv6pipes trace` and `stats` read through the
    /// API server's pods/proxy) and /monitor (`srv6pipes monitor`'s stream of events, one JSON
    /// line each after `{"result":"ok"}`, `?type=drop,trace&chain=NS/NAME&sample=N`).
    pub async fn answer(&self, target: &str, health: &Health) -> Answer {
        let (path, query) = srv6pipes_probe::split_target(target);
        match (path, self.0.get()) {
            ("/stats", Some(shared)) => stats_reply(shared).await.into(),
            ("/monitor", Some(shared)) => monitor_lines(shared, query),
            ("/stats" | "/monitor", None) => Reply::unavailable("starting: the node's datapath is not up yet\n").into(),
            _ => health.answer(path).unwrap_or_else(|| Reply::not_found(&["/healthz", "/readyz", "/stats", "/monitor"])).into(),
        }
    }
}

/// GET /monitor: the subscriber's events as lines, or why not.
fn monitor_lines(shared: &Shared, query: &str) -> Answer {
    let request = match srv6::node_api::MonitorRequest::from_query(query) {
        Ok(r) => r,
        Err(e) => return Reply { status: 400, body: format!("{e}\n") }.into(),
    };
    match monitor_stream(shared, request) {
        Ok(lines) => Answer::Lines(lines),
        Err(e) => Reply { status: 500, body: format!("{e:#}\n") }.into(),
    }
}

/// A monitor's lines, on the socket as on /monitor: `{"result":"ok"}` first (which also gets
/// the headers through a proxy that holds them until the body starts), then its events.
fn monitor_stream(shared: &Shared, request: srv6::node_api::MonitorRequest) -> anyhow::Result<tokio::sync::mpsc::Receiver<String>> {
    let sub = shared.monitor.subscribe(request)?;
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tx.try_send(serde_json::to_string(&Response::Ok)? + "\n").expect("room in a fresh channel");
    tokio::spawn(sub.forward(tx));
    Ok(rx)
}

async fn stats_reply(shared: &Shared) -> Reply {
    let stats = shared.node.lock().await.stats();
    match stats.and_then(|s| Ok(serde_json::to_string(&s)?)) {
        Ok(json) => Reply::ok(json + "\n"),
        Err(e) => Reply { status: 500, body: format!("{e:#}\n") },
    }
}

/// What the socket handlers share.
pub struct Shared {
    node: Mutex<Node>,
    /// One program at a time; the node itself is locked only for the map updates.
    programming: Mutex<()>,
    /// Told after requests that may change the registrations (kube mode republishes).
    sids_changed: Notify,
    /// Kube mode: the API client, for pod lookups.
    kube: Option<kube::Client>,
    health: Arc<Health>,
    /// Program and request durations, for /metrics.
    timings: crate::metrics::Timings,
    /// `srv6pipes monitor`'s subscribers.
    monitor: Arc<crate::monitor::Hub>,
    /// srv6pipes is being uninstalled from the node: DELs are served, registrations refused
    /// (their state would go with the rest a moment later, leaving the pod without its SID).
    departing: std::sync::atomic::AtomicBool,
}

/// Kube mode: how a terminating daemon tells an uninstall from a restart, and what it then
/// removes besides its own datapath.
pub struct Departure {
    pub daemonset: crate::kube::DaemonSetRef,
    pub cni: Option<CniUninstall>,
}

/// Serves the node's socket API until SIGTERM: programs and SIDs (from the lab over the socket,
/// or from the operator through the API server), CNI calls, /metrics; every second it beats the
/// health, keeps srv6pipes' programs first and applies queued deregistrations.
pub async fn serve(path: &Path, http: Http, mut node: Node, plane: ControlPlane, departure: Option<Departure>) -> anyhow::Result<()> {
    // Before any request is served: a container id the runtime reuses (`podman restart`) could
    // otherwise be registered anew, then deregistered by the DEL queued for its last life.
    node.apply_queued_deregistrations(path);
    let listener = bind(path)?;
    let first_start = node.first_start();
    let shared = share(node, &plane, &http)?;
    match plane {
        // Kube mode is ready once the node's current program is applied (kube_loop says so).
        ControlPlane::Kube(plane) => {
            shared.health.set_ready(Err("waiting for the first list of the node's program".into()));
            // Only on the node's first start: after a restart or a reboot, pods being remade go
            // through srv6pipes-cni, and their addresses in the API may be the old sandbox's.
            if let Some(network) = plane.repair_network.clone().filter(|_| first_start) {
                let (client, node, shared) = (plane.client(), plane.node().to_string(), shared.clone());
                tokio::spawn(crate::repair::repair_pods(client, node, network, plane.started, move || {
                    let shared = shared.clone();
                    async move { shared.node.lock().await.registered_pods() }
                }));
            }
            let shared = shared.clone();
            tokio::spawn(async move { kube_loop(*plane, shared).await });
        }
        // The lab pushes programs over the socket, each applied before it is answered.
        ControlPlane::Local => shared.health.set_ready(Ok(())),
    }
    if let Some(addr) = http.metrics {
        let shared = shared.clone();
        srv6pipes_probe::spawn(addr, "metrics at /metrics", move |path: String| {
            let shared = shared.clone();
            async move { http_request(&path, &shared).await }
        })
        .await?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // From the start: the DaemonSet's deletion must be seen while this daemon can still read it.
    let deletion_seen = match (&departure, &shared.kube) {
        (Some(d), Some(client)) => crate::kube::watch_deletion(client.clone(), &d.daemonset),
        _ => crate::kube::DeletionSeen::default(),
    };
    let mut recount = tokio::time::interval(std::time::Duration::from_secs(1));
    spawn_flow_recount(&shared).await?;
    // Chained mode: the primary plugin may rewrite its conflist (an upgrade, a restart of its
    // installer); the entry goes back within seconds. In this loop, so never during an uninstall.
    let conf_dir = departure.as_ref().and_then(|d| d.cni.as_ref()).map(|c| c.conf_dir.clone());
    let mut conflist_check = tokio::time::interval(std::time::Duration::from_secs(2));
    let mut conflist_error = String::new();
    loop {
        tokio::select! {
            _ = conflist_check.tick(), if conf_dir.is_some() => {
                keep_conflist_entry(conf_dir.as_deref().expect("guarded"), &mut conflist_error);
            }
            _ = recount.tick() => {
                shared.health.beat();
                let mut node = shared.node.lock().await;
                if let Err(e) = node.keep_first() {
                    warn!(error = %format!("{e:#}"), "keeping srv6pipes' programs first failed");
                }
                if node.apply_queued_deregistrations(path) {
                    shared.sids_changed.notify_one();
                }
            }
            conn = listener.accept() => match conn {
                Ok((stream, _)) => spawn_connection(stream, &shared),
                // (e.g. out of file descriptors for a moment: the daemon goes on serving)
                Err(e) => {
                    warn!(socket = %path.display(), error = %e, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = term.recv() => {
                if let (Some(d), Some(client)) = (&departure, &shared.kube) {
                    match crate::kube::departure_of(client.clone(), &d.daemonset, &deletion_seen).await {
                        crate::kube::Departure::Uninstall(why) => {
                            info!(reason = %why, "SIGTERM: srv6pipes is being uninstalled; removing it from the node");
                            shared.departing.store(true, std::sync::atomic::Ordering::Release);
                            serve_until_detached(&listener, path, &shared, tokio::time::Instant::now() + DEPARTING_WAIT).await;
                            uninstall(path, d, &shared).await;
                            return Ok(());
                        }
                        crate::kube::Departure::Stay(why) => info!(reason = %why, "SIGTERM: not an uninstall"),
                    }
                }
                // Maps and links stay pinned and keep forwarding until the next daemon adopts
                // them; the socket stays too, so the CNI plugin says "try again later".
                info!("SIGTERM: exiting; the datapath stays");
                return Ok(());
            }
        }
    }
}

/// The socket at `path`, mode 0600: bound aside and renamed over the old one, so the path never
/// disappears while a daemon restarts (the CNI plugin reads "no socket" as "uninstalled").
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let fresh = path.with_extension("sock.new");
    match std::fs::remove_file(&fresh) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove {}", fresh.display())),
    }
    let listener = UnixListener::bind(&fresh).with_context(|| format!("bind {}", fresh.display()))?;
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&fresh, path).with_context(|| format!("rename {} to {}", fresh.display(), path.display()))?;
    info!(socket = %path.display(), "serving");
    Ok(listener)
}

/// What the handlers share, with the live monitor started on the node's pinned maps; the
/// health listener serves /stats from it from now on.
fn share(node: Node, plane: &ControlPlane, http: &Http) -> anyhow::Result<Arc<Shared>> {
    let pins = node.pin_dir().to_path_buf();
    let names = Arc::new(std::sync::OnceLock::<std::sync::Weak<Shared>>::new());
    let monitor = {
        let names = names.clone();
        crate::monitor::Hub::start(&pins, http.monitor_rate, move || {
            let shared = names.get().and_then(std::sync::Weak::upgrade);
            Box::pin(async move {
                match shared {
                    Some(s) => Arc::new(s.node.lock().await.monitor_names()),
                    None => Default::default(),
                }
            })
        })
        .with_context(|| format!("open the monitor's maps in {}", pins.display()))?
    };
    let shared = Arc::new(Shared {
        node: Mutex::new(node),
        programming: Mutex::new(()),
        sids_changed: Notify::new(),
        kube: match plane {
            ControlPlane::Kube(p) => Some(p.client()),
            ControlPlane::Local => None,
        },
        health: http.health.clone(),
        timings: Default::default(),
        monitor,
        departing: Default::default(),
    });
    let _ = names.set(Arc::downgrade(&shared));
    let _ = http.late.0.set(shared.clone());
    Ok(shared)
}

/// Chained mode, every 2 s: puts srv6pipes-cni back in the primary plugin's conflist in `dir`
/// if it lost it; an error is logged once until it changes (`last_error`).
fn keep_conflist_entry(dir: &Path, last_error: &mut String) {
    match srv6pipes_cni::conflist::ensure_entry(dir) {
        Ok(Some(file)) => info!(conflist = %file.display(), "the primary plugin's conflist lost srv6pipes-cni: entry restored"),
        Ok(None) => last_error.clear(),
        Err(e) => {
            let e = format!("{e:#}");
            if e != *last_error {
                warn!(dir = %dir.display(), error = %e, "cannot keep srv6pipes-cni in the primary conflist");
                *last_error = e;
            }
        }
    }
}

/// How long an uninstall waits for attached pods to detach (the chart gives the daemon 30 s to
/// stop): the release's own stream proxies, deleted by the same `helm uninstall`, drain their
/// connections first (10 s by default).
const DEPARTING_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// An uninstall's first step: while pods are attached, until `deadline`, CNI DELs are served
/// (and queued ones applied), so that the pods going with the release detach and the CNI binary
/// can go too; a pod added meanwhile is refused (`Shared::departing`). Pods that stay (VNFs not
/// deleted first) keep the binary (`--keep-binary`).
async fn serve_until_detached(listener: &UnixListener, path: &Path, shared: &Arc<Shared>, deadline: tokio::time::Instant) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        let attached = shared.node.lock().await.registered_pods();
        if attached.is_empty() {
            return;
        }
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => spawn_connection(stream, shared),
                // (e.g. out of file descriptors: not a busy loop until the deadline)
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            },
            _ = tick.tick() => {
                shared.node.lock().await.apply_queued_deregistrations(path);
            }
            _ = tokio::time::sleep_until(deadline) => {
                let pods: Vec<String> = attached.iter().map(|(ns, name)| format!("{ns}/{name}")).collect();
                info!(?pods, wait = ?DEPARTING_WAIT, "pods still attached after the uninstall's wait");
                return;
            }
        }
    }
}

/// srv6pipes is being uninstalled: the node's datapath, the CNI entry (`d.cni`), the socket at
/// `path` and its pending deletions go; each step that fails is logged and the rest go on.
async fn uninstall(path: &Path, d: &Departure, shared: &Shared) {
    let mut errs = shared.node.lock().await.uninstall(d.cni.as_ref()).await;
    if let Err(e) = std::fs::remove_file(path) {
        errs.push(anyhow::Error::from(e).context(format!("remove {}", path.display())));
    }
    let pending = srv6::node_api::pending_deletions_dir(path);
    match std::fs::remove_dir_all(&pending) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            errs.push(anyhow::Error::from(e).context(format!("remove {}", pending.display())))
        }
        _ => {}
    }
    for e in &errs {
        warn!(error = %format!("{e:#}"), "uninstall step failed");
    }
    info!(failed_steps = errs.len(), "uninstalled; exiting");
}

/// Recounts End.AD's flows every second on the counter's own map handles, on a blocking
/// thread: the node is locked only to store the counts, so CNI calls and programs never wait
/// for a walk of every flow.
async fn spawn_flow_recount(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let pins = shared.node.lock().await.pin_dir().to_path_buf();
    let mut counter = srv6pipes_ebpf::FlowCounter::open(&pins).with_context(|| format!("open the flow maps in {}", pins.display()))?;
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut previous = std::collections::BTreeMap::new();
        loop {
            tick.tick().await;
            let counted = tokio::task::spawn_blocking(move || {
                let counts = counter.recount(&previous);
                (counter, previous, counts)
            })
            .await;
            let Ok((c, p, counts)) = counted else { return };
            (counter, previous) = (c, p);
            match counts {
                Ok(counts) => {
                    previous = counts.clone();
                    shared.node.lock().await.set_flow_counts(counts);
                }
                Err(e) => warn!(error = %format!("{e:#}"), "recounting End.AD flows failed"),
            }
        }
    });
    Ok(())
}

/// GET /metrics: the Prometheus text format; /stats and the probes' paths as on --health-addr.
async fn http_request(path: &str, shared: &Shared) -> Reply {
    if path == "/stats" {
        return stats_reply(shared).await;
    }
    if path != "/metrics" {
        return shared.health.answer(path).unwrap_or_else(|| Reply::not_found(&["/metrics", "/stats", "/healthz", "/readyz"]));
    }
    match shared.node.lock().await.metrics(&shared.timings) {
        Ok(text) => Reply::ok(text),
        Err(e) => Reply { status: 500, body: format!("{e:#}\n") },
    }
}

fn spawn_connection(stream: UnixStream, shared: &Arc<Shared>) {
    let shared = shared.clone();
    tokio::spawn(async move {
        if let Err(e) = connection(stream, shared).await {
            warn!(error = %format!("{e:#}"), "connection failed");
        }
    });
}

async fn connection(stream: UnixStream, shared: Arc<Shared>) -> anyhow::Result<()> {
    let cred = stream.peer_cred().context("SO_PEERCRED")?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() != 0 && cred.uid() != me {
        warn!(uid = cred.uid(), pid = ?cred.pid(), "refused caller");
        return Ok(());
    }
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    r.read_line(&mut line).await?;
    let started = std::time::Instant::now();
    let request = serde_json::from_str::<Request>(&line);
    if let Ok(Request::Monitor(m)) = request {
        return monitor_connection(&shared, m, r, w).await;
    }
    let kind = request.as_ref().map_or("invalid", request_kind);
    let resp = match request {
        Ok(Request::Program(_)) if shared.kube.is_some() => {
            Response::Error { message: "this node daemon runs in kube mode: the operator programs it through its NodeProgram".into() }
        }
        // Answered here, without the node's lock: only the API client is needed.
        Ok(Request::Program(p)) => match program(&shared, p).await {
            Ok(()) => Response::Ok,
            Err(e) => Response::Error { message: format!("{e:#}") },
        },
        Ok(Request::Register(a)) if shared.departing.load(std::sync::atomic::Ordering::Acquire) => {
            Response::Error { message: format!("pod {}/{}: srv6pipes is being uninstalled from this node", a.pod_namespace, a.pod_name) }
        }
        Ok(Request::PodNetworks { namespace, name }) => match shared.kube.clone() {
            Some(client) => match crate::kube::pod_networks(client, &namespace, &name).await {
                Ok(networks) => Response::Networks { networks },
                Err(e) => Response::Error { message: format!("{e:#}") },
            },
            None => Response::Error { message: format!("pod {namespace}/{name}: pod lookups need a node daemon in kube mode") },
        },
        Ok(req) => {
            let mutates = matches!(req, Request::Register(_) | Request::Unregister { .. } | Request::Gc { .. });
            let resp = shared.node.lock().await.handle(req).await;
            if mutates {
                shared.sids_changed.notify_one();
            }
            resp
        }
        Err(e) => Response::Error { message: format!("invalid request: {e}") },
    };
    shared.timings.requests.get_or_create(&crate::metrics::RequestLabels { request: kind.into() }).observe(started.elapsed().as_secs_f64());
    let mut out = serde_json::to_vec(&resp)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    Ok(())
}

/// A socket's monitor: `Ok`, then its events as lines until the caller closes the socket.
async fn monitor_connection(
    shared: &Shared,
    request: srv6::node_api::MonitorRequest,
    r: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut w: tokio::net::unix::OwnedWriteHalf,
) -> anyhow::Result<()> {
    match monitor_stream(shared, request) {
        Ok(lines) => Ok(srv6pipes_probe::relay_lines(r, &mut w, lines).await?),
        Err(e) => {
            let resp = Response::Error { message: format!("{e:#}") };
            Ok(w.write_all(format!("{}\n", serde_json::to_string(&resp)?).as_bytes()).await?)
        }
    }
}

/// A request's name in the request-duration metric.
fn request_kind(r: &Request) -> &'static str {
    match r {
        Request::Register(_) => "register",
        Request::Unregister { .. } => "unregister",
        Request::Sids => "sids",
        Request::Program(_) => "program",
        Request::Stats => "stats",
        Request::Lookup { .. } => "lookup",
        Request::Gc { .. } => "gc",
        Request::PodNetworks { .. } => "pod_networks",
        Request::Monitor(_) => "monitor",
    }
}

/// Applies a program with the node locked only for its map updates: the route lookups before,
/// the peer routes and the program's file after run without it, so CNI calls are answered
/// while a large program is applied.
async fn program(shared: &Shared, p: srv6::node_api::NodeProgram) -> anyhow::Result<()> {
    let _one = shared.programming.lock().await;
    let _timed = Timed(&shared.timings.program_apply, std::time::Instant::now());
    let (lookups, netlink, store) = {
        let node = shared.node.lock().await;
        (node.lookups(&p)?, node.netlink(), node.store())
    };
    let resolved = lookups.run(&netlink).await?;
    let pending = shared.node.lock().await.apply_maps(&p, &resolved)?;
    let done = pending.routes.run(&netlink).await;
    // What was applied is recorded even when the program's file cannot be written.
    let saved = store.save_program(&p);
    shared.node.lock().await.finish(p, pending, done)?;
    saved
}

/// Observes the time since its start when dropped (so failed applications count too).
struct Timed<'a>(&'a prometheus_client::metrics::histogram::Histogram, std::time::Instant);

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        self.0.observe(self.1.elapsed().as_secs_f64());
    }
}

/// Kube mode: publishes the SID table at start and whenever registrations change, and applies
/// each new generation of the node's program, reporting the outcome in its status.
async fn kube_loop(mut plane: KubePlane, shared: Arc<Shared>) {
    use futures::StreamExt;
    let mut updates = Box::pin(plane.updates());
    let mut published = crate::kube::Published::default();
    let mut sids_published: Option<srv6::node_api::NodeSids> = None;
    let mut applied: Option<Vec<(String, i64)>> = None;
    let mut failure: Option<String> = None;
    let mut decoded = crate::kube::Decoded::default();
    let mut retry = tokio::time::interval(std::time::Duration::from_secs(5));
    shared.sids_changed.notify_one();
    loop {
        tokio::select! {
            _ = shared.sids_changed.notified() => {}
            // Failed publications and programs are retried (error backoff).
            _ = retry.tick() => {}
            u = updates.next() => {
                let Some(mut u) = u else { return };
                // A burst of events (a re-list, many slices written) is taken in one go.
                loop {
                    match plane.own_event(&u) {
                        crate::kube::Own::Nothing => {}
                        crate::kube::Own::Republish => sids_published = None,
                        crate::kube::Own::LocatorMoved(why) => {
                            // The datapath stays pinned; the next daemon starts on the new locator.
                            tracing::error!(reason = %why, "the node's locator changed: exiting to start again on it");
                            std::process::exit(1);
                        }
                    }
                    published.update(u);
                    match futures::FutureExt::now_or_never(updates.next()) {
                        Some(Some(next)) => u = next,
                        _ => break,
                    }
                }
            }
        }
        let source = published.source(plane.node());
        if let Some(source) = &source {
            let id = source.id();
            if applied.as_ref() != Some(&id) {
                let result = match source.program(&mut decoded) {
                    Ok(p) => program(&shared, p).await.map_err(|e| format!("{e:#}")),
                    Err(e) => Err(e),
                };
                let what = match &source {
                    crate::kube::Source::Slices(s) => format!("{} slices", s.len()),
                    crate::kube::Source::Legacy(_) => "the pre-slice NodeProgram".to_string(),
                };
                match &result {
                    Ok(()) => {
                        info!(from = %what, "programmed from the operator");
                        applied = Some(id);
                    }
                    Err(e) => warn!(from = %what, error = %e, "programming failed; retrying in 5 s"),
                }
                if let Err(e) = plane.report(source, &result).await {
                    warn!(error = %format!("{e:#}"), "status report failed");
                }
                failure = result.err().map(|e| format!("{what}: {e}"));
            }
        }
        shared.health.set_ready(crate::kube::readiness(
            published.synced(),
            source.map(|s| s.id()).as_ref(),
            applied.as_ref(),
            failure.as_deref(),
        ));
        let sids = shared.node.lock().await.sids();
        if sids_published.as_ref() != Some(&sids) {
            match plane.publish(&sids).await {
                Ok(()) => sids_published = Some(sids),
                Err(e) => warn!(error = %format!("{e:#}"), "publishing the SID table failed; retrying"),
            }
        }
    }
}
