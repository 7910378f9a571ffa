//! The transparent proxy: one listener per stream SID (the pod-side eBPF hands it the SYNs of
//! its SID, whatever their address and port); per connection, an onward connection from the
//! client's own address and port to the server's (IP_TRANSPARENT), and the relay between them
//! through the SID's pipeline.
//!
//! Both sockets of a connection get `SO_LINGER` 0 as soon as they exist: a relay that is
//! aborted — or a proxy that is killed, whose sockets the kernel closes — resets them, never a
//! FIN that would make a cut stream look complete. A relay that ends normally clears it before
//! closing, so that the kernel still delivers the last bytes and FINs not yet acknowledged.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use srv6::pipes::{Pipeline, StreamCounters, StreamEntry, StreamTable};
use srv6::sid::Sid;
use srv6pipes_functions::Chain;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::netns::{unmapped, OUT_MARK};
use crate::relay::{relay, Abort, Limits, Meters};

#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub limits: Limits,
    /// Connections relayed at once, over every SID: one more is reset at once.
    pub max_connections: u64,
    pub connect_timeout: Duration,
    pub backlog: u32,
}

/// One SID's counters.
#[derive(Default)]
struct Counters {
    active: AtomicU64,
    total: AtomicU64,
    failed: AtomicU64,
    bytes: Meters,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl Counters {
    fn fail(&self, reason: &'static str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *self.errors.lock().expect("not poisoned").entry(reason).or_default() += 1;
    }
}

/// A connection counted in the proxy's and its SID's `active` for as long as this lives: counted
/// down when dropped, however its task ends (a panicking function's too), so that a drain does
/// not wait for connections that are gone.
struct Counted<'a>([&'a AtomicU64; 2]);

impl<'a> Counted<'a> {
    /// Counts one more in `all` and `sid`; with how many `all` had before.
    fn new(all: &'a AtomicU64, sid: &'a AtomicU64) -> (Self, u64) {
        sid.fetch_add(1, Ordering::Relaxed);
        let before = all.fetch_add(1, Ordering::AcqRel);
        (Counted([all, sid]), before)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0[1].fetch_sub(1, Ordering::Relaxed);
        self.0[0].fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long a drain waits, after resetting the relays still running, for their tasks to end.
const ABORT_WAIT: Duration = Duration::from_secs(2);

struct Listening {
    pipeline: Pipeline,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Proxy {
    cfg: Config,
    listeners: Mutex<BTreeMap<(Sid, u16), Listening>>,
    counters: Mutex<BTreeMap<Sid, (String, Arc<Counters>)>>,
    active: AtomicU64,
    draining: AtomicBool,
    /// Set when the drain time is over: every relay still running is aborted (reset).
    abort: watch::Sender<bool>,
}

impl Proxy {
    pub fn new(cfg: Config) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            listeners: Mutex::default(),
            counters: Mutex::default(),
            active: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            abort: watch::channel(false).0,
        })
    }

    /// Listens for each entry of `table` (a listener whose SID, port and pipeline are unchanged
    /// is kept; its connections always go on with the pipeline they started with).
    pub fn apply(self: &Arc<Self>, table: &StreamTable) {
        if self.draining.load(Ordering::Relaxed) {
            return;
        }
        let mut listeners = self.listeners.lock().expect("not poisoned");
        listeners.retain(|k, l| table.entries.iter().any(|e| (e.sid, e.port) == *k && e.pipeline == l.pipeline));
        for e in &table.entries {
            if listeners.contains_key(&(e.sid, e.port)) {
                continue;
            }
            match self.listen(e) {
                Ok(l) => {
                    info!(pod = %table.pod, sid = %e.sid, port = e.port, pipeline = %e.pipeline.describe(), "listening");
                    listeners.insert((e.sid, e.port), l);
                }
                Err(err) => warn!(pod = %table.pod, sid = %e.sid, port = e.port, error = %format!("{err:#}"), "cannot listen"),
            }
        }
    }

