//! SRv6 pipes on the real kernel (examples/lab-pipes.yaml): bytestream functions in
//! srv6pipes-stream proxies, chained by SRv6 with a packet function, across nodes. The seed's
//! pipeline turns "I love dogs!" into "I love cats!" and the server sees the client's own
//! address and port; 4 MiB cross compress (n1) and decompress (n2) intact, compressed in
//! between; TCP's ends (half-close, resets, refusals, a client's reset after its FIN and its
//! port reused at once) hold end to end; 1,000 connections at once, and 300 through a proxy
//! that loses 5 % of its packets; a killed proxy resets its connections and its replica takes
//! the new ones; pods outside the chain cannot reach the proxies' SIDs. Needs root, nftables,
//! socat and tc.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{drops, pod_ip, repo_root, target_dir, wait_for, Lab};

fn pipes(tag: &str) -> Lab {
    let lab = Lab::new(tag);
    lab.ok(&["up", "-f", repo_root().join("examples/lab-pipes.yaml").to_str().unwrap()]);
    wait_for("the firewall's rules", Duration::from_secs(10), || {
        lab.exec("firewall", &["nft", "list", "table", "inet", "vnf"]).status.success()
    });
    wait_for("the proxies' listeners", Duration::from_secs(10), || {
        ["pipes-a", "pipes-b"].iter().all(|p| String::from_utf8_lossy(&lab.exec(p, &["ss", "-Hltn"]).stdout).matches(":4000").count() >= 2)
    });
    lab
}

/// 5 % loss at egress of a proxy pod's chain interface (`net1`, its second: a tc-BPF program,
/// this kernel has no netem), for as long as it lives.
struct Loss<'a> {
    lab: &'a Lab,
    pod: &'static str,
}

impl<'a> Loss<'a> {
    fn on(lab: &'a Lab, pod: &'static str) -> Self {
        static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/loss5.bpf.o"));
        let obj = lab.state.join("loss5.bpf.o");
        std::fs::write(&obj, OBJECT).unwrap();
        let loss = Self { lab, pod };
        lab.ok(&["exec", pod, "--", "tc", "qdisc", "add", "dev", "net1", "clsact"]);
        let obj = obj.to_str().unwrap();
        lab.ok(&["exec", pod, "--", "tc", "filter", "add", "dev", "net1", "egress", "bpf", "da", "obj", obj, "sec", "classifier"]);
        loss
    }
}

impl Drop for Loss<'_> {
    fn drop(&mut self) {
        let _ = self.lab.exec(self.pod, &["tc", "qdisc", "del", "dev", "net1", "clsact"]);
    }
}

fn tcpcheck() -> String {
    target_dir().join("tcpcheck").display().to_string()
}

/// `tcpcheck ARGS` run straight in `pod`'s netns (`ip netns exec` replaces itself with it, so
/// the child is tcpcheck itself: killing it stops it).
fn tcpcheck_in(lab: &Lab, pod: &str, args: &[&str]) -> Command {
    let st = lab.status();
    let netns = st["pods"].as_array().unwrap().iter().find(|p| p["name"] == pod).unwrap()["netns"].as_str().unwrap().to_string();
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &netns, &tcpcheck()]).args(args);
    c
}

/// A `tcpcheck` process of the test's, killed when dropped (even when the test panics).
struct Proc(Option<std::process::Child>);

impl Proc {
    fn spawn(mut c: Command) -> Self {
        Self(Some(c.stdout(Stdio::piped()).spawn().unwrap()))
    }

