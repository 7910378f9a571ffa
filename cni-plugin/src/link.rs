//! Netlink in the node's and the pod's namespaces, the node daemon's socket, and DEL, CHECK and
//! GC of the veth(s) between the node and the VNF pod (ADD is `add.rs`).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::rule::{RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion};
use srv6::node_api::{self, AttachmentKey, CallError, Request, Response};

use crate::cni::{CniError, Env, NetConf, CODE_TRY_AGAIN_LATER};
use crate::ipam;

/// The node-side address the VNF forwards to; a permanent neighbour entry pins it to the
/// node-side MAC, so nothing depends on neighbour discovery across the proxy.
pub const GATEWAY: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The same for IPv4 inner traffic: a link-local next hop reached on-link.
pub const GATEWAY4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const RULE_PRIORITY: u32 = 100;
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(10);

/// Node-side veth name: stable for (container, ifname), at most 15 bytes.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    format!("sp{:08x}", short_hash(container_id, ifname))
}

/// The pod's routing table for traffic arriving on `ifname`.
pub fn table_for(ifname: &str) -> u32 {
    0x5336_0000 | (short_hash("table", ifname) & 0xffff)
}

fn short_hash(a: &str, b: &str) -> u32 {
    // FNV-1a: stable across Rust releases, unlike DefaultHasher.
    let mut h: u32 = 0x811c_9dc5;
    for byte in a.bytes().chain([0]).chain(b.bytes()) {
        h = (h ^ byte as u32).wrapping_mul(0x0100_0193);
    }
    h
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

fn connect() -> Result<Handle, CniError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| CniError::io(format!("netlink socket: {e}")))?;
    tokio::spawn(conn);
    Ok(handle)
}

type NsFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, CniError>>>>;

/// Runs `f` with a netlink handle inside the network namespace `ns` (setns is per thread, so
/// a dedicated thread enters it; the caller's namespace is untouched).
pub fn in_netns<T: Send + 'static>(ns: &OwnedFd, f: impl FnOnce(Handle) -> NsFuture<T> + Send + 'static) -> Result<T, CniError> {
    spawn_in_netns(ns, move |rt, h| rt.block_on(f(h)))?.join().map_err(|_| CniError::io("pod netns worker panicked"))??
}

/// A thread in the network namespace `ns` that runs `f` with a runtime and a netlink handle
/// there, for the caller to join when it needs the result.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &OwnedFd,
    f: impl FnOnce(&tokio::runtime::Runtime, Handle) -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T, CniError>>, CniError> {
    let fd = ns.try_clone().map_err(|e| CniError::io(format!("dup netns fd: {e}")))?;
    Ok(std::thread::spawn(move || {
        nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| CniError::io(format!("enter pod netns: {e}")))?;
        let rt = rt();
        let h = rt.block_on(async { connect() })?;
        Ok(f(&rt, h))
    }))
}

/// In the node's netns (the plugin's own).
pub fn on_node<T>(f: impl AsyncFnOnce(&Handle) -> Result<T, CniError>) -> Result<T, CniError> {
    rt().block_on(async {
        let h = connect()?;
        f(&h).await
    })
}

pub fn open_netns(path: &str) -> Result<OwnedFd, CniError> {
    let f = std::fs::File::open(path).map_err(|e| CniError::env(format!("CNI_NETNS {path}: {e}")))?;
    // A path that is not a network namespace must not be entered.
    let st = nix::sys::statfs::fstatfs(&f).map_err(|e| CniError::env(format!("CNI_NETNS {path}: {e}")))?;
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    if st.filesystem_type().0 as i64 != NSFS_MAGIC {
        return Err(CniError::env(format!("CNI_NETNS {path} is not a network namespace")));
    }
    Ok(OwnedFd::from(f))
}

pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, CniError> {
    match h.link().get().match_name(name.to_string()).execute().try_next().await {
        Ok(l) => Ok(l),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(CniError::io(format!("get link {name}: {e}"))),
    }
}