    fn listen(self: &Arc<Self>, e: &StreamEntry) -> anyhow::Result<Listening> {
        let s = Socket::new(Domain::IPV6, Type::STREAM, None)?;
        s.set_only_v6(false)?;
        s.set_reuse_address(true)?;
        // The onward sockets bind the clients' addresses and ports (connect_as): a client's
        // port may be this listener's, and only SO_REUSEPORT on both lets such a bind coexist
        // with a listening socket (EADDRINUSE otherwise).
        s.set_reuse_port(true)?;
        // The accepted sockets answer from the server's address: transparent, and routed out of
        // the chain interface by their mark (inherited from the listener).
        s.set_ip_transparent_v6(true)?;
        s.set_mark(OUT_MARK)?;
        s.set_nonblocking(true)?;
        s.bind(&SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), e.port).into())?;
        s.listen(self.cfg.backlog as i32)?;
        let listener = TcpListener::from_std(s.into())?;
        let counters = {
            let mut all = self.counters.lock().expect("not poisoned");
            all.entry(e.sid).or_insert_with(|| (e.pipeline.describe(), Arc::default())).1.clone()
        };
        let proxy = self.clone();
        let pipeline = e.pipeline.clone();
        let sid = e.sid;
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((client, _)) => {
                        tokio::spawn(proxy.clone().connection(client, pipeline.clone(), counters.clone(), sid));
                    }
                    Err(err) => {
                        warn!(%sid, error = %err, "accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Listening { pipeline: e.pipeline.clone(), task })
    }

    /// One client connection, start to end.
    async fn connection(self: Arc<Self>, client: TcpStream, pipeline: Pipeline, c: Arc<Counters>, sid: Sid) {
        let _ = client.set_zero_linger();
        let _ = client.set_nodelay(true);
        c.total.fetch_add(1, Ordering::Relaxed);
        let (Ok(from), Ok(to)) = (client.peer_addr(), client.local_addr()) else {
            c.fail("reset");
            return;
        };
        let (from, to) = (SocketAddr::new(unmapped(from.ip()), from.port()), SocketAddr::new(unmapped(to.ip()), to.port()));
        let (_counted, before) = Counted::new(&self.active, &c.active);
        if before >= self.cfg.max_connections {
            c.fail("limit");
            return; // dropped with linger 0: reset
        }
        let reason = self.relay_to(client, from, to, &pipeline, &c).await;
        if let Some(reason) = reason {
            c.fail(reason);
            tracing::debug!(%sid, %from, %to, reason, "connection reset");
        }
    }

    /// Connects onward and relays; the reason of a reset, if it ended in one.
    async fn relay_to(
        &self,
        client: TcpStream,
        from: SocketAddr,
        to: SocketAddr,
        pipeline: &Pipeline,
        c: &Counters,
    ) -> Option<&'static str> {
        let onward = tokio::time::timeout(self.cfg.connect_timeout, connect_onward(|| connect_as(from, to), TUPLE_PATIENCE));
        let server = match unless_client_resets(&client, onward).await {
            None => return Some("reset"),
            Some(Ok(Ok(s))) => s,
            Some(Ok(Err(e))) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Some("connect_refused"),
            Some(Ok(Err(e))) => {
                tracing::warn!(%from, %to, error = %e, "onward connection failed");
                return Some("connect_error");
            }
            Some(Err(_)) => return Some("connect_timeout"),
        };
        let _ = server.set_nodelay(true);
        // `identity` leaves the bytes as they are: it is left out, and a direction with no other
        // function relays without copying.
        let build = |stages: Vec<&srv6::pipes::Stage>| -> Option<Chain> {
            stages
                .into_iter()
                .filter(|s| s.function != "identity")
                .map(|s| srv6pipes_functions::build(&s.function, &s.args).ok().map(|f| f.1))
                .collect::<Option<_>>()
                .map(Chain)
        };
        let (Some(forward), Some(reverse)) = (build(pipeline.forward().collect()), build(pipeline.reverse().collect())) else {
            return Some("function");
        };
        let mut abort = self.abort.subscribe();
        let report = tokio::select! {
            r = relay(client, server, forward, reverse, self.cfg.limits, &c.bytes) => r,
            // Both sockets have linger 0: dropping the relay resets them.
            _ = abort.wait_for(|a| *a) => return Some("drain"),
        };
        match report.aborted {
            None => None,
            Some(Abort::Connection(_)) => Some("reset"),
            Some(Abort::Function(_)) => Some("function"),
            Some(Abort::Idle) => Some("idle"),
        }
    }

    /// SIGTERM: no new connection (listeners closed: the stack resets new SYNs, and the chain's
    /// other replicas get the new flows once this pod is not ready), the current ones drain for
    /// at most `drain`, then the rest are reset; returns at most [`ABORT_WAIT`] after that
    /// (the process then exits, and the kernel resets what is left: linger 0).
    pub async fn drain(&self, drain: Duration) {
        self.draining.store(true, Ordering::Relaxed);
        self.listeners.lock().expect("not poisoned").clear();
        let active = || self.active.load(Ordering::Acquire);
        let until = |deadline: tokio::time::Instant| async move {
            while active() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        until(tokio::time::Instant::now() + drain).await;
        if active() > 0 {
            warn!(connections = active(), "drain time over: resetting");
            self.abort.send_replace(true);
            until(tokio::time::Instant::now() + ABORT_WAIT).await;
            if active() > 0 {
                warn!(connections = active(), "relays still running after their reset: leaving them to the exit");
            }
        }
    }

    /// Each SID's counters; those of a SID no longer listened on go once its last connection
    /// ends (a pipeline changed, a chain deleted: its series end, they do not pile up).
    pub fn counters(&self) -> Vec<StreamCounters> {
        let listened: std::collections::BTreeSet<Sid> = self.listeners.lock().expect("not poisoned").keys().map(|(sid, _)| *sid).collect();
        let mut all = self.counters.lock().expect("not poisoned");
        all.retain(|sid, (_, c)| listened.contains(sid) || c.active.load(Ordering::Relaxed) > 0);
        all.iter()
            .map(|(sid, (function, c))| StreamCounters {
                pod: String::new(),
                sid: *sid,
                function: function.clone(),
                active: c.active.load(Ordering::Relaxed),
                total: c.total.load(Ordering::Relaxed),
                failed: c.failed.load(Ordering::Relaxed),
                forward_in: c.bytes.forward[0].load(Ordering::Relaxed),
                forward_out: c.bytes.forward[1].load(Ordering::Relaxed),
                reverse_in: c.bytes.reverse[0].load(Ordering::Relaxed),
                reverse_out: c.bytes.reverse[1].load(Ordering::Relaxed),
                errors: c.errors.lock().expect("not poisoned").iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            })
            .collect()
    }
}

