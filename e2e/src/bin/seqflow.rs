//! seqflow: a sequenced UDP stream for loss and reordering tests.
//!
//!   seqflow send --to ADDR:PORT --rate PPS --seconds S [--flows N] [--size B] [--gso K] [--stop-file F]   -> {"sent": N}
//!   seqflow recv --bind ADDR:PORT [--idle-exit S] [--first-wait S]        -> {"received", "lost", "reordered", "duplicates", "highest"}
//!
//! Each datagram carries a big-endian u64 sequence number from 0. The receiver exits after
//! `--idle-exit` seconds (default 2) without a datagram, once it has seen one, or after
//! `--first-wait` seconds (default 10) if none came at all. `--size` is the
//! datagram's payload (default 64). `--gso K` sends K datagrams per system call as one UDP GSO
//! buffer (`UDP_SEGMENT`, as QUIC stacks do): the kernel splits it into datagrams of `--size`.
//! `--stop-file F`: the sender also stops, before `--seconds`, once file F exists (a test that
//! must overlap the stream with something of unknown length ends it when that is done).

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1].as_str())
}

fn required<'a>(args: &'a [String], name: &str) -> &'a str {
    arg(args, name).unwrap_or_else(|| {
        eprintln!("seqflow: missing {name}");
        std::process::exit(2)
    })
}

fn send(args: &[String]) {
    let to: SocketAddr = required(args, "--to").parse().expect("--to ADDR:PORT");
    let rate: f64 = required(args, "--rate").parse().expect("--rate PPS");
    let seconds: f64 = required(args, "--seconds").parse().expect("--seconds S");
    let flows: usize = arg(args, "--flows").map(|s| s.parse().expect("--flows N")).unwrap_or(1);
    let size: usize = arg(args, "--size").map(|s| s.parse().expect("--size BYTES")).unwrap_or(64).max(8);
    let gso: usize = arg(args, "--gso").map(|s| s.parse().expect("--gso K")).unwrap_or(1).max(1);
    let stop_file = arg(args, "--stop-file").map(std::path::Path::new);
    let bind: SocketAddr = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().unwrap();
    // One socket (source port) per flow; datagrams go round-robin over them. Unconnected, so
    // an ICMP port unreachable (no receiver) does not fail later sends.
    let socks: Vec<UdpSocket> = (0..flows.max(1)).map(|_| UdpSocket::bind(bind).expect("bind")).collect();
    if gso > 1 {
        for s in &socks {
            set_udp_segment(s, size);
        }
    }
    let total = (rate * seconds) as u64;
    let gap = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut buf = vec![0u8; size * gso];
    let mut sent = 0u64;
    let mut call = 0usize;
    while sent < total {
        // (a stat every 256 sends: at most a few hundred a second)
        if call.is_multiple_of(256) && stop_file.is_some_and(|f| f.exists()) {
            break;
        }
        let due = start + gap.mul_f64(sent as f64);
        let now = Instant::now();
        if due > now + Duration::from_millis(1) {
            std::thread::sleep(due - now - Duration::from_micros(500));
            continue;
        }
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        let n = gso.min((total - sent) as usize);
        for i in 0..n {
            buf[i * size..i * size + 8].copy_from_slice(&(sent + i as u64).to_be_bytes());
        }
        match socks[call % socks.len()].send_to(&buf[..n * size], to) {
            Ok(_) => {
                sent += n as u64;
                call += 1;
            }
            // A full socket buffer is back-pressure, not loss on the path: retry.
            Err(e) if e.raw_os_error() == Some(libc_enobufs()) => std::thread::yield_now(),
            Err(e) => panic!("send: {e}"),
        }
    }
    println!("{}", serde_json::json!({"sent": sent, "seconds": start.elapsed().as_secs_f64()}));
}

/// UDP GSO (`UDP_SEGMENT`, Linux 4.18): one send of several datagrams of `size` bytes each.
fn set_udp_segment(sock: &UdpSocket, size: usize) {
    use std::os::fd::AsRawFd;
    let seg = size as nix::libc::c_int;
    // SAFETY: a valid socket and a c_int option value of the right length.
    let rc = unsafe {
        nix::libc::setsockopt(
            sock.as_raw_fd(),
            nix::libc::SOL_UDP,
            nix::libc::UDP_SEGMENT,
            (&seg as *const nix::libc::c_int).cast(),
            std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt(UDP_SEGMENT): {}", std::io::Error::last_os_error());
}

fn libc_enobufs() -> i32 {
    nix::errno::Errno::ENOBUFS as i32
}

fn recv(args: &[String]) {
    let bind: SocketAddr = required(args, "--bind").parse().expect("--bind ADDR:PORT");
    let idle: f64 = arg(args, "--idle-exit").map(|s| s.parse().expect("--idle-exit S")).unwrap_or(2.0);
    let first_wait = Duration::from_secs_f64(arg(args, "--first-wait").map(|s| s.parse().expect("--first-wait S")).unwrap_or(10.0));
    let started = Instant::now();
    let sock = UdpSocket::bind(bind).expect("bind");
    // Root may exceed rmem_max: a deep buffer keeps scheduling hiccups from looking like loss.
    let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBufForce, &(16 << 20));
    sock.set_read_timeout(Some(Duration::from_secs_f64(idle))).unwrap();
    eprintln!("seqflow: listening on {bind}");
    let (mut received, mut reordered, mut duplicates, mut highest) = (0u64, 0u64, 0u64, None::<u64>);
    let mut seen = HashSet::new();
    let mut buf = [0u8; 2048];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) if n >= 8 => {
                let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
                if !seen.insert(seq) {
                    duplicates += 1;
                    continue;
                }
                received += 1;
                match highest {
                    Some(h) if seq < h => reordered += 1,
                    _ => highest = Some(seq),
                }
            }
            Ok(_) => {}
            Err(_) if highest.is_some() || started.elapsed() >= first_wait => break,
            Err(_) => {}
        }
    }
    let expected = highest.map_or(0, |h| h + 1);
    println!(
        "{}",
        serde_json::json!({"received": received, "lost": expected - received, "reordered": reordered,
                           "duplicates": duplicates, "highest": highest})
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("send") => send(&args),
        Some("recv") => recv(&args),
        _ => {
            eprintln!("usage: seqflow send --to ADDR:PORT --rate PPS --seconds S [--flows N] [--size B] [--gso K] [--stop-file F] | recv --bind ADDR:PORT [--idle-exit S]");
            std::process::exit(2);
        }
    }
}
