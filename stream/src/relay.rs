//! The relay between the client's connection and the onward one: SRv6 pipes' proxy core, the
//! part that owns both TCP connections. Each direction reads at most `Limits::read_size` bytes,
//! runs them through its [`Chain`] and writes the result before reading again, so a slow reader
//! holds the proxy to one read (plus what its functions hold back) per direction: backpressure
//! reaches the sender through TCP's own windows.
//!
//! Ends are carried end to end: a FIN (end of stream) finishes the direction's functions,
//! writes their tail and shuts the other connection's write side (half-close: the other
//! direction goes on). Anything abnormal — a reset or an error on either connection, a function
//! refusing its input, `Limits::idle` without a byte either way — aborts both connections with
//! a reset (`SO_LINGER` 0), never a FIN that would make a cut stream look complete.
//!
//! The client's connection is watched for a reset all along, not only when its direction reads
//! it: after its FIN, or while its direction waits to write to a slow server, nothing else
//! would see one. A client that sends its FIN, then resets (it closed with the answer still
//! coming, as an HTTP client that gives up does), is gone and may reuse its port at once; its
//! onward connection must go with it, or the proxy could not connect that client's next
//! connection from the same address and port (`EADDRNOTAVAIL`). The server's connection is not
//! watched so: after the server's FIN, its reset must not cut the answer and the FIN already
//! here on their way to the client; the client's next write finds it, as it would without the
//! proxy (and the onward connection's reset frees its addresses and ports itself).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use srv6pipes_functions::{Chain, FunctionError, HOLD};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes read at once per direction: the proxy's buffer per connection and direction.
    pub read_size: usize,
    /// A connection with no byte either way for this long is aborted: none read, and none
    /// accepted for sending (the send buffer frees as the receiver takes bytes, so a slow
    /// reader draining a write longer than the buffer is not idle).
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self { read_size: 64 * 1024, idle: Duration::from_secs(300) }
    }
}

/// One direction's counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DirectionStats {
    /// Bytes read from the sender.
    pub bytes_in: u64,
    /// Bytes written to the receiver (after the functions).
    pub bytes_out: u64,
    /// The most bytes written in one go (the relay's buffering, besides the read buffer).
    pub max_pending: usize,
}

/// Why a relay was aborted (both connections reset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Abort {
    /// A connection was reset or failed (its error).
    Connection(String),
    /// A function refused the stream.
    Function(FunctionError),
    /// No byte either way for `Limits::idle`.
    Idle,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Client to server.
    pub forward: DirectionStats,
    /// Server to client.
    pub reverse: DirectionStats,
    /// None: both directions ended with a FIN.
    pub aborted: Option<Abort>,
}

/// Live byte counts of one or more relays (in: read from the sender, out: written after the
/// functions), added to as the bytes go.
#[derive(Debug, Default)]
pub struct Meters {
    pub forward: [AtomicU64; 2],
    pub reverse: [AtomicU64; 2],
}

