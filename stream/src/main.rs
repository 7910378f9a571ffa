//! srv6pipes-stream: SRv6 pipes' SR-aware transparent TCP proxy (see the crate docs).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use srv6pipes_stream::proxy::{Config, Proxy};
use srv6pipes_stream::relay::Limits;
use srv6pipes_stream::{channel, netns};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

/// srv6pipes-stream: the stream proxy of SRv6 pipes.
///
/// Runs in a pod whose chain interface srv6pipes-cni wired (the `srv6pipes` network), with
/// CAP_NET_ADMIN in its own netns and nothing else: no credentials, no host path. A chain whose
/// stream function selects the pod makes its node deliver that function's connections here; the
/// node says which (SIDs, listener ports, functions and arguments) over a channel in the pod's
/// netns. The server sees the client's address and port, the client the server's; the
/// functions rewrite the bytes in between. No argument is needed:
///
///   srv6pipes-stream
///
/// SIGTERM stops accepting and lets connections finish for --drain-timeout, then resets them.
#[derive(Parser, Debug)]
#[command(name = "srv6pipes-stream", version)]
struct Args {
    /// The chain interface (as srv6pipes-cni named it in the pod).
    #[arg(long, default_value = "net1")]
    interface: String,
    /// The node's channel: an abstract unix socket name in this pod's netns.
    #[arg(long, default_value = srv6::pipes::CHANNEL)]
    channel: String,
    /// A connection with no byte either way for this many seconds is reset (none read, none
    /// accepted for sending: a reader still taking a long write is not idle).
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// Connections relayed at once; one more is reset at once.
    #[arg(long, default_value_t = 16384)]
    max_connections: u64,
    /// Seconds to connect to the server; then the client's connection is reset.
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
    /// Seconds connections may take to finish after SIGTERM before they are reset.
    #[arg(long, default_value_t = 10)]
    drain_timeout: u64,
    /// Bytes read at once per connection and direction: the proxy's read buffer (backpressure
    /// holds the rest in TCP's windows; a `decompress` function writes what one read expands
    /// to in parts of at most 1 MiB).
    #[arg(long, default_value_t = 64 * 1024)]
    read_size: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    let done = rt.block_on(run(args));
    // Not a runtime's drop, which waits for every task: one stuck in a function after the
    // drain would hold the exit (and its connections, reset by the kernel at exit) forever.
    rt.shutdown_timeout(Duration::from_millis(500));
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %format!("{e:#}"), "srv6pipes-stream failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    netns::setup(&args.interface).await?;
    let cfg = Config {
        limits: Limits { read_size: args.read_size, idle: Duration::from_secs(args.idle_timeout) },
        max_connections: args.max_connections,
        connect_timeout: Duration::from_secs(args.connect_timeout),
        backlog: 4096,
    };
    let proxy = Proxy::new(cfg);
    let chan = tokio::spawn(channel::run(args.channel.clone(), proxy.clone()));
    info!(interface = %args.interface, channel = %args.channel, "srv6pipes-stream up");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!(drain_timeout = args.drain_timeout, "stopping: no new connection, draining");
    proxy.drain(Duration::from_secs(args.drain_timeout)).await;
    chan.abort();
    Ok(())
}

/// Two descriptors per connection: the soft limit up to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
