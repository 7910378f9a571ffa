//! srv6pipes-operator binary: leader election, then the controllers until SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ipnet::Ipv6Net;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use srv6pipes_operator::{controller, lease::Elector};
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
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    lease_namespace: String,
    #[arg(long, default_value = "srv6pipes-operator")]
    lease_name: String,
    /// Seconds a leader holds the lease without renewing it.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// This instance's identity in the Lease and in Events (default: POD_NAME or host-pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
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
    let elector = Elector::new(
        Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
        &args.lease_name,
        &identity,
        Duration::from_secs(args.lease_duration),
    );
    elector.acquire().await?;
    let config = controller::Config { block: args.cluster_block, locator_len: args.locator_length };
    let result = tokio::select! {
        r = controller::run(client, config, Some(identity)) => r,
        r = elector.keep() => r,
    };
    if let Err(e) = elector.release().await {
        error!(error = %e, "lease not released; it expires on its own");
    }
    info!("stopped");
    result
}

fn nix_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}