fn mac_of(l: &LinkMessage) -> String {
    let bytes = l.attributes.iter().find_map(|a| if let LinkAttribute::Address(m) = a { Some(m.as_slice()) } else { None });
    node_api::format_mac(bytes.unwrap_or_default())
}

pub fn nl(what: &'static str) -> impl Fn(rtnetlink::Error) -> CniError {
    move |e| CniError::io(format!("{what}: {e}"))
}

pub fn daemon_error(e: CallError) -> CniError {
    match e {
        e @ CallError::Unreachable { .. } => CniError::new(CODE_TRY_AGAIN_LATER, e.to_string()),
        e => CniError::io(e.to_string()),
    }
}

pub fn call(conf: &NetConf, req: &Request) -> Result<Response, CniError> {
    node_api::call(Path::new(&conf.socket), req, DAEMON_TIMEOUT).map_err(daemon_error)
}

pub async fn delete_link(h: &Handle, name: &str) -> Result<(), CniError> {
    let Some(l) = link_by_name(h, name).await? else { return Ok(()) };
    match h.link().del(l.header.index).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
        Err(e) => Err(CniError::io(format!("delete {name}: {e}"))),
    }
}

/// DEL: idempotent. Deregisters the SID first (so no traffic is steered into a dying link),
/// then removes the pod-side rule and the veth(s), while IPAM releases the lease. Missing pieces
/// are fine. What is local goes whatever the daemon answered; a daemon's refusal is then the
/// answer, so that the runtime tries DEL again.
pub fn del(conf: &NetConf, env: &Env) -> Result<(), CniError> {
    let pod_if = conf.pod_ifname(&env.ifname)?;
    let names: Vec<String> = std::iter::once(pod_if.clone()).chain(conf.out_ifname(&pod_if)?).collect();
    // The IPAM plugin's DEL (a process of its own) runs beside the rest; one that cannot even
    // start (its binary gone from CNI_PATH) holds up nothing local, and is the answer after.
    let ipam = conf.ipam.as_ref().map(|i| ipam::start(conf, i, "DEL", None)).transpose();
    let deregistered = unregister(conf, env);
    let mut local = Ok(());
    if !env.netns.is_empty() {
        if let Ok(ns) = open_netns(&env.netns) {
            local = in_netns(&ns, move |h| Box::pin(async move { delete_rules(&h, &pod_if).await }));
        }
    }
    let links = on_node(async |h| {
        for n in &names {
            delete_link(h, &host_ifname(&env.container_id, n)).await?;
        }
        Ok(())
    });
    let released = ipam.and_then(|i| i.map(ipam::Running::wait).transpose());
    deregistered.and(local).and(links).and(released).map(|_| ())
}

/// The daemon forgets the attachment first, so no traffic is steered into a dying link.
fn unregister(conf: &NetConf, env: &Env) -> Result<(), CniError> {
    let socket = Path::new(&conf.socket);
    let unregister = Request::Unregister { container_id: env.container_id.clone(), ifname: env.ifname.clone() };
    match node_api::call(socket, &unregister, DAEMON_TIMEOUT) {
        Ok(_) => Ok(()),
        Err(e @ CallError::Refused(_)) => Err(daemon_error(e)),
        // DEL never waits on the daemon (pods must not hang in Terminating while it restarts,
        // crash-loops or hangs): what is local goes now, and the deregistration is queued
        // beside the socket for the daemon to apply when it is back (a restarted daemon also
        // releases the registrations whose interfaces are gone; releasing twice is a no-op,
        // should the request it did not answer be served after all). No socket at all:
        // srv6pipes was uninstalled from this node, nothing holds a registration.
        Err(e) => {
            if socket.exists() {
                eprintln!("srv6pipes-cni: DEL of {}/{}: {e}; deregistration queued", env.container_id, env.ifname);
                node_api::queue_deregistration(socket, &env.container_id, &env.ifname)
                    .map_err(|e| CniError::io(format!("queue the deregistration beside {}: {e}", socket.display())))?;
            }
            Ok(())
        }
    }
}

