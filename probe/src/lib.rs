//! srv6pipes' plain HTTP endpoints: Prometheus' `/metrics`, and the `/healthz` and `/readyz`
//! that kubelet probes. One GET per connection, answered and closed (HTTP/1.0 framing, which
//! kubelet and Prometheus accept); the request line is all that is read. Also the daemons'
//! logging set-up ([`init_logging`]).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

/// Logs to stderr, filtered by `RUST_LOG` (`info` without it), as JSON lines when `json`.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        fmt.json().init();
    } else {
        fmt.init();
    }
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn ok(body: impl Into<String>) -> Self {
        Reply { status: 200, body: body.into() }
    }

    pub fn unavailable(body: impl Into<String>) -> Self {
        Reply { status: 503, body: body.into() }
    }

    pub fn not_found(known: &[&str]) -> Self {
        Reply { status: 404, body: format!("not found; try {}\n", known.join(", ")) }
    }

    fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            404 => "Not Found",
            405 => "Method Not Allowed",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "",
        }
    }

    /// The whole response as sent.
    pub fn to_http(&self) -> String {
        format!(
            "HTTP/1.0 {} {}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.status,
            self.reason(),
            self.body.len(),
            self.body
        )
    }
}

/// An answer: whole, or lines as they come (newline-delimited JSON) until the sender is dropped
/// or the client goes away.
pub enum Answer {
    Whole(Reply),
    Lines(tokio::sync::mpsc::Receiver<String>),
}

impl From<Reply> for Answer {
    fn from(r: Reply) -> Self {
        Answer::Whole(r)
    }
}

/// A request target's path and query (`/monitor?type=drop` gives `("/monitor", "type=drop")`).
pub fn split_target(target: &str) -> (&str, &str) {
    target.split_once('?').unwrap_or((target, ""))
}

/// The path of a GET request line (`GET /readyz?verbose HTTP/1.1` gives `/readyz`); None for
/// anything else.
pub fn get_path(request_line: &str) -> Option<&str> {
    get_target(request_line).map(|t| split_target(t).0)
}

/// The target of a GET request line, query included.
pub fn get_target(request_line: &str) -> Option<&str> {
    let mut words = request_line.split_ascii_whitespace();
    if words.next()? != "GET" {
        return None;
    }
    words.next()
}

/// Binds `addr` and answers on it from a task of the current runtime; `what` names the endpoints
/// in the log and in a bind error. The handler gets the request's target, query included.
pub async fn spawn<F, Fut, A>(addr: std::net::SocketAddr, what: &str, handler: F) -> std::io::Result<()>
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = A> + Send + 'static,
    A: Into<Answer> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await.map_err(|e| std::io::Error::new(e.kind(), format!("bind {what} on {addr}: {e}")))?;
    tracing::info!(%addr, "serving {what}");
    tokio::spawn(serve(listener, handler));
    Ok(())
}

/// Answers every connection on `listener` with `handler(target)`, until the listener fails.
pub async fn serve<F, Fut, A>(listener: TcpListener, handler: F)
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = A> + Send,
    A: Into<Answer> + Send,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, handler).await {
                warn!(error = %e, "HTTP request failed");
            }
        });
    }
}

async fn answer<F, Fut, A>(stream: TcpStream, handler: F) -> std::io::Result<()>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = A>,
    A: Into<Answer>,
{
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    // A client that sends nothing is dropped, not waited on for ever.
    match tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line)).await {
        Ok(read) => read?,
        Err(_) => return Ok(()),
    };
    let answer = match get_target(&line) {
        Some(target) => handler(target.to_string()).await.into(),
        None => Answer::Whole(Reply { status: 405, body: "only GET\n".into() }),
    };
    match answer {
        Answer::Whole(reply) => w.write_all(reply.to_http().as_bytes()).await?,
        Answer::Lines(lines) => stream_lines(r, &mut w, lines).await?,
    }
    w.shutdown().await
}

/// Sends `lines` as they come, until they end or the client closes its side (what it sends after
/// the request line is read and dropped).
async fn stream_lines(
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    lines: tokio::sync::mpsc::Receiver<String>,
) -> std::io::Result<()> {
    w.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: application/x-ndjson\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n").await?;
    relay_lines(r, w, lines).await
}

/// Writes `lines` to `w` as they come, until they end or the peer closes its side of `r` (what
/// it sends is read and dropped): a stream of events over any connection.
pub async fn relay_lines<R, W>(mut r: R, w: &mut W, mut lines: tokio::sync::mpsc::Receiver<String>) -> std::io::Result<()>
where
    R: tokio::io::AsyncBufRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut sink = Vec::new();
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(line) => w.write_all(line.as_bytes()).await?,
                None => return Ok(()),
            },
            read = r.read_until(b'\n', &mut sink) => {
                if read? == 0 {
                    return Ok(());
                }
                sink.clear();
            }
        }
    }
}

/// What `/healthz` and `/readyz` report: a heartbeat that the process' main loop beats, and
/// a readiness with the reason it is not ready.
pub struct Health {
    started: Instant,
    beat_ms: AtomicU64,
    ready: AtomicBool,
    why_not: Mutex<String>,
    stall: Duration,
}

impl Health {
    /// Live while the main loop beats at least every `stall`; not ready until told.
    pub fn new(stall: Duration, why_not: &str) -> Self {
        Health {
            started: Instant::now(),
            beat_ms: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            why_not: Mutex::new(why_not.into()),
            stall,
        }
    }

