//! `srv6pipes monitor`: the datapath's drop and trace events, live, from every node daemon (or
//! one) of a lab (its socket) or a cluster (`/monitor` through the API server), like `cilium
//! monitor`. Events are sampled and rate-limited by the daemons; a line says when a slow reader
//! lost some.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, ValueEnum};
use srv6::node_api::{CallError, MonitorEvent, MonitorRequest, Request, Response};

use crate::target::{self, Scope, Target};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Packets the datapath dropped (or answered with an ICMP error), with the reason.
    Drop,
    /// Packets the datapath's programs saw (sampled: see --sample), with what they did.
    Trace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Args)]
pub struct MonitorArgs {
    #[command(flatten)]
    target: Target,
    /// Only this node's events.
    #[arg(long)]
    node: Option<String>,
    /// Only this chain's events: NAME or NAMESPACE/NAME.
    #[arg(long)]
    chain: Option<String>,
    /// What to stream (repeat for both) [default: drop].
    #[arg(long = "type", value_enum)]
    types: Vec<Kind>,
    /// 1 in N drops and packets [default: 1, every one within the daemons' rate limit].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    sample: Option<u32>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this long: 30s, 2m.
    #[arg(long, value_parser = crate::wait::parse_duration)]
    duration: Option<Duration>,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

pub fn run(a: &MonitorArgs) -> anyhow::Result<()> {
    let scope = a.target.scope()?;
    let chain = a.chain.as_ref().map(|c| {
        let (ns, name) = a.target.chain_ref(c, target::default_namespace(&scope));
        format!("{ns}/{name}")
    });
    let request = MonitorRequest {
        drops: a.types.is_empty() || a.types.contains(&Kind::Drop),
        traces: a.types.contains(&Kind::Trace),
        chain,
        sample: a.sample,
    };
    let listening = |nodes: &[String], skipped: &[String]| {
        for s in skipped {
            eprintln!("srv6pipes monitor: skipped {s}");
        }
        eprintln!("srv6pipes monitor: listening on {} (Ctrl-C to stop)", nodes.join(", "));
    };
    match &scope {
        Scope::Lab(which) => {
            let (tx, rx) = mpsc::channel();
            let (nodes, skipped) = lab_streams(&crate::lab::node_sockets(which)?, a.node.as_deref(), &request, tx)?;
            listening(&nodes, &skipped);
            print_events(&rx, nodes.len(), a)
        }
        Scope::Cluster(c) => c.monitor(a.node.as_deref(), &request, |rx, nodes, skipped| {
            listening(&nodes, &skipped);
            print_events(rx, nodes.len(), a)
        }),
    }
}

/// How long a node's daemon has to answer the monitor's request before it is skipped (or, named
/// with --node, the command fails): a stopped daemon accepts the connection and says nothing.
/// A daemon that refuses the request (an older one) is skipped too.
pub(crate) const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The streams read, each with its node, and the nodes skipped, each with why.
pub(crate) type Opened<T> = (Vec<(String, T)>, Vec<String>);

/// The streams to read, from each chosen node's attempt at opening its own, and the nodes
/// skipped (each with why). Named with --node, a node's failure is the command's; across the
/// nodes, one whose daemon is down or unreachable is skipped, unless none answered: one node's
/// daemon must not blind the monitor to the others.
pub(crate) fn opened<T>(attempts: Vec<(String, anyhow::Result<T>)>, named: bool) -> anyhow::Result<Opened<T>> {
    let (mut streams, mut failed) = (Vec::new(), Vec::new());
    for (node, attempt) in attempts {
        match attempt {
            Ok(s) => streams.push((node, s)),
            Err(e) => failed.push(format!("node {node}: {e:#}")),
        }
    }
    if !failed.is_empty() && (streams.is_empty() || named) {
        bail!("{}", failed.join("; "));
    }
    Ok((streams, failed))
}

/// Prints events until --count or --duration, or until every stream ended (an error).
fn print_events(rx: &mpsc::Receiver<(String, String)>, mut open: usize, a: &MonitorArgs) -> anyhow::Result<()> {
    let deadline = a.duration.map(|d| Instant::now() + d);
    let mut shown = 0;
    let mut out = std::io::stdout().lock();
    while a.count.is_none_or(|c| shown < c) {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let got = match left {
            Some(left) if left.is_zero() => return Ok(()),
            Some(left) => rx.recv_timeout(left),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        let (node, line) = match got {
            Ok(x) => x,
            Err(mpsc::RecvTimeoutError::Timeout) => return Ok(()),
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("every node's stream ended"),
        };
        if line.is_empty() {
            eprintln!("srv6pipes monitor: node {node}'s stream ended");
            open -= 1;
            if open == 0 {
                bail!("every node's stream ended");
            }
            continue;
        }
        match serde_json::from_str::<MonitorEvent>(&line) {
            Ok(e) => {
                match a.output {
                    Format::Json => writeln!(out, "{line}")?,
                    Format::Text => writeln!(out, "{}", text(&e))?,
                }
                out.flush()?;
                shown += 1;
            }
            Err(_) => eprintln!("srv6pipes monitor: node {node}: {line}"),
        }
    }
    Ok(())
}

/// One line per event: when, where, what, which chain, SID and flow.
pub fn text(e: &MonitorEvent) -> String {
    let what = match &e.reason {
        Some(r) => format!("drop ({r})"),
        None => format!("trace {}", e.verdict),
    };
    let mut s = format!("{} {} {what} at {}", e.time, e.node, e.hook);
    if let Some(i) = &e.interface {
        s += &format!(" {i}");
    }
    if let Some(p) = &e.pod {
        s += &format!(" ({p})");
    }
    if let Some(c) = &e.chain {
        s += &format!(" chain {c}");
    }
    if let Some(sid) = &e.sid {
        s += &format!(" sid {sid}");
    }
    if let Some(f) = &e.flow {
        s += &format!(" {} {} -> {}", f.proto, f.src, f.dst);
    }
    s + &format!(" len {}", e.length)
}

/// One thread per node daemon's socket that answered (see [`opened`]): the request, its `Ok`,
/// then its lines. Returns the nodes read and the nodes skipped.
fn lab_streams(
    sockets: &[(String, std::path::PathBuf)],
    node: Option<&str>,
    request: &MonitorRequest,
    tx: mpsc::Sender<(String, String)>,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let chosen: Vec<&(String, std::path::PathBuf)> = sockets.iter().filter(|(n, _)| node.is_none_or(|x| x == n)).collect();
    if chosen.is_empty() {
        bail!("the lab has no node {}", node.unwrap_or_default());
    }
    // Opened at once, each on a thread of its own (a stopped daemon whose backlog is full holds
    // the connect itself): a stream that has not answered by the deadline is skipped, and
    // dropped when its thread ends.
    let (done, answers) = mpsc::channel();
    for (name, socket) in &chosen {
        let (done, name, socket, request) = (done.clone(), name.clone(), socket.clone(), request.clone());
        std::thread::spawn(move || done.send((name, open_lab_stream(&socket, &request))));
    }
    drop(done);
    let deadline = Instant::now() + OPEN_TIMEOUT + Duration::from_secs(1);
    let mut answered = std::collections::HashMap::new();
    while answered.len() < chosen.len() {
        match answers.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((name, attempt)) => answered.insert(name, attempt),
            Err(_) => break,
        };
    }
    let attempts = chosen
        .iter()
        .map(|(name, socket)| {
            let late = || Err(anyhow::anyhow!("{}: no answer within {OPEN_TIMEOUT:?}", socket.display()));
            (name.clone(), answered.remove(name).unwrap_or_else(late))
        })
        .collect();
    let (streams, skipped) = opened(attempts, node.is_some())?;
    let mut nodes = Vec::new();
    for (name, r) in streams {
        nodes.push(name.clone());
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in r.lines().map_while(Result::ok) {
                if tx.send((name.clone(), line)).is_err() {
                    return;
                }
            }
            let _ = tx.send((name, String::new()));
        });
    }
    Ok((nodes, skipped))
}

