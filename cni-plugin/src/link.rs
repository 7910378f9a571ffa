//! The veth between the node and the VNF pod, and the pod-side routing that sends whatever the
//! VNF forwards back out of its chain interface.

use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::NeighbourState;
use netlink_packet_route::rule::{RuleAction, RuleAttribute};
use rtnetlink::{Handle, IpVersion, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde_json::Value;
use srv6::node_api::{self, Attachment, CallError, Request, Response};

use crate::cni::{add_result, CniError, Env, NetConf, CODE_INVALID_ENV, CODE_TRY_AGAIN_LATER};

/// The node-side address the VNF forwards to; a permanent neighbour entry pins it to the
/// node-side MAC, so nothing depends on neighbour discovery across the proxy.
const GATEWAY: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const RULE_PRIORITY: u32 = 100;
const DAEMON_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Runs `f` with a netlink handle inside the network namespace `ns` (setns is per thread, so
/// a dedicated thread enters it; the caller's namespace is untouched).
fn in_netns<T: Send + 'static>(
    ns: &OwnedFd,
    f: impl FnOnce(Handle) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, CniError>>>> + Send + 'static,
) -> Result<T, CniError> {
    let fd = ns.try_clone().map_err(|e| CniError::io(format!("dup netns fd: {e}")))?;
    std::thread::spawn(move || {
        nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| CniError::io(format!("enter pod netns: {e}")))?;
        rt().block_on(async move { f(connect()?).await })
    })
    .join()
    .map_err(|_| CniError::io("pod netns worker panicked"))?
}

