//! The proxy's side of its node's channel: an abstract unix socket in the pod's own netns
//! (`srv6::pipes::CHANNEL`, bound there by the node daemon). Tables come in as JSON lines; the
//! proxy's counters go out as one JSON line each second. When the node is away (a daemon
//! restart), the proxy keeps its listeners and connects again.

use std::os::linux::net::SocketAddrExt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use srv6::pipes::StreamTable;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tracing::{info, warn};

use crate::proxy::Proxy;

/// Serves the channel `name` for `proxy` until the task is dropped.
pub async fn run(name: String, proxy: Arc<Proxy>) {
    let mut logged = false;
    loop {
        match session(&name, &proxy).await {
            Ok(()) => info!(channel = %name, "node closed the channel"),
            Err(e) if !logged => {
                warn!(channel = %name, error = %format!("{e:#}"), "no channel to the node yet (retrying each second)");
                logged = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn session(name: &str, proxy: &Arc<Proxy>) -> anyhow::Result<()> {
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let std_stream = std::os::unix::net::UnixStream::connect_addr(&addr).with_context(|| format!("connect @{name}"))?;
    std_stream.set_nonblocking(true)?;
    let (r, mut w) = UnixStream::from_std(std_stream)?.into_split();
    info!(channel = %name, "connected to the node");
    let mut lines = BufReader::new(r).lines();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { return Ok(()) };
                let table: StreamTable = serde_json::from_str(&line).context("a table from the node")?;
                info!(pod = %table.pod, sids = table.entries.len(), "table from the node");
                proxy.apply(&table);
            }
            _ = tick.tick() => {
                let mut line = serde_json::to_vec(&proxy.counters())?;
                line.push(b'\n');
                w.write_all(&line).await?;
            }
        }
    }
}