/// `work` (the onward connection being made), unless the client resets first (None): a client
/// that gave up may reuse its address and port at once, and the onward socket holds them here.
async fn unless_client_resets<T>(client: &TcpStream, work: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        done = work => Some(done),
        _ = client.ready(tokio::io::Interest::ERROR) => None,
    }
}

/// How long a connection waits for its client's address and port to be free here (see
/// [`connect_onward`]).
const TUPLE_PATIENCE: Duration = Duration::from_secs(1);

/// `connect`, tried again while the kernel refuses its addresses and ports (`EADDRNOTAVAIL`)
/// for at most `patience`. A client that reset a connection may reuse its port at once, before
/// this proxy has closed that connection's onward one (the reset is on its way through the
/// relay): until then the onward connection's addresses and ports are taken here.
async fn connect_onward<F, C>(mut connect: F, patience: Duration) -> std::io::Result<TcpStream>
where
    F: FnMut() -> C,
    C: std::future::Future<Output = std::io::Result<TcpStream>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    let mut wait = Duration::from_millis(1);
    loop {
        match connect().await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable && tokio::time::Instant::now() + wait < deadline => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(50));
            }
            done => return done,
        }
    }
}

/// A connection to `to` from `from` (the client's address and port: transparent), marked to
/// leave by the chain interface, with linger 0.
async fn connect_as(from: SocketAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    if to.is_ipv6() {
        s.set_ip_transparent_v6(true)?;
    } else {
        s.set_ip_transparent_v4(true)?;
    }
    s.set_mark(OUT_MARK)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?; // the client's port may be a listener's here (see `listen`)
    s.set_linger(Some(Duration::ZERO))?;
    s.set_nonblocking(true)?;
    // Not an AddrNotAvailable that connect_onward would wait out: transparency is not set up.
    s.bind(&from.into()).map_err(|e| std::io::Error::other(format!("bind {from}: {e}")))?;
    let socket = TcpSocket::from_std_stream(s.into());
    socket.connect(to).await
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;
    use std::time::Instant;

    use super::*;

    /// A socket bound to `from` (shared with `SO_REUSEADDR` and `SO_REUSEPORT`, as the proxy's
    /// onward sockets are) connected to `to`: the proxy's onward connection without
    /// transparency, which needs no privilege on loopback.
    async fn bound_connect(from: SocketAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
        let s = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&from.into())?;
        TcpSocket::from_std_stream(s.into()).connect(to).await
    }

    /// An earlier connection holds the addresses and ports for `hold`, then resets.
    async fn held_tuple(hold: Duration) -> (SocketAddr, SocketAddr, TcpListener) {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = server.local_addr().unwrap();
        let earlier = bound_connect("127.0.0.1:0".parse().unwrap(), to).await.unwrap();
        let from = earlier.local_addr().unwrap();
        let (accepted, _) = server.accept().await.unwrap();
        let e = bound_connect(from, to).await.expect_err("the tuple is taken");
        assert_eq!(e.kind(), ErrorKind::AddrNotAvailable, "{e}");
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            for s in [&earlier, &accepted] {
                s.set_zero_linger().unwrap();
            }
        });
        (from, to, server)
    }

    /// A client that resets while its onward connection is being made (a slow server) is let
    /// go at once; one that does not, waits for it.
    #[tokio::test]
    async fn the_onward_connection_is_given_up_when_its_client_resets() {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(front.local_addr().unwrap()), front.accept());
        let (client, (client_side, _)) = (client.unwrap(), accepted.unwrap());
        let waited =
            tokio::time::timeout(Duration::from_millis(200), unless_client_resets(&client_side, std::future::pending::<()>())).await;
        assert!(waited.is_err(), "no reset, so it waits for the connection");
        let done = unless_client_resets(&client_side, async { 7 }).await;
        assert_eq!(done, Some(7));
        client.set_zero_linger().unwrap();
        drop(client);
        let gone = tokio::time::timeout(Duration::from_secs(5), unless_client_resets(&client_side, std::future::pending::<()>())).await;
        assert_eq!(gone.expect("given up at the client's reset"), None);
    }

    #[tokio::test]
    async fn the_onward_connection_waits_for_its_tuple_to_be_free() {
        let (from, to, server) = held_tuple(Duration::from_millis(100)).await;
        let t = Instant::now();
        let onward = connect_onward(|| bound_connect(from, to), Duration::from_secs(5)).await.expect("connected once free");
        assert!(t.elapsed() >= Duration::from_millis(90), "{:?}", t.elapsed());
        assert_eq!(onward.local_addr().unwrap(), from, "from the client's address and port");
        drop(server);
    }

    /// A connection's counts go down however its task ends: a panicking one's too.
    #[tokio::test]
    async fn a_connection_is_counted_until_its_task_ends_even_in_a_panic() {
        let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let (_other, before) = Counted::new(&counts[0], &counts[1]);
        assert_eq!(before, 0);
        let task = {
            let counts = counts.clone();
            tokio::spawn(async move {
                let (_counted, _) = Counted::new(&counts[0], &counts[1]);
                tokio::task::yield_now().await;
                panic!("a function panicked");
            })
        };
        let panicked = task.await.unwrap_err().into_panic();
        assert_eq!(panicked.downcast_ref::<&str>(), Some(&"a function panicked"));
        assert_eq!([counts[0].load(Ordering::Acquire), counts[1].load(Ordering::Acquire)], [1, 1], "the other one only");
    }

    /// A SID no longer in the table takes its counters once its last connection has ended.
    #[tokio::test]
    async fn a_sid_that_goes_takes_its_counters_with_its_last_connection() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP a_sid_that_goes_takes_its_counters_with_its_last_connection: a transparent listener needs root");
            return;
        }
        let cfg = Config { limits: Limits::default(), max_connections: 8, connect_timeout: Duration::from_secs(1), backlog: 8 };
        let proxy = Proxy::new(cfg);
        let port = std::net::TcpListener::bind("[::1]:0").unwrap().local_addr().unwrap().port();
        let entry =
            StreamEntry { sid: Sid("fcbb:bb00:1:e001:2::".parse().unwrap()), port, chains: vec![], pipeline: Pipeline { stages: vec![] } };
        let table =
            |entries: Vec<StreamEntry>| StreamTable { pod: "apps/p".into(), interface: "net1".into(), sid_block: String::new(), entries };
        proxy.apply(&table(vec![entry.clone()]));
        assert_eq!(proxy.counters().len(), 1, "listened on");
        let c = proxy.counters.lock().unwrap()[&entry.sid].1.clone();
        let (busy, _) = Counted::new(&proxy.active, &c.active);
        proxy.apply(&table(vec![]));
        assert_eq!(proxy.counters().len(), 1, "a connection is still counted");
        drop(busy);
        assert!(proxy.counters().is_empty(), "gone with its last connection");
    }

    /// A drain whose reset relays do not end (a task stuck in a function) still returns, after
    /// its drain time and [`ABORT_WAIT`]: the process exits and the kernel resets the rest.
    #[tokio::test(start_paused = true)]
    async fn a_drain_returns_when_reset_relays_do_not_end() {
        let cfg = Config { limits: Limits::default(), max_connections: 8, connect_timeout: Duration::from_secs(1), backlog: 8 };
        let proxy = Proxy::new(cfg);
        let stuck = Counters::default();
        let (_counted, _) = Counted::new(&proxy.active, &stuck.active);
        let t = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(60), proxy.drain(Duration::from_secs(10))).await.expect("the drain returns");
        assert!(*proxy.abort.borrow(), "the relays were told to reset");
        let took = t.elapsed();
        assert!((Duration::from_secs(10) + ABORT_WAIT..Duration::from_secs(13)).contains(&took), "{took:?}");
    }

    #[tokio::test]
    async fn the_onward_connection_waits_no_longer_than_its_patience() {
        let (from, to, _server) = held_tuple(Duration::from_secs(10)).await;
        let t = Instant::now();
        let e = connect_onward(|| bound_connect(from, to), Duration::from_millis(200)).await.expect_err("still taken");
        assert_eq!(e.kind(), ErrorKind::AddrNotAvailable);
        assert!((Duration::from_millis(150)..Duration::from_secs(2)).contains(&t.elapsed()), "{:?}", t.elapsed());
    }
}