    /// Its output once it has exited by itself.
    fn output(mut self) -> String {
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `tcpcheck serve PORT MODE` in the server pod, in the background, once it listens.
fn serve(lab: &Lab, port: u16, mode: &[&str]) -> Proc {
    let port_s = port.to_string();
    let mut args = vec!["serve", port_s.as_str()];
    args.extend_from_slice(mode);
    let p = Proc::spawn(tcpcheck_in(lab, "server", &args));
    wait_for("the server to listen", Duration::from_secs(10), || {
        !lab.exec("server", &["ss", "-Hltn", "sport", "=", &format!(":{port}")]).stdout.is_empty()
    });
    p
}

/// Stops a `serve` and waits until nothing listens on its port.
fn stop(lab: &Lab, server: Proc, port: u16) {
    drop(server);
    wait_for("the server to stop listening", Duration::from_secs(5), || {
        lab.exec("server", &["ss", "-Hltn", "sport", "=", &format!(":{port}")]).stdout.is_empty()
    });
}

/// `tcpcheck ARGS` in the client pod: its one line of outcome.
fn client(lab: &Lab, args: &[&str]) -> String {
    let out = tcpcheck_in(lab, "client", args).output().unwrap();
    assert!(out.status.success(), "tcpcheck {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn target(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The stream proxies' counters (`lab status`): the entry of `pod` whose function starts so,
/// once the proxy has reported (each second), else null.
fn proxy_counters(lab: &Lab, pod: &str, function: &str) -> Value {
    let st = lab.status();
    st["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["pod"] == format!("default/{pod}") && s["function"].as_str().unwrap_or_default().starts_with(function))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The seed's pipeline (base64 on n1, replace + base64 -d in one process on n2) over IPv6 and
/// IPv4: the server prints "I love cats!" from the client's own address and port. Then 4 MiB of
/// text through the mixed chain (End.AD firewall on n2, zstd compress on n1, decompress on n2):
/// the same SHA-256 at the server, at most a quarter of it between the proxies, the firewall
/// counted it. A pod outside the chains cannot reach a proxy's SID. No srv6pipes drop.
#[test]
fn the_seed_pipeline_and_compression_cross_a_mixed_chain() {
    require_lab!("nft", "socat", "ss", "sha256sum");
    let lab = pipes("seed");
    for p in ["pipes-a", "pipes-b"] {
        let cookies = lab.exec(p, &["cat", "/proc/sys/net/ipv4/tcp_syncookies"]);
        assert_eq!(
            String::from_utf8_lossy(&cookies.stdout).trim(),
            "0",
            "{p}: SYN cookies off (they would complete connections no listener gets)"
        );
    }
    let st = lab.status();
    let log = lab.state.join("logs/pod-default-server.log");
    for (v6, port) in [(true, "41001"), (false, "41002")] {
        let server = pod_ip(&st, "server", v6);
        let to = if v6 { format!("TCP6:[{server}]:8080") } else { format!("TCP4:{server}:8080") };
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf 'I love dogs!' | {} lab --name {} --state-dir {} exec client -- socat -u - {to},sourceport={port},connect-timeout=5",
                target_dir().join("srv6pipes").display(),
                lab.name,
                lab.state.display()
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let client = pod_ip(&st, "client", v6);
        let client_hex: String = if v6 {
            client.parse::<std::net::Ipv6Addr>().unwrap().segments().iter().map(|s| format!("{s:04x}")).collect::<Vec<_>>().join(":")
        } else {
            let o = client.parse::<std::net::Ipv4Addr>().unwrap().octets();
            format!("0000:0000:0000:0000:0000:ffff:{:02x}{:02x}:{:02x}{:02x}", o[0], o[1], o[2], o[3])
        };
        let want = format!("from [{client_hex}]:{port}: I love cats!");
        wait_for(&format!("{want:?} in the server's log"), Duration::from_secs(10), || {
            std::fs::read_to_string(&log).unwrap_or_default().contains(&want)
        });
    }

    // 4 MiB of text that compresses well, through firewall -> compress -> decompress.
    let text: String = {
        let words = ["srv6", "pipes", "segment", "routing", "stream", "function", "proxy", "chain", "kernel", "bytes"];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut s = String::with_capacity(4 << 20);
        while s.len() < 4 << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.push_str(words[(x % 10) as usize]);
            s.push(if x.is_multiple_of(11) { '\n' } else { ' ' });
        }
        s.truncate(4 << 20);
        s
    };
    // In the lab's state directory: `down` removes them with it, even after a failure.
    let sent = lab.state.join("sent");
    let got = lab.state.join("got");
    std::fs::write(&sent, &text).unwrap();
    let server6 = pod_ip(&st, "server", true);
    let recv = Proc::spawn(lab.cmd(&[
        "exec",
        "server",
        "--",
        "socat",
        "-u",
        "TCP6-LISTEN:9000,reuseaddr",
        &format!("OPEN:{},creat,trunc", got.display()),
    ]));
    wait_for("the server on 9000", Duration::from_secs(10), || {
        !lab.exec("server", &["ss", "-Hltn", "sport", "=", ":9000"]).stdout.is_empty()
    });
    let out =
        lab.exec("client", &["socat", "-u", &format!("OPEN:{}", sent.display()), &format!("TCP6:[{server6}]:9000,connect-timeout=5")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    recv.output(); // the receiver has written the whole stream and exited
    let sha = |p: &std::path::Path| {
        String::from_utf8_lossy(&Command::new("sha256sum").arg(p).output().unwrap().stdout).split(' ').next().unwrap().to_string()
    };
    assert_eq!(sha(&got), sha(&sent), "the server got exactly what the client sent");
    // (The proxies report their counters each second.)
    wait_for("the decompressing proxy's counters", Duration::from_secs(5), || {
        lab.status()["streams"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["function"].as_str().unwrap_or_default().contains("decompress") && s["forward_out"] == text.len() as u64)
    });
    let squeezed = proxy_counters(&lab, "pipes-b", "compress");
    let wire = squeezed["forward_in"].as_u64().unwrap();
    assert!(wire > 0 && wire * 4 <= text.len() as u64, "the decompressing proxy received {wire} bytes for {} sent", text.len());
    assert_eq!(squeezed["forward_out"].as_u64().unwrap(), text.len() as u64, "{squeezed}");
    // The firewall is first in the chain: it saw the whole uncompressed stream.
    let fw = lab.exec("firewall", &["nft", "-j", "list", "table", "inet", "vnf"]);
    let fw: Value = serde_json::from_slice(&fw.stdout).unwrap();
    let fw_bytes = fw["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .find_map(|r| r["expr"].as_array().unwrap().iter().find_map(|e| e.get("counter")).and_then(|c| c["bytes"].as_u64()));
    assert!(fw_bytes.unwrap() >= text.len() as u64, "the packet function saw the transfer: {fw_bytes:?} bytes");

    // Observability: the stream SIDs decoded in stats and trace, the proxy's counters in n2's
    // Prometheus metrics.
    let stats = Command::new(target_dir().join("srv6pipes"))
        .args(["stats", "--name", &lab.name, "--state-dir", lab.state.to_str().unwrap()])
        .output()
        .unwrap();
    let stats = String::from_utf8_lossy(&stats.stdout);
    assert!(stats.contains("End.STREAM") && stats.contains("replace(from=RvZ3,to=NhdH) | base64(op=decode)"), "{stats}");
    let trace = Command::new(target_dir().join("srv6pipes"))
        .args(["trace", "--name", &lab.name, "--state-dir", lab.state.to_str().unwrap(), "squeeze"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&trace.stdout).contains("[compress(algorithm=zstd,op=decompress)]"), "{trace:?}");
    let metrics =
        lab.run(&["exec", "--node", "n2", "--", "sh", "-c", "printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' | socat - TCP6:[::1]:9464"]);
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    common::promtool_check(metrics.split_once("\r\n\r\n").map_or("", |(_, b)| b));
    let wire_metric = metrics
        .lines()
        .find(|l| {
            l.starts_with("srv6pipes_stream_bytes_total{") && l.contains("op=decompress") && l.contains("direction=\"forward\",side=\"in\"")
        })
        .unwrap_or_else(|| panic!("no stream byte counter in n2's metrics:\n{metrics}"));
    assert_eq!(wire_metric.rsplit(' ').next(), Some(wire.to_string().as_str()), "{wire_metric}");

    // Closed domain: the client addresses a proxy's stream SID directly: dropped at its node.
    let sid = st["chains"].as_array().unwrap().iter().find(|c| c["metadata"]["name"] == "squeeze").unwrap()["status"]["hops"][1]
        ["replicas"][0]["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let before = drops(&lab).iter().filter(|(_, r, _)| r == "closed_domain").map(|d| d.2).sum::<u64>();
    let out = lab.exec("client", &["socat", "-u", "-", &format!("TCP6:[{sid}]:9000,connect-timeout=2")]);
    assert!(!out.status.success(), "a pod reached stream SID {sid}");
    let after: Vec<_> = drops(&lab);
    assert!(after.iter().filter(|(_, r, _)| r == "closed_domain").map(|d| d.2).sum::<u64>() > before, "{after:?}");
    assert!(after.iter().all(|(_, r, _)| r == "closed_domain"), "srv6pipes dropped nothing else: {after:?}");
}

/// TCP's ends through two proxies (compress / decompress): a half-closed client still gets the
/// server's answer; a server's reset reaches the client as a reset; a refused onward connection
/// resets the client (the proxy had answered its SYN), and a stray segment gets a reset;
/// 1,000 connections at once all complete,
/// and 300 through a proxy losing 5 % of its packets.
#[test]
fn tcp_semantics_hold_end_to_end_through_the_proxies() {
    require_lab!("nft", "ss", "python3");
    let lab = pipes("tcp");
    let st = lab.status();
    let server6 = pod_ip(&st, "server", true);
    let server4 = pod_ip(&st, "server", false);
    let srv = serve(&lab, 9000, &["reply"]);
    for s in [&server6, &server4] {
        assert_eq!(client(&lab, &["half-close", &target(s, 9000), "300000"]), "reply got 300000", "to {s}");
    }
    let many = client(&lab, &["concurrent", &target(&server6, 9000), "1000"]);
    let v: Value = serde_json::from_str(&many).unwrap();
    if v["failed"] != 0 {
        // The proxies report their counters each second: wait for a report after the failures.
        std::thread::sleep(Duration::from_millis(1500));
    }
    assert_eq!((v["ok"].as_u64(), v["failed"].as_u64()), (Some(1000), Some(0)), "{many}; proxies: {}", lab.status()["streams"]);
    // 5 % of pipes-a's packets lost (both directions leave by its one interface): every
    // connection still gets its whole answer and a FIN. A proxy's relay that ended cleanly must
    // not discard the last bytes it has not had acknowledged yet.
    {
        let _loss = Loss::on(&lab, "pipes-a");
        let lossy = client(&lab, &["concurrent", &target(&server6, 9000), "300"]);
        let v: Value = serde_json::from_str(&lossy).unwrap();
        if v["failed"] != 0 {
            std::thread::sleep(Duration::from_millis(1500));
        }
        assert_eq!(
            (v["ok"].as_u64(), v["failed"].as_u64()),
            (Some(300), Some(0)),
            "through a lossy proxy: {lossy}; proxies: {}",
            lab.status()["streams"]
        );
    }
    stop(&lab, srv, 9000);

    let srv = serve(&lab, 9000, &["reset-after", "6"]);
    assert!(client(&lab, &["expect-end", &target(&server6, 9000)]).starts_with("reset"), "the server's reset reaches the client");
    stop(&lab, srv, 9000);
    // Nobody listens: the proxy already answered the client's SYN, so the client gets a reset.
    assert!(client(&lab, &["expect-end", &target(&server6, 9000)]).starts_with("reset"), "a refusal reaches the client as a reset");
    wait_for("the refusal counted", Duration::from_secs(5), || {
        proxy_counters(&lab, "pipes-b", "compress")["errors"]["connect_refused"].as_u64().unwrap_or(0) >= 1
    });
    // A stray segment (an ACK of no connection, as after a proxy restarted) is answered with a
    // reset by the first proxy's own stack: out of its chain interface, as its sockets send, even
    // though the reset carries the mark of what the node delivered (fwmark_reflect, which
    // srv6pipes-cni turns on for End.AD functions' replies).
    let stray = "import socket,struct,sys,time\n\
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP)\n\
        s.setsockopt(socket.IPPROTO_IPV6, 7, 16)\n\
        s.settimeout(3)\n\
        s.sendto(struct.pack('!HHIIBBHHH', 45678, 9000, 1000, 2000, 0x50, 0x10, 65535, 0, 0), (sys.argv[1], 0))\n\
        end = time.time() + 3\n\
        while time.time() < end:\n    \
            try:\n        d = s.recv(2048)\n    except socket.timeout:\n        break\n    \
            if struct.unpack('!HH', d[:4]) == (9000, 45678):\n        print('flags %#x' % d[13])\n        sys.exit()\n\
        print('no answer')\n";
    let out = lab.exec("client", &["python3", "-c", stray, &server6]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "flags 0x4", "{}", String::from_utf8_lossy(&out.stderr));

    // A client that gives up on a slow answer (its FIN, then a reset) and asks again at once from
    // the same address and port: the proxies let the first connection go with its reset (not
    // when the server answers, 3 s later), so the second one connects onward from that port too.
    let srv = serve(&lab, 9000, &["slow-reply", "3"]);
    assert_eq!(client(&lab, &["give-up-and-return", &target(&server6, 9000)]), "reply got 1024", "proxies: {}", lab.status()["streams"]);
    stop(&lab, srv, 9000);

    // SIGTERM: the proxy stops accepting (a new connection is refused) and lets the running one
    // finish (it ends cleanly: drained, not reset), then exits.
    let srv = serve(&lab, 9000, &["reply"]);
    let trickle = Proc::spawn(tcpcheck_in(&lab, "client", &["trickle", &target(&server6, 9000), "4"]));
    wait_for("the transfer through pipes-a", Duration::from_secs(10), || proxy_counters(&lab, "pipes-a", "compress")["active"] == 1);
    let pid = st["pods"].as_array().unwrap().iter().find(|p| p["name"] == "pipes-a").unwrap()["pid"].as_u64().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    wait_for("pipes-a to close its listeners", Duration::from_secs(5), || lab.exec("pipes-a", &["ss", "-Hltn"]).stdout.is_empty());
    let refused = tcpcheck_in(&lab, "client", &["half-close", &target(&server6, 9000), "10"]).output().unwrap();
    assert!(!refused.status.success(), "a draining proxy accepts nothing new: {}", String::from_utf8_lossy(&refused.stdout));
    let end = trickle.output();
    assert!(end.starts_with("eof"), "the running connection finished cleanly: {end}");
    wait_for("the drained proxy to exit", Duration::from_secs(10), || {
        lab.status()["pods"].as_array().unwrap().iter().any(|p| p["name"] == "pipes-a" && p["running"] == false)
    });
    stop(&lab, srv, 9000);
}

/// Two replicas of the decompressing proxy (n2 and n3). One is killed (SIGKILL) mid-transfer:
/// both the client and the server see a reset, never a clean end; once the lab reprograms
/// (the pod is not ready), new connections take the other replica.
#[test]
fn a_killed_proxy_resets_its_connections_and_its_replica_takes_new_ones() {
    require_lab!("nft", "ss");
    let lab = pipes("kill");
    let replica = r#"apiVersion: v1
kind: Pod
metadata:
  name: pipes-b-1
  labels: {app: pipes-b}
  annotations: {k8s.v1.cni.cncf.io/networks: srv6pipes}
spec:
  nodeName: n3
  containers: [{name: proxy, image: localhost/srv6pipes-stream, command: ["srv6pipes-stream"]}]
"#;
    let out = lab.run_yaml("apply", replica);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the replica's listeners", Duration::from_secs(10), || {
        String::from_utf8_lossy(&lab.exec("pipes-b-1", &["ss", "-Hltn"]).stdout).matches(":4000").count() >= 2
    });
    let st = lab.status();
    let server6 = pod_ip(&st, "server", true);
    let watch = serve(&lab, 9000, &["watch"]);
    let trickle = Proc::spawn(tcpcheck_in(&lab, "client", &["trickle", &target(&server6, 9000), "20"]));
    // The replica relaying the connection.
    let mut busy = String::new();
    wait_for("a replica relaying the transfer", Duration::from_secs(10), || {
        let st = lab.status();
        let active = st["streams"].as_array().unwrap().iter().find(|s| {
            s["pod"].as_str().unwrap_or_default().starts_with("default/pipes-b")
                && s["function"].as_str().unwrap_or_default().contains("decompress")
                && s["active"] == 1
        });
        busy = active.map(|s| s["pod"].as_str().unwrap().trim_start_matches("default/").to_string()).unwrap_or_default();
        !busy.is_empty()
    });
    let pid = st["pods"].as_array().unwrap().iter().find(|p| p["name"] == busy.as_str()).unwrap()["pid"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    let (client_end, server_end) = (trickle.output(), watch.output());
    assert!(client_end.starts_with("reset"), "the client's end: {client_end}");
    assert!(server_end.starts_with("reset"), "the server's end (never a clean EOF): {server_end}");

    // The lab reprograms (the killed pod is not ready): new connections take the other replica.
    let examples = std::fs::read_to_string(repo_root().join("examples/lab-pipes.yaml")).unwrap();
    let chain = examples.split("\n---\n").find(|d| d.contains("name: squeeze")).unwrap();
    let out = lab.run_yaml("apply", chain);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st = lab.status();
    let hops = &st["chains"].as_array().unwrap().iter().find(|c| c["metadata"]["name"] == "squeeze").unwrap()["status"]["hops"];
    assert_eq!(hops[2]["replicas"].as_array().unwrap().len(), 1, "the killed replica is out: {hops}");
    let srv = serve(&lab, 9000, &["reply"]);
    for _ in 0..10 {
        assert_eq!(client(&lab, &["half-close", &target(&server6, 9000), "10000"]), "reply got 10000");
    }
    stop(&lab, srv, 9000);
}
