//! The veth(s) between the node and the VNF pod, and the pod-side routing that sends whatever
//! the VNF forwards back out of its chain interface (or out of the pair's outbound interface).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::NeighbourState;
use netlink_packet_route::rule::{RuleAction, RuleAttribute};
use rtnetlink::{Handle, IpVersion, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde_json::Value;
use srv6::node_api::{self, Attachment, AttachmentKey, CallError, OutInterface, Request, Response};

use crate::cni::{add_result, CniError, Env, Iface, NetConf, CODE_INVALID_ENV, CODE_TRY_AGAIN_LATER};
use crate::ipam;

/// The node-side address the VNF forwards to; a permanent neighbour entry pins it to the
/// node-side MAC, so nothing depends on neighbour discovery across the proxy.
const GATEWAY: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The same for IPv4 inner traffic: a link-local next hop reached on-link.
const GATEWAY4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const RULE_PRIORITY: u32 = 100;
const DAEMON_TIMEOUT: Duration = Duration::from_secs(10);

/// Node-side veth name: stable for (container, ifname), at most 15 bytes.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    format!("sp{:08x}", short_hash(container_id, ifname))
}

fn temp_ifname(container_id: &str, ifname: &str) -> String {
    format!("spt{:08x}", short_hash(container_id, ifname))
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
fn in_netns<T: Send + 'static>(ns: &OwnedFd, f: impl FnOnce(Handle) -> NsFuture<T> + Send + 'static) -> Result<T, CniError> {
    let fd = ns.try_clone().map_err(|e| CniError::io(format!("dup netns fd: {e}")))?;
    std::thread::spawn(move || {
        nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| CniError::io(format!("enter pod netns: {e}")))?;
        rt().block_on(async move { f(connect()?).await })
    })
    .join()
    .map_err(|_| CniError::io("pod netns worker panicked"))?
}

/// In the node's netns (the plugin's own).
fn on_node<T>(f: impl AsyncFnOnce(&Handle) -> Result<T, CniError>) -> Result<T, CniError> {
    rt().block_on(async {
        let h = connect()?;
        f(&h).await
    })
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
    let bytes = l.attributes.iter().find_map(|a| if let LinkAttribute::Address(m) = a { Some(m.as_slice()) } else { None });
    node_api::format_mac(bytes.unwrap_or_default())
}

fn nl(what: &'static str) -> impl Fn(rtnetlink::Error) -> CniError {
    move |e| CniError::io(format!("{what}: {e}"))
}

fn daemon_error(e: CallError) -> CniError {
    match e {
        e @ CallError::Unreachable { .. } => CniError::new(CODE_TRY_AGAIN_LATER, e.to_string()),
        e => CniError::io(e.to_string()),
    }
}

pub fn call(conf: &NetConf, req: &Request) -> Result<Response, CniError> {
    node_api::call(Path::new(&conf.socket), req, DAEMON_TIMEOUT).map_err(daemon_error)
}

/// One veth made by ADD: (pod-side name, node-side name, node-side MAC, pod-side MAC).
struct Veth {
    pod: String,
    host: String,
    host_mac: String,
    pod_mac: String,
}