    /// The main loop ran; until the first beat the process is starting, and live.
    pub fn beat(&self) {
        self.beat_ms.store(self.started.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
    }

    /// Ready, or not with the reason (`/readyz` says it).
    pub fn set_ready(&self, ready: Result<(), String>) {
        match ready {
            Ok(()) => self.ready.store(true, Ordering::Relaxed),
            Err(why) => {
                *self.why_not.lock().expect("health") = why;
                self.ready.store(false, Ordering::Relaxed);
            }
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn healthz(&self) -> Reply {
        let beat = self.beat_ms.load(Ordering::Relaxed);
        if beat == 0 {
            return Reply::ok("starting\n");
        }
        let since = self.started.elapsed().saturating_sub(Duration::from_millis(beat - 1));
        if since <= self.stall {
            Reply::ok("ok\n")
        } else {
            Reply::unavailable(format!("the main loop has not run for {:.0} s\n", since.as_secs_f64()))
        }
    }

    pub fn readyz(&self) -> Reply {
        if self.is_ready() {
            Reply::ok("ok\n")
        } else {
            Reply::unavailable(format!("not ready: {}\n", self.why_not.lock().expect("health")))
        }
    }

    /// The probes' answers, `not_found` naming them for any other path.
    pub fn answer_or_404(&self, path: &str) -> Reply {
        self.answer(path).unwrap_or_else(|| Reply::not_found(&["/healthz", "/readyz"]))
    }

    /// The answer to the probes' paths; None for another path.
    pub fn answer(&self, path: &str) -> Option<Reply> {
        match path {
            "/healthz" | "/livez" => Some(self.healthz()),
            "/readyz" => Some(self.readyz()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(get_path("GET /readyz HTTP/1.1\r\n"), Some("/readyz"));
        assert_eq!(get_path("GET /metrics?x=1 HTTP/1.0\r\n"), Some("/metrics"));
        assert_eq!(get_path("GET /metrics\r\n"), Some("/metrics"));
        assert_eq!(get_path("POST /readyz HTTP/1.1\r\n"), None);
        assert_eq!(get_path(""), None);
    }

    #[test]
    fn replies_are_framed() {
        let r = Reply::unavailable("not ready: x\n").to_http();
        assert!(r.starts_with("HTTP/1.0 503 Service Unavailable\r\n"), "{r}");
        assert!(r.contains("Content-Length: 13\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nnot ready: x\n"), "{r}");
    }

    #[test]
    fn readiness_says_why_not() {
        let h = Health::new(Duration::from_secs(30), "starting");
        assert_eq!(h.readyz().status, 503);
        assert!(h.readyz().body.contains("starting"));
        h.set_ready(Ok(()));
        assert_eq!(h.answer("/readyz").unwrap().status, 200);
        h.set_ready(Err("program 7 failed".into()));
        assert_eq!(h.readyz().body, "not ready: program 7 failed\n");
        assert!(h.answer("/metrics").is_none());
    }

    #[test]
    fn liveness_follows_the_heartbeat() {
        // A period far longer than a loaded machine's scheduling delay between a beat and the
        // check after it.
        let h = Health::new(Duration::from_millis(400), "starting");
        std::thread::sleep(Duration::from_millis(900));
        assert_eq!(h.healthz(), Reply::ok("starting\n"), "live before the main loop starts");
        h.beat();
        assert_eq!(h.healthz().status, 200);
        std::thread::sleep(Duration::from_millis(900));
        let stalled = h.healthz();
        assert_eq!(stalled.status, 503, "{stalled:?}");
        assert!(stalled.body.contains("has not run"), "{stalled:?}");
        h.beat();
        assert_eq!(h.healthz().status, 200);
    }

    #[tokio::test]
    async fn serves_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, |path: String| async move {
            if path == "/x" {
                Reply::ok("x\n")
            } else {
                Reply::not_found(&["/x"])
            }
        }));
        for (req, want) in
            [("GET /x HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.0 200 OK"), ("GET /y HTTP/1.1\r\n\r\n", "HTTP/1.0 404 Not Found")]
        {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut s, &mut out).await.unwrap();
            assert!(out.starts_with(want), "{req:?} -> {out:?}");
        }
    }

    #[tokio::test]
    async fn streams_lines_until_the_client_leaves() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
        let gone_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(gone_tx)));
        tokio::spawn(serve(listener, move |target: String| {
            let gone_tx = gone_tx.clone();
            async move {
                assert_eq!(split_target(&target), ("/lines", "n=2"));
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                tokio::spawn(async move {
                    tx.send("one\n".to_string()).await.unwrap();
                    tx.send("two\n".to_string()).await.unwrap();
                    // The sender lives until the client goes (the stream then drops the receiver).
                    tx.closed().await;
                    if let Some(t) = gone_tx.lock().unwrap().take() {
                        let _ = t.send(());
                    }
                });
                Answer::Lines(rx)
            }
        }));
        let s = TcpStream::connect(addr).await.unwrap();
        let (r, mut w) = s.into_split();
        w.write_all(b"GET /lines?n=2 HTTP/1.1\r\n\r\n").await.unwrap();
        let mut r = BufReader::new(r);
        let mut lines = Vec::new();
        while lines.last().map(String::as_str) != Some("two\n") {
            let mut l = String::new();
            assert!(r.read_line(&mut l).await.unwrap() > 0, "stream ended early after {lines:?}");
            lines.push(l);
        }
        assert_eq!(lines[0], "HTTP/1.0 200 OK\r\n");
        assert!(lines.contains(&"one\n".to_string()));
        drop(w);
        drop(r);
        tokio::time::timeout(Duration::from_secs(5), gone_rx).await.expect("the stream ends when the client leaves").unwrap();
    }
}