/// When bytes last moved on a relay, either way (read, or accepted for sending), for
/// `Limits::idle`: shared by its two directions.
struct Activity {
    start: Instant,
    /// Milliseconds from `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity { start: Instant::now(), last: AtomicU64::new(0) }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Bytes moved now.
    fn moved(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    /// How long no byte has moved.
    fn quiet(&self) -> Duration {
        Duration::from_millis(self.now().saturating_sub(self.last.load(Ordering::Relaxed)))
    }
}

/// Relays `client` <-> `server` through `forward` (client to server) and `reverse`, until both
/// directions ended or something aborts them. The connections are closed on return.
pub async fn relay(
    mut client: TcpStream,
    mut server: TcpStream,
    forward: Chain,
    reverse: Chain,
    limits: Limits,
    meters: &Meters,
) -> Report {
    let activity = Activity::new();
    let mut report = Report { forward: DirectionStats::default(), reverse: DirectionStats::default(), aborted: None };
    {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let fwd = pump(&cr, sw, forward, limits.read_size, &activity, &meters.forward);
        let rev = pump(&sr, cw, reverse, limits.read_size, &activity, &meters.reverse);
        tokio::pin!(fwd, rev);
        let (mut fwd_done, mut rev_done) = (false, false);
        while !(fwd_done && rev_done) {
            let idle_left = limits.idle.saturating_sub(activity.quiet());
            let ended = tokio::select! {
                r = &mut fwd, if !fwd_done => { fwd_done = true; r.map(|s| report.forward = s) }
                r = &mut rev, if !rev_done => { rev_done = true; r.map(|s| report.reverse = s) }
                // The client's reset, whatever its direction is doing (see the module's doc).
                e = cr.ready(Interest::ERROR) => Err(client_reset(cr.as_ref(), e)),
                _ = tokio::time::sleep(idle_left) => if activity.quiet() >= limits.idle { Err(Abort::Idle) } else { Ok(()) },
            };
            if let Err(why) = ended {
                report.aborted = Some(why);
                break;
            }
        }
    }
    // Aborted: a reset each way, never a FIN that would complete a cut stream. Ended cleanly:
    // the last bytes and the FINs are queued but perhaps not yet acknowledged, so a normal close
    // lets the kernel deliver (and retransmit) them; with `SO_LINGER` 0 (which the proxy keeps
    // while relaying, so that a killed proxy resets) closing would discard them.
    let linger = report.aborted.as_ref().map(|_| Duration::ZERO);
    for s in [&client, &server] {
        let _ = socket2::SockRef::from(s).set_linger(linger);
    }
    report
}

/// The abort for the client's connection reporting an error: its pending error (a reset:
/// ECONNRESET, or EPIPE after its FIN), or the failure to wait for it.
fn client_reset(client: &TcpStream, ready: std::io::Result<tokio::io::Ready>) -> Abort {
    let why = match ready {
        Ok(_) => client.take_error().ok().flatten().map_or_else(|| "an error".to_string(), |e| e.to_string()),
        Err(e) => e.to_string(),
    };
    Abort::Connection(format!("client: {why}"))
}

/// One direction: read, run through the chain, write, until the sender's FIN (then the
/// chain's tail and a FIN to the receiver) or an error. When the sender pauses for
/// [`HOLD`] after bytes went into the chain, what its
/// functions held back goes on (a request's tail would otherwise wait for the next request).
async fn pump(
    from: &ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mut chain: Chain,
    read_size: usize,
    activity: &Activity,
    meter: &[AtomicU64; 2],
) -> Result<DirectionStats, Abort> {
    let conn = |e: std::io::Error| Abort::Connection(e.to_string());
    let mut stats = DirectionStats::default();
    // Allocated when the first bytes (or the FIN) are there: an idle connection holds no buffer.
    let mut buf: Vec<u8> = Vec::new();
    // The chain holds bytes back that a flush would let go.
    let mut held = false;
    loop {
        let readable = if held { tokio::time::timeout(HOLD, from.readable()).await.ok() } else { Some(from.readable().await) };
        let Some(readable) = readable else {
            let data = chain.flush().map_err(Abort::Function)?;
            held = send_all(&mut chain, &mut to, &data, &mut stats, meter, activity).await?;
            continue;
        };
        readable.map_err(conn)?;
        if buf.is_empty() {
            buf = vec![0u8; read_size.max(1)];
        }
        let n = match from.try_read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(conn(e)),
        };
        activity.moved();
        let transformed;
        let data: &[u8] = if chain.is_empty() {
            &buf[..n]
        } else {
            transformed = if n == 0 { chain.finish() } else { chain.push(&buf[..n]) }.map_err(Abort::Function)?;
            &transformed
        };
        stats.bytes_in += n as u64;
        meter[0].fetch_add(n as u64, Ordering::Relaxed);
        held = send_all(&mut chain, &mut to, data, &mut stats, meter, activity).await?;
        if n == 0 {
            to.shutdown().await.map_err(conn)?;
            return Ok(stats);
        }
    }
}

/// Writes `data`, the first part of what the chain made of one input, then the rest of it
/// (decompression expands in parts), each part before the next is made; whether the chain then
/// holds bytes back (to flush at a pause).
async fn send_all(
    chain: &mut Chain,
    to: &mut WriteHalf<'_>,
    data: &[u8],
    stats: &mut DirectionStats,
    meter: &[AtomicU64; 2],
    activity: &Activity,
) -> Result<bool, Abort> {
    let conn = |e: std::io::Error| Abort::Connection(e.to_string());
    send(to, data, stats, meter, activity).await.map_err(conn)?;
    while chain.more() {
        let part = chain.push(&[]).map_err(Abort::Function)?;
        send(to, &part, stats, meter, activity).await.map_err(conn)?;
    }
    Ok(chain.holds())
}