pub fn add(conf: &NetConf, env: &Env) -> Result<Value, CniError> {
    let ns = open_netns(&env.netns)?;
    let pod_if = conf.pod_ifname(&env.ifname)?;
    let names: Vec<String> = std::iter::once(pod_if.clone()).chain(conf.out_ifname(&pod_if)?).collect();
    // A second ADD for a live attachment (same container and interface, no DEL between: CNI
    // SPEC §"ADD", which allows a plugin to refuse it) fails before anything is touched: the
    // clean-up below is for what this ADD made, never the attachment that is already there.
    let live: Vec<String> = on_node(async |h| {
        let mut live = Vec::new();
        for n in &names {
            let host = host_ifname(&env.container_id, n);
            if link_by_name(h, &host).await?.is_some() {
                live.push(host);
            }
        }
        Ok(live)
    })?;
    if !live.is_empty() {
        return Err(CniError::new(
            CODE_INVALID_ENV,
            format!(
                "container {} already has {} on this network (node side {}): a second ADD without DEL; nothing changed",
                env.container_id,
                env.ifname,
                live.join(", ")
            ),
        ));
    }
    let mtu = match conf.mtu {
        Some(m) => m,
        None => match call(conf, &Request::Sids)? {
            Response::Sids(s) if s.vnf_mtu >= 1280 => s.vnf_mtu,
            Response::Sids(s) => return Err(CniError::config(format!("node {} reports no chain MTU: set mtu", s.node))),
            other => return Err(CniError::io(format!("unexpected answer from the node daemon: {other:?}"))),
        },
    };
    let ipam_result = match &conf.ipam {
        Some(i) => ipam::delegate(conf, i, "ADD", None)?,
        None => None,
    };
    let made = create(env, &ns, &names, mtu, ipam_result.as_ref()).and_then(|veths| {
        let out = veths.get(1).map(|v| OutInterface { ifname: v.pod.clone(), host_ifname: v.host.clone(), host_mac: v.host_mac.clone() });
        let req = Request::Register(Attachment {
            network: conf.name.clone(),
            container_id: env.container_id.clone(),
            ifname: pod_if.clone(),
            runtime_ifname: (pod_if != env.ifname).then(|| env.ifname.clone()),
            netns: env.netns.clone(),
            host_ifname: veths[0].host.clone(),
            pod_namespace: env.pod_namespace.clone(),
            pod_name: env.pod_name.clone(),
            vnf_mac: veths[0].pod_mac.clone(),
            host_mac: veths[0].host_mac.clone(),
            out,
        });
        call(conf, &req)?;
        Ok(veths)
    });
    let veths = match made {
        Ok(v) => v,
        Err(e) => {
            // Nothing half-made stays behind: the pod-side rule goes, each node end takes its
            // peer with it, and IPAM gives back what it handed out (SPEC §4: DEL on failure).
            let inbound = pod_if.clone();
            let _ = in_netns(&ns, move |h| Box::pin(async move { delete_rules(&h, &inbound).await }));
            let _ = on_node(async |h| {
                for n in &names {
                    delete_link(h, &host_ifname(&env.container_id, n)).await?;
                    delete_link(h, &temp_ifname(&env.container_id, n)).await?;
                }
                Ok(())
            });
            if let Some(i) = &conf.ipam {
                let _ = ipam::delegate(conf, i, "DEL", None);
            }
            return Err(e);
        }
    };
    let mut ifaces: Vec<Iface> = Vec::new();
    for v in &veths {
        ifaces.push((&v.host, &v.host_mac, None));
        ifaces.push((&v.pod, &v.pod_mac, Some(&env.netns)));
    }
    Ok(add_result(conf, &ifaces, 1, ipam_result.as_ref()))
}

/// Creates the veth(s), moves the peers into the pod and configures both ends.
fn create(env: &Env, ns: &OwnedFd, names: &[String], mtu: u32, ipam: Option<&Value>) -> Result<Vec<Veth>, CniError> {
    let raw_ns = ns.as_raw_fd();
    let mut veths = Vec::new();
    for name in names {
        let host = host_ifname(&env.container_id, name);
        let temp = temp_ifname(&env.container_id, name);
        let host_mac = on_node(async |h| {
            if link_by_name(h, &host).await?.is_some() {
                return Err(CniError::new(CODE_INVALID_ENV, format!("interface {host} already exists on the node (ADD twice?)")));
            }
            h.link().add(LinkVeth::new(&host, &temp).mtu(mtu).build()).execute().await.map_err(nl("create veth"))?;
            let peer = link_by_name(h, &temp).await?.ok_or_else(|| CniError::io("veth peer vanished"))?;
            h.link()
                .set(LinkUnspec::new_with_index(peer.header.index).setns_by_fd(raw_ns).build())
                .execute()
                .await
                .map_err(nl("move veth peer into the pod"))?;
            let hl = link_by_name(h, &host).await?.ok_or_else(|| CniError::io("veth vanished"))?;
            h.link().set(LinkUnspec::new_with_index(hl.header.index).up().build()).execute().await.map_err(nl("set host veth up"))?;
            Ok(mac_of(&hl))
        })?;
        let (temp, pod) = (temp.clone(), name.clone());
        let pod_mac = in_netns(ns, move |h| {
            Box::pin(async move {
                if link_by_name(&h, &pod).await?.is_some() {
                    return Err(CniError::new(CODE_INVALID_ENV, format!("interface {pod} already exists in the pod")));
                }
                let l = link_by_name(&h, &temp).await?.ok_or_else(|| CniError::io("veth peer missing in the pod"))?;
                h.link()
                    .set(LinkUnspec::new_with_index(l.header.index).name(pod.clone()).mtu(mtu).up().build())
                    .execute()
                    .await
                    .map_err(nl("rename pod interface"))?;
                Ok(mac_of(&l))
            })
        })?;
        veths.push(Veth { pod: name.clone(), host, host_mac, pod_mac });
    }
    let (inbound, outbound) = (veths[0].pod.clone(), veths.last().expect("one at least").pod.clone());
    let gw_mac = node_api::parse_mac(&veths.last().expect("one").host_mac).ok_or_else(|| CniError::io("node-side MAC"))?;
    let ipam = ipam.cloned();
    in_netns(ns, move |h| {
        Box::pin(async move {
            // The VNF is a router for chain traffic (SR-unaware: it just forwards).
            for key in ["net/ipv6/conf/all/forwarding", "net/ipv4/ip_forward"] {
                std::fs::write(format!("/proc/sys/{key}"), "1").map_err(|e| CniError::io(format!("sysctl {key}: {e}")))?;
            }
            let out_idx = link_by_name(&h, &outbound).await?.ok_or_else(|| CniError::io("outbound interface vanished"))?.header.index;
            for gw in [IpAddr::V6(GATEWAY), IpAddr::V4(GATEWAY4)] {
                h.neighbours()
                    .add(out_idx, gw)
                    .link_layer_address(&gw_mac)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
                    .map_err(nl("add gateway neighbour"))?;
            }
            let table = table_for(&inbound);
            let route6 = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
                .gateway(GATEWAY)
                .output_interface(out_idx)
                .table_id(table)
                .build();
            h.route().add(route6).replace().execute().await.map_err(nl("add chain route"))?;
            let route4 = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                .gateway(GATEWAY4)
                .output_interface(out_idx)
                .onlink()
                .table_id(table)
                .build();
            h.route().add(route4).replace().execute().await.map_err(nl("add chain route (IPv4)"))?;
            // The same rule for both families: whatever arrives on the chain interface is
            // routed by the chain table.
            let rule =
                || h.rule().add().input_interface(inbound.clone()).table_id(table).action(RuleAction::ToTable).priority(RULE_PRIORITY);
            rule().v6().execute().await.map_err(nl("add chain rule"))?;
            rule().v4().execute().await.map_err(nl("add chain rule (IPv4)"))?;
            // rp_filter would drop chain traffic arriving on net1 for sources routed via eth0.
            for key in ["net/ipv4/conf/all/rp_filter".to_string(), format!("net/ipv4/conf/{inbound}/rp_filter")] {
                std::fs::write(format!("/proc/sys/{key}"), "0").map_err(|e| CniError::io(format!("sysctl {key}: {e}")))?;
            }
            if let Some(ipam) = ipam {
                let in_idx = link_by_name(&h, &inbound).await?.ok_or_else(|| CniError::io("interface vanished"))?.header.index;
                apply_ipam(&h, in_idx, &ipam).await?;
            }
            Ok(())
        })
    })?;
    Ok(veths)
}