/// A lab daemon's monitor stream, once it answered `Ok` within [`OPEN_TIMEOUT`].
fn open_lab_stream(socket: &std::path::Path, request: &MonitorRequest) -> anyhow::Result<BufReader<UnixStream>> {
    let opened = srv6::node_api::exchange(socket, &Request::Monitor(request.clone()), OPEN_TIMEOUT);
    let r = match opened {
        Ok((Response::Ok, r)) => r,
        Ok((other, _)) => bail!("unexpected answer {other:?} (a daemon older than this CLI?)"),
        Err(CallError::Unreachable { path, source }) => bail!("connect {path}: {source}"),
        Err(CallError::Io { path, source }) if matches!(source.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            bail!("{path}: no answer within {OPEN_TIMEOUT:?}")
        }
        Err(e) => return Err(e.into()),
    };
    r.get_ref().set_read_timeout(None)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_on_one_line() {
        let e = MonitorEvent {
            time: "2026-12-01T14:00:00Z".into(),
            node: "node-b".into(),
            kind: "drop".into(),
            reason: Some("inner_ttl".into()),
            verdict: "redirect".into(),
            hook: "uplink".into(),
            interface: None,
            pod: None,
            chain: Some("default/web".into()),
            sid: Some("fcbb:bb00:2:e001::".parse().unwrap()),
            flow: Some(srv6::node_api::MonitorFlow::new(58, "fd00::1".parse().unwrap(), 0, "fd00::2".parse().unwrap(), 0)),
            length: 118,
        };
        assert_eq!(
            text(&e),
            "2026-12-01T14:00:00Z node-b drop (inner_ttl) at uplink chain default/web sid fcbb:bb00:2:e001:: icmpv6 fd00::1 -> fd00::2 len 118"
        );
        let t = MonitorEvent { kind: "trace".into(), reason: None, interface: Some("sp1".into()), pod: Some("default/fw".into()), ..e };
        assert!(text(&t).contains("trace redirect at uplink sp1 (default/fw) chain default/web"), "{}", text(&t));
    }

    #[test]
    fn a_node_that_does_not_answer_is_skipped_unless_named_or_alone() {
        let attempts = || vec![("n1".to_string(), Ok(1)), ("n2".to_string(), Err(anyhow::anyhow!("connection refused")))];
        let (streams, skipped) = opened(attempts(), false).unwrap();
        assert_eq!((streams, skipped), (vec![("n1".to_string(), 1)], vec!["node n2: connection refused".to_string()]));
        let named = opened(vec![("n2".to_string(), Err::<u8, _>(anyhow::anyhow!("connection refused")))], true);
        assert_eq!(named.unwrap_err().to_string(), "node n2: connection refused");
        let none = opened(attempts().into_iter().map(|(n, _)| (n, Err::<u8, _>(anyhow::anyhow!("down")))).collect(), false);
        assert_eq!(none.unwrap_err().to_string(), "node n1: down; node n2: down");
        assert_eq!(opened(vec![("n1".to_string(), Ok(1))], true).unwrap().0.len(), 1);
    }
}