pub async fn delete_rules(h: &Handle, ifname: &str) -> Result<(), CniError> {
    for r in our_rules(h, ifname).await? {
        match h.rule().del(r).execute().await {
            // Gone meanwhile (a DEL beside this one, or an ADD's undo): what was wanted.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT => {}
            done => done.map_err(nl("delete chain rule"))?,
        }
    }
    Ok(())
}

async fn our_rules(h: &Handle, ifname: &str) -> Result<Vec<RuleMessage>, CniError> {
    let mut rules: Vec<_> = h.rule().get(IpVersion::V6).execute().try_collect().await.map_err(nl("list rules"))?;
    let v4: Vec<_> = h.rule().get(IpVersion::V4).execute().try_collect().await.map_err(nl("list rules"))?;
    rules.extend(v4);
    Ok(rules
        .into_iter()
        .filter(|r| {
            r.attributes.iter().any(|a| matches!(a, RuleAttribute::Table(t) if *t == table_for(ifname)))
                && (by_interface(r, ifname) || r.attributes.iter().any(is_reply_mark))
        })
        .collect())
}

/// A chain rule of `ifname`'s that matches what arrives on it (the others match the replies to
/// it, by their mark).
fn by_interface(r: &RuleMessage, ifname: &str) -> bool {
    r.attributes.iter().any(|a| matches!(a, RuleAttribute::Iifname(n) if n == ifname))
}

fn is_reply_mark(a: &RuleAttribute) -> bool {
    matches!(a, RuleAttribute::FwMark(m) if m & srv6::node_api::REPLY_MARK_MASK == srv6::node_api::REPLY_MARK)
}

/// CHECK (SPEC 0.4+): the attachment is what ADD made — registered with the node daemon, both
/// veth ends present with the MACs of prevResult, the pod-side rule in place; IPAM checks too.
pub fn check(conf: &NetConf, env: &Env) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| CniError::config("CHECK needs prevResult"))?;
    let Response::Attachment { attachment, .. } =
        call(conf, &Request::Lookup { container_id: env.container_id.clone(), ifname: env.ifname.clone() }).map_err(|e| {
            if e.code == CODE_TRY_AGAIN_LATER {
                e
            } else {
                CniError::check(e.msg)
            }
        })?
    else {
        return Err(CniError::check("node daemon gave an unexpected answer"));
    };
    let expected_mac = |name: &str, sandbox: bool| -> Option<String> {
        prev["interfaces"].as_array()?.iter().find(|i| i["name"] == name && i["sandbox"].is_string() == sandbox)?["mac"]
            .as_str()
            .map(str::to_string)
    };
    // (node side, its MAC as registered, pod side): the inbound interface, and a pair's
    // outbound one.
    let pod_if = conf.pod_ifname(&env.ifname)?;
    let mut ends = vec![(attachment.host_ifname.clone(), attachment.host_mac.clone(), pod_if.clone())];
    if let Some(out) = &attachment.out {
        ends.push((out.host_ifname.clone(), out.host_mac.clone(), out.ifname.clone()));
    }
    let mut host_indexes = Vec::new();
    for (host, registered, _) in &ends {
        let name = host.clone();
        let (index, host_mac) = on_node(async move |h| Ok(link_by_name(h, &name).await?.map(|l| (l.header.index, mac_of(&l)))))?
            .ok_or_else(|| CniError::check(format!("node-side interface {host} is missing")))?;
        if expected_mac(host, false).is_some_and(|m| m != host_mac) || &host_mac != registered {
            return Err(CniError::check(format!("{host} has MAC {host_mac}, not the one ADD gave it ({registered})")));
        }
        host_indexes.push(index);
    }
    // The replies' rules carry the mark of the node end the datapath delivers on: the inbound's.
    let reply_mark = srv6::node_api::reply_mark(host_indexes[0]);
    let ns = open_netns(&env.netns)?;
    let pod_ifs: Vec<String> = ends.iter().map(|(_, _, pod)| pod.clone()).collect();
    let ifname = pod_if.clone();
    let (pod_macs, (by_iif, by_mark, rules), reflect) = in_netns(&ns, move |h| {
        Box::pin(async move {
            let mut macs = Vec::new();
            for name in &pod_ifs {
                macs.push((name.clone(), link_by_name(&h, name).await?.map(|l| mac_of(&l))));
            }
            let rules = our_rules(&h, &ifname).await?;
            let marked = |r: &&RuleMessage| r.attributes.iter().any(|a| matches!(a, RuleAttribute::FwMark(m) if *m == reply_mark));
            let reflect = std::fs::read_to_string("/proc/sys/net/ipv6/fwmark_reflect").is_ok_and(|v| v.trim() == "1");
            let counts = (rules.iter().filter(|r| by_interface(r, &ifname)).count(), rules.iter().filter(marked).count(), rules.len());
            Ok((macs, counts, reflect))
        })
    })?;
    for (i, (name, mac)) in pod_macs.into_iter().enumerate() {
        let mac = mac.ok_or_else(|| CniError::check(format!("{name} is missing in the pod")))?;
        // The inbound interface is the VNF's registered one.
        if expected_mac(&name, true).is_some_and(|m| m != mac) || (i == 0 && mac != attachment.vnf_mac) {
            return Err(CniError::check(format!("{name} has MAC {mac}, not the one ADD gave it")));
        }
    }
    // By interface and by reply mark, IPv6 and IPv4; by interface only where an older plugin
    // made the attachment (it left fwmark_reflect off).
    let older = rules == 2 && !reflect;
    if by_iif != 2 || !(older || (by_mark == 2 && rules == 4)) {
        return Err(CniError::check(format!(
            "the pod has {rules} chain rules for {pod_if} ({by_iif} by interface, {by_mark} by reply mark {reply_mark:#x}), expected \
             4: by interface and by reply mark, IPv6 and IPv4"
        )));
    }
    if let Some(i) = &conf.ipam {
        ipam::delegate(conf, i, "CHECK", None)?;
    }
    Ok(())
}