/// Addresses (IPv6 without DAD: the link has one peer, the node) and routes of an IPAM result.
async fn apply_ipam(h: &Handle, idx: u32, ipam: &Value) -> Result<(), CniError> {
    for ip in ipam["ips"].as_array().into_iter().flatten() {
        let cidr = ip["address"].as_str().ok_or_else(|| CniError::io("IPAM result: ip without address"))?;
        let net: ipnet::IpNet = cidr.parse().map_err(|e| CniError::io(format!("IPAM address {cidr}: {e}")))?;
        let mut req = h.address().add(idx, net.addr(), net.prefix_len());
        if net.addr().is_ipv6() {
            req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.map_err(nl("add IPAM address"))?;
    }
    for r in ipam["routes"].as_array().into_iter().flatten() {
        let dst: ipnet::IpNet = r["dst"].as_str().unwrap_or_default().parse().map_err(|e| CniError::io(format!("IPAM route: {e}")))?;
        let gw: Option<IpAddr> = r["gw"].as_str().and_then(|g| g.parse().ok());
        let msg = match (dst, gw) {
            (ipnet::IpNet::V6(d), gw) => {
                let mut b = RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(d.network(), d.prefix_len()).output_interface(idx);
                if let Some(IpAddr::V6(g)) = gw {
                    b = b.gateway(g);
                }
                b.build()
            }
            (ipnet::IpNet::V4(d), gw) => {
                let mut b =
                    RouteMessageBuilder::<std::net::Ipv4Addr>::new().destination_prefix(d.network(), d.prefix_len()).output_interface(idx);
                if let Some(IpAddr::V4(g)) = gw {
                    b = b.gateway(g);
                }
                b.build()
            }
        };
        h.route().add(msg).replace().execute().await.map_err(nl("add IPAM route"))?;
    }
    Ok(())
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
/// then removes the pod-side rule, the veth(s) and the IPAM lease. Missing pieces are fine.
pub fn del(conf: &NetConf, env: &Env) -> Result<(), CniError> {
    let pod_if = conf.pod_ifname(&env.ifname)?;
    let unregister = Request::Unregister { container_id: env.container_id.clone(), ifname: env.ifname.clone() };
    match call(conf, &unregister) {
        Ok(_) => {}
        // DEL never waits on the daemon (pods must not hang in Terminating while it restarts or
        // crash-loops): what is local goes now, and the deregistration is queued beside the
        // socket for the daemon to apply when it is back (a restarted daemon also releases the
        // registrations whose interfaces are gone). No socket at all: srv6pipes was uninstalled
        // from this node, nothing holds a registration.
        Err(e) if e.code == CODE_TRY_AGAIN_LATER => {
            let socket = Path::new(&conf.socket);
            if socket.exists() {
                node_api::queue_deregistration(socket, &env.container_id, &env.ifname)
                    .map_err(|e| CniError::io(format!("queue the deregistration beside {}: {e}", socket.display())))?;
            }
        }
        Err(e) => return Err(e),
    }
    if !env.netns.is_empty() {
        if let Ok(ns) = open_netns(&env.netns) {
            let ifname = pod_if.clone();
            in_netns(&ns, move |h| Box::pin(async move { delete_rules(&h, &ifname).await }))?;
        }
    }
    let names: Vec<String> = std::iter::once(pod_if.clone()).chain(conf.out_ifname(&pod_if)?).collect();
    on_node(async |h| {
        for n in &names {
            delete_link(h, &host_ifname(&env.container_id, n)).await?;
        }
        Ok(())
    })?;
    if let Some(i) = &conf.ipam {
        ipam::delegate(conf, i, "DEL", None)?;
    }
    Ok(())
}

async fn delete_rules(h: &Handle, ifname: &str) -> Result<(), CniError> {
    for r in our_rules(h, ifname).await? {
        h.rule().del(r).execute().await.map_err(nl("delete chain rule"))?;
    }
    Ok(())
}

async fn our_rules(h: &Handle, ifname: &str) -> Result<Vec<netlink_packet_route::rule::RuleMessage>, CniError> {
    let mut rules: Vec<_> = h.rule().get(IpVersion::V6).execute().try_collect().await.map_err(nl("list rules"))?;
    let v4: Vec<_> = h.rule().get(IpVersion::V4).execute().try_collect().await.map_err(nl("list rules"))?;
    rules.extend(v4);
    Ok(rules
        .into_iter()
        .filter(|r| {
            r.attributes.iter().any(|a| matches!(a, RuleAttribute::Iifname(n) if n == ifname))
                && r.attributes.iter().any(|a| matches!(a, RuleAttribute::Table(t) if *t == table_for(ifname)))
        })
        .collect())
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
    let host = attachment.host_ifname.clone();
    let host_mac = on_node(async |h| Ok(link_by_name(h, &host).await?.map(|l| mac_of(&l))))?
        .ok_or_else(|| CniError::check(format!("node-side interface {host} is missing")))?;
    if expected_mac(&host, false).is_some_and(|m| m != host_mac) {
        return Err(CniError::check(format!("{host} has MAC {host_mac}, prevResult says otherwise")));
    }
    let ns = open_netns(&env.netns)?;
    let pod_if = conf.pod_ifname(&env.ifname)?;
    let ifname = pod_if.clone();
    let (pod_mac, rules) = in_netns(&ns, move |h| {
        Box::pin(async move {
            let mac = link_by_name(&h, &ifname).await?.map(|l| mac_of(&l));
            Ok((mac, our_rules(&h, &ifname).await?.len()))
        })
    })?;
    let pod_mac = pod_mac.ok_or_else(|| CniError::check(format!("{pod_if} is missing in the pod")))?;
    if expected_mac(&pod_if, true).is_some_and(|m| m != pod_mac) || pod_mac != attachment.vnf_mac {
        return Err(CniError::check(format!("{pod_if} has MAC {pod_mac}, not the registered {}", attachment.vnf_mac)));
    }
    if rules != 2 {
        return Err(CniError::check(format!("the pod has {rules} chain rules for {pod_if}, expected 2 (IPv6, IPv4)")));
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
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| AttachmentKey { container_id: a.container_id.clone(), ifname: a.ifname.clone() })
        .collect();
    let Response::Released { attachments } = call(conf, &Request::Gc { network: conf.name.clone(), valid })? else {
        return Err(CniError::io("node daemon gave an unexpected answer to GC"));
    };
    on_node(async |h| {
        for a in &attachments {
            delete_link(h, &a.host_ifname).await?;
            if let Some(o) = &a.out {
                delete_link(h, &o.host_ifname).await?;
            }
        }
        Ok(())
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
        assert!(a.len() <= 15 && temp_ifname("abc", "net1").len() <= 15);
        assert_eq!(a, host_ifname("abc", "net1"));
        assert_ne!(a, host_ifname("abc", "net2"));
        assert_ne!(a, host_ifname("abd", "net1"));
        assert_ne!(table_for("net1"), table_for("net2"));
        assert_eq!(table_for("net1") >> 16, 0x5336);
    }
}
