//! srv6pipes-operator binary: leader election, then the controllers until SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ipnet::Ipv6Net;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use srv6pipes_operator::{controller, lease::Elector, webhook};
use tracing::{error, info};

/// srv6pipes operator.
///
/// Watches ServiceChains, Pods, Nodes and the node daemons' NodeSidTables; compiles the chains
/// and server-side applies one NodeProgram per node (field manager srv6pipes-operator); writes
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
    /// The operator's namespace: the leader-election Lease's, and the webhook's Secret,
    /// Service and node daemons' ServiceAccount's.
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
    /// Serve the node-writes admission webhook on this address (e.g. 0.0.0.0:9443): a node
    /// daemon may write only its own node's NodeSidTable and NodeProgram status. Every replica
    /// serves it, leader or not.
    #[arg(long)]
    webhook_addr: Option<std::net::SocketAddr>,
    /// The Service in front of the webhook (its DNS names go in the certificate).
    #[arg(long, default_value = "srv6pipes-operator")]
    webhook_service: String,
    /// The Secret that keeps the webhook's certificate (made by the first replica).
    #[arg(long, default_value = "srv6pipes-webhook-tls")]
    webhook_secret: String,
    /// The ValidatingWebhookConfiguration whose caBundle the operator fills in.
    #[arg(long, default_value = "srv6pipes-node-writes")]
    webhook_configuration: String,
    /// The node daemons' ServiceAccount (in the operator's namespace), whose writes are checked.
    #[arg(long, default_value = "srv6pipes-node")]
    node_service_account: String,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if args.log_json {
        fmt.json().init();
    } else {
        fmt.init();
    }
    srv6pipes_operator::memory::limit_arenas();
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
    let webhook = async {
        match args.webhook_addr {
            Some(addr) => {
                let cfg = webhook::Config {
                    addr,
                    namespace: args.lease_namespace.clone(),
                    service: args.webhook_service.clone(),
                    secret: args.webhook_secret.clone(),
                    configuration: args.webhook_configuration.clone(),
                    node_account: args.node_service_account.clone(),
                };
                webhook::serve(client.clone(), cfg).await.context("node-writes webhook")
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(webhook);
    tokio::select! {
        r = &mut webhook => return r,
        r = elector.acquire() => r?,
    }
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
        r = &mut webhook => r,
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

fn nix_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}