/// GC (SPEC 1.1): the node daemon releases this network's attachments that the runtime no
/// longer lists; their node-side veths go (the pod side went with the sandbox or goes now).
pub fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid = conf
        .valid_attachments()?
        .iter()
        .map(|a| AttachmentKey { container_id: a.container_id.clone(), ifname: a.ifname.clone() })
        .collect();
    let Response::Released { attachments } = call(conf, &Request::Gc { network: conf.name.clone(), valid })? else {
        return Err(CniError::io("node daemon gave an unexpected answer to GC"));
    };
    // Every released attachment's veths are tried; the first failure is the answer.
    on_node(async |h| {
        let mut first = Ok(());
        for a in &attachments {
            for name in std::iter::once(&a.host_ifname).chain(a.out.as_ref().map(|o| &o.host_ifname)) {
                if let Err(e) = delete_link(h, name).await {
                    eprintln!("srv6pipes-cni: GC of {}/{}: {}", a.container_id, a.ifname, e.msg);
                    first = first.and(Err(e));
                }
            }
        }
        first
    })?;
    if let Some(i) = &conf.ipam {
        // IPAM plugins older than SPEC 1.1 do not know GC: their leases stay theirs to manage.
        if let Err(e) = ipam::delegate(conf, i, "GC", None) {
            eprintln!("srv6pipes-cni: IPAM GC: {}", e.msg);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_short_and_distinct() {
        let a = host_ifname("abc", "net1");
        assert!(a.len() <= 15);
        assert_eq!(a, host_ifname("abc", "net1"));
        assert_ne!(a, host_ifname("abc", "net2"));
        assert_ne!(a, host_ifname("abd", "net1"));
        assert_ne!(table_for("net1"), table_for("net2"));
        assert_eq!(table_for("net1") >> 16, 0x5336);
    }
}
