//! srv6pipes-operator binary: leader election, then the controllers until SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ipnet::Ipv6Net;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use srv6pipes_operator::{controller, lease::Elector};
use srv6pipes_probe::Health;
use std::sync::Arc;
use tracing::{error, info};

/// srv6pipes operator.
///
/// Watches ServiceChains, Pods, Nodes and the node daemons' NodeSidTables; compiles the chains
/// and server-side applies each node's NodeProgramSlices (field manager srv6pipes-operator); writes
/// each chain's status (Ready/Degraded conditions, hops, paths) and Events; gives every node a
/// locator from --cluster-block (annotation srv6pipes.io/locator). One instance leads at a time
/// (Lease --lease-name in --lease-namespace).
#[derive(Parser, Debug)]
#[command(name = "srv6pipes-operator", version)]
struct Args {
    /// Kubeconfig to use; default: KUBECONFIG, ~/.kube/config, then the in-cluster account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The cluster's locator block; node locators are allocated from it.
    #[arg(long, default_value = "fcbb:bb00::/32")]
    cluster_block: Ipv6Net,
    /// Length of the locators given to nodes (FUNCT is the next 16 bits).
    #[arg(long, default_value_t = 48)]
    locator_length: u8,
    /// The operator's namespace: the leader-election Lease's.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    lease_namespace: String,
    #[arg(long, default_value = "srv6pipes-operator")]
    lease_name: String,
    /// Seconds a leader holds the lease without renewing it.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// Seconds within which the leader must renew, else it stops writing and exits; shorter
    /// than --lease-duration (default: two thirds of it), so a successor, which waits the whole
    /// duration, never overlaps with it.
    #[arg(long)]
    renew_deadline: Option<f64>,
    /// This instance's identity in the Lease and in Events (default: POD_NAME or host-pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// Serve /healthz and /readyz on this address (kubelet's probes), from a thread of its own.
    /// /readyz: the API server answered this instance's Lease calls within the lease duration
    /// (leader or standby); /healthz: the controllers' runtime has not stalled for 60 s;
    /// /metrics: Prometheus metrics (reconcile, compile and publish times, chains by
    /// condition, nodes, API writes).
    #[arg(long)]
    health_addr: Option<std::net::SocketAddr>,
    /// Run no controller: check that every pod of the node daemons' DaemonSet NAMESPACE/NAME is
    /// scheduled, current and ready (waiting up to --check-timeout for it), say so and exit 0,
    /// else name the pods that are not and exit 1 (the chart's `helm test`).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    check_daemonset: Option<String>,
    /// Seconds --check-daemonset waits for the daemons to be ready.
    #[arg(long, default_value_t = 60)]
    check_timeout: u64,
}

#[global_allocator]
static ALLOCATOR: srv6pipes_operator::memory::Allocator = tikv_jemallocator::Jemalloc;

