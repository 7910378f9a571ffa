//! The unix-socket API: mode 0600, callers checked with SO_PEERCRED, one JSON line each way.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use srv6::node_api::{Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::node::Node;

pub async fn serve(path: &Path, metrics: Option<SocketAddr>, node: Node) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove stale socket {}", path.display())),
    }
    let listener = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    info!(socket = %path.display(), "serving");
    let node = Arc::new(Mutex::new(node));
    if let Some(addr) = metrics {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("bind metrics {addr}"))?;
        info!(%addr, "serving metrics at /metrics");
        let node = node.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let node = node.clone();
                tokio::spawn(async move {
                    if let Err(e) = metrics_request(stream, node).await {
                        warn!(error = %format!("{e:#}"), "metrics request failed");
                    }
                });
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut recount = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = recount.tick() => {
                if let Err(e) = node.lock().await.recount_flows() {
                    warn!(error = %format!("{e:#}"), "recounting End.AD flows failed");
                }
            }
            conn = listener.accept() => {
                let (stream, _) = conn?;
                let node = node.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, node).await {
                        warn!(error = %format!("{e:#}"), "connection failed");
                    }
                });
            }
            _ = term.recv() => {
                // Maps stay pinned; links detach with the process (pinned links come with restarts).
                info!("SIGTERM: exiting");
                let _ = std::fs::remove_file(path);
                return Ok(());
            }
        }
    }
}

/// A minimal HTTP/1.0 responder: GET /metrics answers the Prometheus text format.
async fn metrics_request(stream: TcpStream, node: Arc<Mutex<Node>>) -> anyhow::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    let (status, body) = if line.starts_with("GET /metrics ") || line.trim_end() == "GET /metrics" {
        match node.lock().await.metrics() {
            Ok(text) => ("200 OK", text),
            Err(e) => ("500 Internal Server Error", format!("{e:#}\n")),
        }
    } else {
        ("404 Not Found", "try /metrics\n".to_string())
    };
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes()).await?;
    w.write_all(body.as_bytes()).await?;
    Ok(())
}

async fn connection(stream: UnixStream, node: Arc<Mutex<Node>>) -> anyhow::Result<()> {
    let cred = stream.peer_cred().context("SO_PEERCRED")?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() != 0 && cred.uid() != me {
        warn!(uid = cred.uid(), pid = ?cred.pid(), "refused caller");
        return Ok(());
    }
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => node.lock().await.handle(req).await,
        Err(e) => Response::Error { message: format!("invalid request: {e}") },
    };
    let mut out = serde_json::to_vec(&resp)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    Ok(())
}
