//! tcpcheck: the TCP ends of the SRv6 pipes tests (std only). Every outcome is one line on
//! stdout: `eof <bytes>` (a clean end of stream), `reset <bytes>` (ECONNRESET: the peer reset),
//! `reply <text>`, or a JSON summary.
//!
//!   tcpcheck serve PORT reply          read to EOF, answer "got N", close (half-close check)
//!   tcpcheck serve PORT reset-after N  read N bytes, then reset (SO_LINGER 0)
//!   tcpcheck serve PORT watch          read to the end; print how it ended (once)
//!   tcpcheck serve PORT slow-reply S   read to EOF, wait S seconds, answer "got N", close
//!   tcpcheck half-close ADDR N         send N bytes, shut down writing, print what comes back
//!   tcpcheck expect-end ADDR           send a line, print how the connection ends
//!   tcpcheck trickle ADDR SECONDS      send 1 KiB every 20 ms; print how it ended
//!   tcpcheck give-up-and-return ADDR   send 1 KiB and a FIN, give up on the answer after
//!                                      300 ms (a reset), then at once the same again from the
//!                                      same address and port; print what that one gets back
//!   tcpcheck concurrent ADDR N         N connections open at once, each half-closes after
//!                                      1 KiB and checks the "got 1024" reply; JSON counts
//!                                      and the reasons of the failures

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    // Thousands of connections at once: every descriptor the hard limit allows.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = match a.as_slice() {
        ["serve", port, mode, rest @ ..] => serve(port.parse().expect("port"), mode, rest),
        ["half-close", addr, n] => half_close(addr, n.parse().expect("bytes")),
        ["expect-end", addr] => expect_end(addr),
        ["trickle", addr, secs] => trickle(addr, secs.parse().expect("seconds")),
        ["concurrent", addr, n] => concurrent(addr, n.parse().expect("count")),
        ["give-up-and-return", addr] => give_up_and_return(addr),
        _ => {
            eprintln!("usage: see the source's header");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcpcheck: {e}");
            ExitCode::FAILURE
        }
    }
}

fn addr(s: &str) -> std::io::Result<SocketAddr> {
    s.to_socket_addrs()?.next().ok_or_else(|| std::io::Error::other(format!("no address {s}")))
}

fn connect(to: &str) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr(to)?, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// Reads to the end: (bytes, whether it ended in a reset).
fn drain(s: &mut TcpStream) -> std::io::Result<(u64, bool)> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok((n, false)),
            Ok(k) => n += k as u64,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok((n, true)),
            Err(e) => return Err(e),
        }
    }
}

fn outcome((n, reset): (u64, bool)) -> String {
    format!("{} {n}", if reset { "reset" } else { "eof" })
}

fn serve(port: u16, mode: &str, rest: &[&str]) -> std::io::Result<()> {
    let l = TcpListener::bind(("::", port))?;
    // std listens with a backlog of 128, and `concurrent` opens 1,000 connections at once through
    // the proxies: an overflowing accept queue drops handshakes, and a dropped one shows later as
    // a reset that is the test server's, not the proxy's. The system's maximum instead.
    nix::sys::socket::listen(&l, nix::sys::socket::Backlog::MAXCONN).map_err(std::io::Error::from)?;
    let once = mode == "watch";
    for conn in l.incoming() {
        let mut s = match conn {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tcpcheck: accept: {e}");
                continue;
            }
        };
        let mode = mode.to_string();
        let after: u64 = rest.first().and_then(|n| n.parse().ok()).unwrap_or(0);
        let handle = std::thread::spawn(move || -> std::io::Result<()> {
            match mode.as_str() {
                "reply" => {
                    let (n, _) = drain(&mut s)?;
                    s.write_all(format!("got {n}").as_bytes())?;
                }
                "reset-after" => {
                    let mut buf = vec![0u8; after as usize];
                    s.read_exact(&mut buf)?;
                    socket_linger_zero(&s)?;
                }
                "watch" => println!("{}", outcome(drain(&mut s)?)),
                "slow-reply" => {
                    let (n, _) = drain(&mut s)?;
                    std::thread::sleep(Duration::from_secs(after));
                    s.write_all(format!("got {n}").as_bytes())?;
                }
                other => return Err(std::io::Error::other(format!("unknown mode {other}"))),
            }
            Ok(())
        });
        if once {
            return handle.join().expect("no panic");
        }
    }
    Ok(())
}

/// `SO_LINGER` 0: closing the socket resets the connection.
fn socket_linger_zero(s: &TcpStream) -> std::io::Result<()> {
    let l = nix::sys::socket::sockopt::Linger;
    nix::sys::socket::setsockopt(s, l, &nix::libc::linger { l_onoff: 1, l_linger: 0 }).map_err(std::io::Error::from)
}