/// jemalloc's options (`srv6pipes_operator::memory::MALLOC_CONF`).
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: srv6pipes_operator::memory::Conf = srv6pipes_operator::memory::CONF;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    srv6pipes_probe::init_logging(args.log_json);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %format!("{e:#}"), "exiting");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.locator_length < args.cluster_block.prefix_len() || args.locator_length > 112 {
        anyhow::bail!("--locator-length {} must be within /{}..=/112", args.locator_length, args.cluster_block.prefix_len());
    }
    let client = srv6pipes_operator::client(args.kubeconfig.as_deref()).await.map_err(anyhow::Error::msg)?;
    if let Some(ds) = &args.check_daemonset {
        return check_daemonset(client, ds, Duration::from_secs(args.check_timeout)).await;
    }
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = nix_hostname().unwrap_or_else(|| "operator".into());
        format!("{host}-{}", std::process::id())
    });
    let duration = Duration::from_secs(args.lease_duration);
    let renew_deadline = args.renew_deadline.map_or(duration * 2 / 3, Duration::from_secs_f64);
    if renew_deadline.is_zero() || renew_deadline >= duration {
        anyhow::bail!("--renew-deadline {renew_deadline:?} must be above 0 and below --lease-duration {duration:?}");
    }
    let elector = Elector::new(
        Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
        &args.lease_name,
        &identity,
        duration,
        renew_deadline,
    );
    let health = Arc::new(Health::new(Duration::from_secs(60), "starting: the API server has not answered a Lease call yet"));
    if let Some(addr) = args.health_addr {
        serve_health(addr, health.clone(), elector.clone())?;
    }
    #[cfg(feature = "heap-profiling")]
    srv6pipes_operator::memory::profile_highs(32 << 20);
    let beating = health.clone();
    tokio::spawn(async move {
        loop {
            beating.beat();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    elector.acquire().await?;
    let config = controller::Config { block: args.cluster_block, locator_len: args.locator_length };
    let (stop, mut keeper) = keep_on_own_thread(&elector, args.kubeconfig.clone(), args.lease_namespace.clone());
    let kept = |r: Result<anyhow::Result<()>, _>| r.unwrap_or_else(|_| Err(anyhow::anyhow!("the lease thread ended")));
    let mut lost = false;
    let result = tokio::select! {
        r = controller::run(client.clone(), config, Some(identity), elector.fence()) => r,
        r = &mut keeper => {
            lost = true;
            kept(r)
        }
    };
    if !lost {
        // No renewal may race the release.
        let _ = stop.send(true);
        if let Err(e) = kept(keeper.await) {
            error!(error = %format!("{e:#}"), "lease");
        }
    }
    if let Err(e) = elector.release().await {
        error!(error = %e, "lease not released; it expires on its own");
    }
    info!("stopped");
    result
}

/// Renews the lease on a thread of its own, with its own runtime and client: reconciles that
/// keep the main runtime's threads busy (compiling 10,000 chains) cannot delay the renewal past
/// its deadline. The answer comes when the lease is lost.
/// The lease was lost when the receiver answers; the sender stops the renewals.
fn keep_on_own_thread(
    elector: &Elector,
    kubeconfig: Option<std::path::PathBuf>,
    namespace: String,
) -> (tokio::sync::watch::Sender<bool>, tokio::sync::oneshot::Receiver<anyhow::Result<()>>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let elector = elector.clone();
    let spawned = std::thread::Builder::new().name("lease".into()).spawn(move || {
        let result = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(anyhow::Error::from).and_then(|rt| {
            rt.block_on(async {
                let client = srv6pipes_operator::client(kubeconfig.as_deref()).await.map_err(anyhow::Error::msg)?;
                elector.with_api(Api::<Lease>::namespaced(client, &namespace)).keep(stopped).await
            })
        });
        let _ = tx.send(result);
    });
    if let Err(e) = spawned {
        error!(error = %e, "no thread for the lease");
    }
    (stop, rx)
}

async fn check_daemonset(client: kube::Client, ds: &str, timeout: Duration) -> anyhow::Result<()> {
    let (namespace, name) = ds.split_once('/').with_context(|| format!("--check-daemonset {ds:?}: not NAMESPACE/NAME"))?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let verdict = srv6pipes_operator::check::daemonset(client.clone(), namespace, name).await?;
        match verdict {
            Ok(summary) => {
                println!("{summary}");
                return Ok(());
            }
            Err(why) if std::time::Instant::now() >= deadline => anyhow::bail!("{why} (waited {timeout:?})"),
            Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    }
}

/// Answers the probes from a thread and runtime of its own, so that a busy controller runtime
/// (compiling 10,000 chains) does not make them time out; readiness is refreshed every second.
fn serve_health(addr: std::net::SocketAddr, health: Arc<Health>, elector: Elector) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("bind --health-addr {addr}"))?;
    listener.set_nonblocking(true)?;
    info!(%addr, "serving /healthz and /readyz");
    std::thread::Builder::new().name("health".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return error!(error = %e, "no runtime for the health endpoints"),
        };
        rt.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => return error!(error = %e, "health listener"),
            };
            let answering = health.clone();
            tokio::spawn(srv6pipes_probe::serve(listener, move |target: String| {
                let health = answering.clone();
                async move {
                    let path = srv6pipes_probe::split_target(&target).0;
                    match path {
                        "/metrics" => srv6pipes_operator::metrics::encode()
                            .map_or_else(|e| srv6pipes_probe::Reply { status: 500, body: format!("{e}\n") }, srv6pipes_probe::Reply::ok),
                        _ => health.answer(path).unwrap_or_else(|| srv6pipes_probe::Reply::not_found(&["/healthz", "/readyz", "/metrics"])),
                    }
                }
            }));
            loop {
                health.set_ready(elector.reachable());
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    })?;
    Ok(())
}

fn nix_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}