/// Writes `data` on, counted in `stats` and the output meter.
async fn send(
    to: &mut WriteHalf<'_>,
    data: &[u8],
    stats: &mut DirectionStats,
    meter: &[AtomicU64; 2],
    activity: &Activity,
) -> std::io::Result<()> {
    stats.bytes_out += data.len() as u64;
    meter[1].fetch_add(data.len() as u64, Ordering::Relaxed);
    stats.max_pending = stats.max_pending.max(data.len());
    write_all_moving(to, data, activity).await
}

/// Writes all of `data`, noting `activity` each time the kernel took some (its send buffer freed
/// as the receiver took bytes): bytes moving, for `Limits::idle`, however slowly (one read's
/// output, a decompressing function's say, written to a reader at a few KB/s can take longer
/// than the idle limit).
async fn write_all_moving(to: &mut WriteHalf<'_>, mut data: &[u8], activity: &Activity) -> std::io::Result<()> {
    while !data.is_empty() {
        let n = to.write(data).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
        activity.moved();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use tokio::io::AsyncReadExt;

    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::*;

    /// A relay between a client and a server on loopback: (client, the server's side, the
    /// relay's report when it ends).
    async fn setup(forward: Chain, reverse: Chain, limits: Limits) -> (TcpStream, TcpStream, JoinHandle<Report>) {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (front_addr, back_addr) = (front.local_addr().unwrap(), back.local_addr().unwrap());
        let (ready, connected) = tokio::sync::oneshot::channel();
        let relay = tokio::spawn(async move {
            let (client_side, _) = front.accept().await.unwrap();
            let server_side = TcpStream::connect(back_addr).await.unwrap();
            ready.send(()).unwrap();
            relay(client_side, server_side, forward, reverse, limits, &Meters::default()).await
        });
        let client = TcpStream::connect(front_addr).await.unwrap();
        let (server, _) = back.accept().await.unwrap();
        connected.await.unwrap();
        (client, server, relay)
    }

    /// A client with a tiny receive window (most of an answer waits in the relay's send queue)
    /// and a server on loopback: (client, server, the relay's sides of both), not relayed yet.
    async fn slow_client() -> (TcpStream, TcpStream, TcpStream, TcpStream) {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let small = tokio::net::TcpSocket::new_v4().unwrap();
        small.set_recv_buffer_size(4096).unwrap();
        let (client, accepted) = tokio::join!(small.connect(front.local_addr().unwrap()), front.accept());
        let (client, (client_side, _)) = (client.unwrap(), accepted.unwrap());
        let server_side = TcpStream::connect(back.local_addr().unwrap()).await.unwrap();
        let (server, _) = back.accept().await.unwrap();
        (client, server, client_side, server_side)
    }

    fn chain(stages: &[(&str, &[(&str, &str)])]) -> Chain {
        let args = |a: &[(&str, &str)]| a.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Chain(stages.iter().map(|(n, a)| srv6pipes_functions::build(n, &args(a)).unwrap().1).collect())
    }

    #[tokio::test]
    async fn the_seed_pipeline_end_to_end_with_fins_both_ways() {
        let fwd =
            chain(&[("base64", &[("op", "encode")]), ("replace", &[("from", "RvZ3"), ("to", "NhdH")]), ("base64", &[("op", "decode")])]);
        let (mut client, mut server, relay) = setup(fwd, Chain::default(), Limits::default()).await;
        client.write_all(b"I love dogs!").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"I love cats!");
        // Half-closed: the server still answers after the client's FIN.
        server.write_all(b"meow").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"meow");
        let report = relay.await.unwrap();
        assert_eq!(report.aborted, None);
        assert_eq!((report.forward.bytes_in, report.forward.bytes_out, report.reverse.bytes_out), (12, 12, 4));
    }

    /// The proxy's sockets have `SO_LINGER` 0 while they relay. A relay that ends cleanly while
    /// its last bytes still wait in the send queue (a client whose window is closed: or a lost
    /// segment) must still deliver them, then a FIN: not discard them at close.
    /// A request/response protocol that keeps its connection open (HTTP keep-alive) through
    /// functions that hold bytes back (base64 keeps up to 2 bytes, replace a possible match's
    /// beginning): each request and answer arrives whole once its sender pauses, no FIN needed.
    #[tokio::test]
    async fn held_bytes_go_on_when_the_sender_pauses() {
        let fwd = chain(&[("base64", &[("op", "encode")]), ("base64", &[("op", "decode")])]);
        let rev = chain(&[("replace", &[("from", "dogs"), ("to", "cats")])]);
        let (mut client, mut server, relay) = setup(fwd, rev, Limits::default()).await;
        let within =
            |what: &'static str| move |r: Result<std::io::Result<usize>, _>| r.unwrap_or_else(|_| panic!("{what} held back")).unwrap();
        for (request, answer, rewritten) in [(&b"GET /\r\n"[..], &b"I love do"[..], &b"I love do"[..]), (b"GET /b\r\n", b"gs", b"gs")] {
            client.write_all(request).await.unwrap();
            let mut got = vec![0u8; request.len()];
            within("the request")(tokio::time::timeout(Duration::from_secs(2), server.read_exact(&mut got)).await);
            assert_eq!(got, request);
            server.write_all(answer).await.unwrap();
            let mut got = vec![0u8; rewritten.len()];
            within("the answer")(tokio::time::timeout(Duration::from_secs(2), client.read_exact(&mut got)).await);
            assert_eq!(got, rewritten, "a match split by a pause is left as it is");
        }
        drop((client, server));
        relay.await.unwrap();
    }

    #[tokio::test]
    async fn a_clean_end_delivers_the_tail_the_client_has_not_acknowledged_yet() {
        let (mut client, mut server, client_side, server_side) = slow_client().await;
        socket2::SockRef::from(&client_side).set_send_buffer_size(1 << 20).unwrap();
        for s in [&client_side, &server_side] {
            s.set_zero_linger().unwrap();
        }
        let relay = tokio::spawn(async move {
            relay(client_side, server_side, Chain::default(), Chain::default(), Limits::default(), &Meters::default()).await
        });
        client.shutdown().await.unwrap();
        let answer = vec![7u8; 150_000];
        server.write_all(&answer).await.unwrap();
        server.shutdown().await.unwrap();
        // The relay ends (both FINs relayed) before the client has read its answer.
        let report = tokio::time::timeout(Duration::from_secs(5), relay).await.expect("the relay ends").unwrap();
        assert_eq!((report.aborted, report.reverse.bytes_out), (None, answer.len() as u64));
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got)).await.expect("the answer and a FIN").unwrap();
        assert_eq!(got.len(), answer.len());
    }

    #[tokio::test]
    async fn a_reset_is_carried_as_a_reset() {
        let (mut client, server, relay) = setup(Chain::default(), Chain::default(), Limits::default()).await;
        server.set_zero_linger().unwrap();
        drop(server);
        let mut buf = Vec::new();
        let err = client.read_to_end(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "not a FIN");
        assert!(matches!(relay.await.unwrap().aborted, Some(Abort::Connection(_))));
    }

    /// A client that sends its FIN, then resets (it closed with the answer still coming) while
    /// the server is quiet: the relay is reading neither connection then, and must still carry
    /// the reset at once, not keep the server's connection until its answer ends (or for
    /// `Limits::idle`), which would hold the client's address and port in the proxy.
    #[tokio::test]
    async fn a_reset_after_the_fin_is_carried_while_the_server_is_quiet() {
        let (mut client, mut server, relay) = setup(Chain::default(), Chain::default(), Limits::default()).await;
        client.write_all(b"GET /").await.unwrap();
        client.shutdown().await.unwrap();
        let mut request = Vec::new();
        server.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"GET /", "the request and the client's FIN");
        client.set_zero_linger().unwrap();
        drop(client);
        // The server has the FIN already, so its reads end at 0: the reset shows as its error
        // (EPIPE: a reset after the FIN).
        client_reset_reaches(&server, ErrorKind::BrokenPipe, relay).await;
    }

    /// The client's reset reaches the server at once (its error: `kind`), and the relay says
    /// it aborted on the client's reset.
    async fn client_reset_reaches(server: &TcpStream, kind: ErrorKind, relay: JoinHandle<Report>) {
        let reset = tokio::time::timeout(Duration::from_secs(5), server.ready(Interest::ERROR)).await;
        reset.expect("the client's reset is carried at once").unwrap();
        let err = server.take_error().unwrap().expect("a pending error");
        assert_eq!(err.kind(), kind, "{err}");
        let report = relay.await.unwrap();
        assert!(matches!(&report.aborted, Some(Abort::Connection(why)) if why.starts_with("client: ")), "{report:?}");
    }

    /// A client that resets while its bytes wait for a server that does not read: the relay,
    /// stuck writing to the server, still carries the reset at once.
    #[tokio::test]
    async fn a_client_reset_while_its_bytes_wait_for_a_slow_server_is_carried() {
        let (client, server, relay) = setup(Chain::default(), Chain::default(), Limits::default()).await;
        let (read, mut write) = client.into_split();
        // More than every buffer on the way holds: the relay's write to the server waits.
        let upload = tokio::spawn(async move {
            let _ = write.write_all(&vec![1u8; 64 << 20]).await;
            write
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        read.as_ref().set_zero_linger().unwrap();
        upload.abort();
        let _ = upload.await;
        drop(read);
        client_reset_reaches(&server, ErrorKind::ConnectionReset, relay).await;
    }

    /// A server that answers, sends its FIN and then resets (the client's next request came
    /// after it closed): the answer and the FIN already in the proxy still reach the client,
    /// whole, as they would without the proxy; the reset is not carried over them.
    #[tokio::test]
    async fn a_server_reset_after_its_fin_does_not_cut_the_answer_before_it() {
        // Most of the answer waits in the relay's queues when the reset comes.
        let (mut client, mut server, client_side, server_side) = slow_client().await;
        let relay = tokio::spawn(async move {
            relay(client_side, server_side, Chain::default(), Chain::default(), Limits::default(), &Meters::default()).await
        });
        client.write_all(b"GET /a").await.unwrap();
        server.read_exact(&mut [0u8; 6]).await.unwrap();
        let answer = vec![7u8; 256 << 10];
        server.write_all(&answer).await.unwrap();
        server.shutdown().await.unwrap();
        // Acknowledged by the proxy (a reset discards what the server has not sent), then reset.
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.set_zero_linger().unwrap();
        drop(server);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut got = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got)).await.expect("an end");
        assert_eq!((got.len(), end.map(|_| "eof").map_err(|e| e.kind())), (answer.len(), Ok("eof")));
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), relay).await.expect("the relay ends").unwrap();
    }

    #[tokio::test]
    async fn a_function_refusing_its_input_resets_both_sides() {
        let fwd = chain(&[("base64", &[("op", "decode")])]);
        let (mut client, mut server, relay) = setup(fwd, Chain::default(), Limits::default()).await;
        client.write_all(b"Zm9v").await.unwrap();
        let mut foo = [0u8; 3];
        server.read_exact(&mut foo).await.unwrap();
        assert_eq!(&foo, b"foo", "what is valid gets through");
        client.write_all(b"!!!!").await.unwrap();
        let err = server.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "the server never sees a complete stream");
        let err = client.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset);
        assert!(matches!(relay.await.unwrap().aborted, Some(Abort::Function(_))));
    }

    #[tokio::test]
    async fn idle_connections_are_reset() {
        let limits = Limits { idle: Duration::from_millis(200), ..Limits::default() };
        let (mut client, mut server, relay) = setup(Chain::default(), Chain::default(), limits).await;
        client.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        server.read_exact(&mut one).await.unwrap();
        let t = Instant::now();
        let err = client.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset);
        assert!(t.elapsed() >= Duration::from_millis(150), "{:?}", t.elapsed());
        assert_eq!(relay.await.unwrap().aborted, Some(Abort::Idle));
    }

    /// A reader too slow for one read's output to be written within `Limits::idle`: bytes
    /// still move, so the relay is not idle and the answer arrives whole.
    #[tokio::test]
    async fn a_slow_reader_of_a_long_write_is_not_idle() {
        let (mut client, mut server, client_side, server_side) = slow_client().await;
        // A small send buffer towards the client (loopback's starts at megabytes): the write
        // waits on the reader.
        socket2::SockRef::from(&client_side).set_send_buffer_size(8 << 10).unwrap();
        let limits = Limits { idle: Duration::from_millis(300), ..Limits::default() };
        // One read of 128 bytes becomes one write of 128,000.
        let grow = chain(&[("replace", &[("from", "x"), ("to", &"y".repeat(1000))])]);
        let relay = tokio::spawn(async move { relay(client_side, server_side, Chain::default(), grow, limits, &Meters::default()).await });
        server.write_all(&[b'x'; 128]).await.unwrap();
        server.shutdown().await.unwrap();
        // ~200 KB/s: that write alone lasts ~600 ms.
        let (mut got, mut chunk) = (Vec::new(), [0u8; 4096]);
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            match client.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("after {} bytes: {e}", got.len()),
            }
        }
        assert_eq!(got.len(), 128_000);
        drop(client);
        let report = tokio::time::timeout(Duration::from_secs(5), relay).await.expect("the relay ends").unwrap();
        assert_eq!(report.aborted, None);
        assert_eq!(report.reverse.max_pending, 128_000, "one write");
    }

    /// A decompression bomb (64 MiB of zeros, zstd-compressed to a few KB, sent in one write):
    /// written on in parts of at most 1 MiB, each before the next is made, never as one.
    #[tokio::test]
    async fn a_read_that_expands_goes_on_in_bounded_parts() {
        let total = 64 << 20;
        let mut packed = Vec::new();
        let (_, mut zstd) = srv6pipes_functions::build("compress", &[("algorithm".to_string(), "zstd".to_string())].into()).unwrap();
        zstd.push(&vec![0u8; total], &mut packed).unwrap();
        zstd.finish(&mut packed).unwrap();
        assert!(packed.len() < 64 << 10, "{} bytes", packed.len());
        let rev = chain(&[("compress", &[("algorithm", "zstd"), ("op", "decompress")])]);
        let (mut client, mut server, relay) = setup(Chain::default(), rev, Limits::default()).await;
        server.write_all(&packed).await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got.len() == total && got.iter().all(|&b| b == 0), "{} bytes", got.len());
        drop((client, server));
        let report = relay.await.unwrap();
        assert_eq!(report.aborted, None);
        assert!(report.reverse.max_pending <= 1 << 20, "one part of {} bytes", report.reverse.max_pending);
    }

    /// A read that expands in parts (decompression) whose last part leaves a function holding
    /// bytes back (`replace`'s possible match): they go on at the pause all the same.
    #[tokio::test]
    async fn the_last_part_of_an_expanded_read_is_not_held_back() {
        let plain = [vec![b'x'; 3 << 19], b"do".to_vec()].concat();
        let mut packed = Vec::new();
        let (_, mut zstd) = srv6pipes_functions::build("compress", &[("algorithm".to_string(), "zstd".to_string())].into()).unwrap();
        zstd.push(&plain, &mut packed).unwrap();
        let rev = chain(&[("compress", &[("algorithm", "zstd"), ("op", "decompress")]), ("replace", &[("from", "dogs"), ("to", "cats")])]);
        let (mut client, mut server, relay) = setup(Chain::default(), rev, Limits::default()).await;
        server.write_all(&packed).await.unwrap();
        let mut got = vec![0u8; plain.len()];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got)).await.expect("the tail held back").unwrap();
        assert!(got == plain);
        drop((client, server));
        relay.await.unwrap();
    }

    #[tokio::test]
    async fn a_slow_reader_holds_the_relay_to_one_read() {
        let limits = Limits { read_size: 16 * 1024, ..Limits::default() };
        let (mut client, mut server, relay) = setup(Chain::default(), Chain::default(), limits).await;
        let total = 8 << 20;
        let writer = tokio::spawn(async move {
            let chunk = vec![7u8; 1 << 20];
            for _ in 0..8 {
                client.write_all(&chunk).await.unwrap();
            }
            client.shutdown().await.unwrap();
            client
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), total);
        drop(server);
        drop(writer.await.unwrap());
        let report = relay.await.unwrap();
        assert_eq!(report.forward.bytes_in, total as u64);
        assert!(report.forward.max_pending <= 16 * 1024, "{report:?}");
    }
}