fn half_close(to: &str, n: usize) -> std::io::Result<()> {
    let mut s = connect(to)?;
    send_and_finish(&mut s, n)?;
    print_reply(&mut s)
}

/// `n` bytes of text, then a FIN.
fn send_and_finish(s: &mut TcpStream, n: usize) -> std::io::Result<()> {
    let data: Vec<u8> = (0..n).map(|i| b"abcdefghijklmnopqrstuvwxyz\n"[i % 27]).collect();
    s.write_all(&data)?;
    s.shutdown(Shutdown::Write)
}

/// What comes back until the end: `reply <text>`, or `reset <bytes>`.
fn print_reply(s: &mut TcpStream) -> std::io::Result<()> {
    let mut back = Vec::new();
    match s.read_to_end(&mut back) {
        Ok(_) => println!("reply {}", String::from_utf8_lossy(&back)),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => println!("reset {}", back.len()),
        Err(e) => return Err(e),
    }
    Ok(())
}

/// A client that gives up on a slow answer and asks again at once from the same address and
/// port (its side of the first connection was reset: nothing holds the port). The proxies must
/// have let the first connection go with its reset, or they cannot connect the second.
fn give_up_and_return(to: &str) -> std::io::Result<()> {
    let mut first = connect(to)?;
    let (from, to) = (first.local_addr()?, first.peer_addr()?);
    send_and_finish(&mut first, 1024)?;
    std::thread::sleep(Duration::from_millis(300));
    socket_linger_zero(&first)?;
    drop(first);
    let mut again = connect_from(from, to)?;
    send_and_finish(&mut again, 1024)?;
    print_reply(&mut again)
}

/// `connect`, from `from` (bound first, `SO_REUSEADDR`).
fn connect_from(from: SocketAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let family = if to.is_ipv6() { AddressFamily::Inet6 } else { AddressFamily::Inet };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    // A blocking connect waits SO_SNDTIMEO at most: 10 s, as `connect`.
    socket::setsockopt(&fd, sockopt::SendTimeout, &nix::sys::time::TimeVal::new(10, 0))?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(from))?;
    socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(to))?;
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

fn expect_end(to: &str) -> std::io::Result<()> {
    // The proxy accepts at once; when its onward connection is refused it resets the client's,
    // and on a loaded machine that reset can arrive before connect() returns: a reset all the
    // same (SO_ERROR ECONNRESET comes only from an established connection).
    let mut s = match connect(to) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {
            println!("reset 0 (before connect returned)");
            return Ok(());
        }
        r => r?,
    };
    // The proxy has accepted already; what matters is how the connection then ends.
    let _ = s.write_all(b"hello\n");
    println!("{}", outcome(drain(&mut s)?));
    Ok(())
}

fn trickle(to: &str, secs: u64) -> std::io::Result<()> {
    let mut s = connect(to)?;
    let chunk = [b'x'; 1024];
    let end = Instant::now() + Duration::from_secs(secs);
    let mut sent = 0u64;
    while Instant::now() < end {
        match s.write_all(&chunk) {
            Ok(()) => sent += chunk.len() as u64,
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                println!("reset {sent}");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    s.shutdown(Shutdown::Write)?;
    let (_, reset) = drain(&mut s)?;
    println!("{} {sent}", if reset { "reset" } else { "eof" });
    Ok(())
}

fn concurrent(to: &str, n: usize) -> std::io::Result<()> {
    let to = addr(to)?;
    let barrier = Arc::new(Barrier::new(n));
    // Why each failed connection failed, counted by reason (the stage and the error).
    let failures = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (barrier, failures) = (barrier.clone(), failures.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let conn = TcpStream::connect_timeout(&to, Duration::from_secs(20)).map_err(|e| format!("connect: {e}"));
                    // Every connection is open before any sends: N at once through the proxies.
                    barrier.wait();
                    let outcome = conn.and_then(|mut s| {
                        let stage = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
                        s.set_read_timeout(Some(Duration::from_secs(30))).map_err(stage("timeout"))?;
                        s.write_all(&[b'y'; 1024]).map_err(stage("write"))?;
                        s.shutdown(Shutdown::Write).map_err(stage("shutdown"))?;
                        let mut back = String::new();
                        s.read_to_string(&mut back).map_err(stage("read"))?;
                        if back == "got 1024" {
                            Ok(())
                        } else {
                            Err(format!("reply {back:?}"))
                        }
                    });
                    if let Err(why) = outcome {
                        *failures.lock().expect("not poisoned").entry(why).or_default() += 1;
                    }
                })
                .expect("a thread")
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let failures = failures.lock().expect("not poisoned");
    let failed: u64 = failures.values().sum();
    let reasons: Vec<String> = failures.iter().map(|(why, k)| format!("{why:?}: {k}")).collect();
    println!("{{\"ok\": {}, \"failed\": {failed}, \"why\": {{{}}}}}", n as u64 - failed, reasons.join(", "));
    Ok(())
}