fn open_netns(path: &str) -> Result<OwnedFd, CniError> {
    let f = std::fs::File::open(path).map_err(|e| CniError::env(format!("CNI_NETNS {path}: {e}")))?;
    // A path that is not a network namespace must not be entered.
    let st = nix::sys::statfs::fstatfs(&f).map_err(|e| CniError::env(format!("CNI_NETNS {path}: {e}")))?;
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    if st.filesystem_type().0 as i64 != NSFS_MAGIC {
        return Err(CniError::env(format!("CNI_NETNS {path} is not a network namespace")));
    }
    Ok(OwnedFd::from(f))
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, CniError> {
    match h.link().get().match_name(name.to_string()).execute().try_next().await {
        Ok(l) => Ok(l),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(CniError::io(format!("get link {name}: {e}"))),
    }
}

fn mac_of(l: &LinkMessage) -> String {
    l.attributes
        .iter()
        .find_map(|a| if let LinkAttribute::Address(m) = a { Some(m.clone()) } else { None })
        .unwrap_or_default()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn nl(what: &'static str) -> impl Fn(rtnetlink::Error) -> CniError {
    move |e| CniError::io(format!("{what}: {e}"))
}

pub fn add(conf: &NetConf, env: &Env) -> Result<Value, CniError> {
    let ns = open_netns(&env.netns)?;
    let host = host_ifname(&env.container_id, &env.ifname);
    let temp = format!("spt{:08x}", short_hash(&env.container_id, &env.ifname));
    let (host_mac, pod_mac) = match create(conf, env, &ns, &host, &temp) {
        Ok(macs) => macs,
        Err(e) => {
            // Nothing half-made stays behind: the host end takes its peer with it.
            let _ = rt().block_on(async { delete_link(&connect()?, &host).await });
            return Err(e);
        }
    };
    let req = Request::Register(Attachment {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: env.netns.clone(),
        host_ifname: host.clone(),
        pod_namespace: env.pod_namespace.clone(),
        pod_name: env.pod_name.clone(),
        vnf_mac: pod_mac.clone(),
        host_mac: host_mac.clone(),
    });
    match node_api::call(Path::new(&conf.socket), &req, DAEMON_TIMEOUT) {
        Ok(Response::Registered { .. }) => {}
        other => {
            let _ = rt().block_on(async { delete_link(&connect()?, &host).await });
            return Err(daemon_error(other.map(|_| ())));
        }
    }
    Ok(add_result(conf, (&host, &host_mac), (&env.ifname, &pod_mac, &env.netns)))
}

fn daemon_error(r: Result<(), CallError>) -> CniError {
    match r {
        Err(e @ CallError::Unreachable { .. }) => CniError::new(CODE_TRY_AGAIN_LATER, e.to_string()),
        Err(e) => CniError::io(e.to_string()),
        Ok(()) => CniError::io("node daemon gave an unexpected answer"),
    }
}

/// Creates the veth, moves the peer into the pod and configures both ends.
fn create(conf: &NetConf, env: &Env, ns: &OwnedFd, host: &str, temp: &str) -> Result<(String, String), CniError> {
    let mtu = conf.mtu;
    let raw_ns = ns.as_raw_fd();
    let host_mac = rt().block_on(async {
        let h = connect()?;
        if link_by_name(&h, host).await?.is_some() {
            return Err(CniError::new(CODE_INVALID_ENV, format!("interface {host} already exists on the node (ADD twice?)")));
        }
        h.link().add(LinkVeth::new(host, temp).mtu(mtu).build()).execute().await.map_err(nl("create veth"))?;
        let peer = link_by_name(&h, temp).await?.ok_or_else(|| CniError::io("veth peer vanished"))?;
        h.link()
            .set(LinkUnspec::new_with_index(peer.header.index).setns_by_fd(raw_ns).build())
            .execute()
            .await
            .map_err(nl("move veth peer into the pod"))?;
        let hl = link_by_name(&h, host).await?.ok_or_else(|| CniError::io("veth vanished"))?;
        h.link().set(LinkUnspec::new_with_index(hl.header.index).up().build()).execute().await.map_err(nl("set host veth up"))?;
        Ok(mac_of(&hl))
    })?;
    let (temp, ifname, gw_mac) = (temp.to_string(), env.ifname.clone(), host_mac.clone());
    let mtu = conf.mtu;
    let pod_mac = in_netns(ns, move |h| {
        Box::pin(async move {
            if link_by_name(&h, &ifname).await?.is_some() {
                return Err(CniError::new(CODE_INVALID_ENV, format!("interface {ifname} already exists in the pod")));
            }
            let l = link_by_name(&h, &temp).await?.ok_or_else(|| CniError::io("veth peer missing in the pod"))?;
            let idx = l.header.index;
            h.link().set(LinkUnspec::new_with_index(idx).name(ifname.clone()).mtu(mtu).up().build()).execute().await.map_err(nl("rename pod interface"))?;
            // The VNF is a router for chain traffic (SR-unaware: it just forwards).
            for key in ["net/ipv6/conf/all/forwarding", "net/ipv4/ip_forward"] {
                std::fs::write(format!("/proc/sys/{key}"), "1").map_err(|e| CniError::io(format!("sysctl {key}: {e}")))?;
            }
            let mac: Vec<u8> = gw_mac.split(':').filter_map(|b| u8::from_str_radix(b, 16).ok()).collect();
            h.neighbours()
                .add(idx, IpAddr::V6(GATEWAY))
                .link_layer_address(&mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(nl("add gateway neighbour"))?;
            let table = table_for(&ifname);
            let route = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
                .gateway(GATEWAY)
                .output_interface(idx)
                .table_id(table)
                .build();
            h.route().add(route).replace().execute().await.map_err(nl("add chain route"))?;
            h.rule()
                .add()
                .v6()
                .input_interface(ifname.clone())
                .table_id(table)
                .action(RuleAction::ToTable)
                .priority(RULE_PRIORITY)
                .execute()
                .await
                .map_err(nl("add chain rule"))?;
            let l = link_by_name(&h, &ifname).await?.ok_or_else(|| CniError::io("pod interface vanished"))?;
            Ok(mac_of(&l))
        })
    })?;
    Ok((host_mac, pod_mac))
}

async fn delete_link(h: &Handle, name: &str) -> Result<(), CniError> {
    let Some(l) = link_by_name(h, name).await? else { return Ok(()) };
    match h.link().del(l.header.index).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
        Err(e) => Err(CniError::io(format!("delete {name}: {e}"))),
    }
}

/// DEL: idempotent. Deregisters the SID first (so no traffic is steered into a dying link),
/// then removes the pod-side rule and the veth. Missing pieces are not errors.
pub fn del(conf: &NetConf, env: &Env) -> Result<(), CniError> {
    let req = Request::Unregister { container_id: env.container_id.clone(), ifname: env.ifname.clone() };
    match node_api::call(Path::new(&conf.socket), &req, DAEMON_TIMEOUT) {
        Ok(_) => {}
        Err(e) => return Err(daemon_error(Err(e))),
    }
    if !env.netns.is_empty() {
        if let Ok(ns) = open_netns(&env.netns) {
            let ifname = env.ifname.clone();
            in_netns(&ns, move |h| Box::pin(async move { delete_rules(&h, &ifname).await }))?;
        }
    }
    rt().block_on(async { delete_link(&connect()?, &host_ifname(&env.container_id, &env.ifname)).await })
}

async fn delete_rules(h: &Handle, ifname: &str) -> Result<(), CniError> {
    let rules: Vec<_> = h.rule().get(IpVersion::V6).execute().try_collect().await.map_err(nl("list rules"))?;
    for r in rules {
        let ours = r.attributes.iter().any(|a| matches!(a, RuleAttribute::Iifname(n) if n == ifname))
            && r.attributes.iter().any(|a| matches!(a, RuleAttribute::Table(t) if *t == table_for(ifname)));
        if ours {
            h.rule().del(r).execute().await.map_err(nl("delete chain rule"))?;
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
