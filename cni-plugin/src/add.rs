//! ADD, arranged so that its slow parts overlap instead of adding up:
//! - the IPAM plugin (a process of its own, mostly its start) runs from the beginning;
//! - each veth is made in one request, its peer created directly in the pod with its final
//!   name, MTU and MACs: nothing is moved between namespaces or renamed;
//! - the registration with the node daemon (whose tcx attach waits for an RCU grace period)
//!   runs while a thread in the pod sets its routing and then binds the IPAM result.
//!
//! On failure, what this ADD made goes (SPEC §4: IPAM DEL too). With `SRV6PIPES_CNI_PROFILE`
//! set, the time of each step goes to stderr as one JSON line (the benchmark reads it).

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{InfoData, InfoVeth};
use netlink_packet_route::neighbour::NeighbourState;
use netlink_packet_route::rule::RuleAction;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde_json::Value;
use srv6::node_api::{self, format_mac, Attachment, CallError, OutInterface, Request, Response};

use crate::cni::{add_result, CniError, Env, Iface, NetConf, CODE_INVALID_ENV};
use crate::ipam;
use crate::link::{
    call, daemon_error, delete_link, delete_rules, host_ifname, in_netns, link_by_name, nl, on_node, open_netns, spawn_in_netns, table_for,
    DAEMON_TIMEOUT, GATEWAY, GATEWAY4, RULE_PRIORITY,
};

/// One veth made by ADD.
struct Veth {
    pod: String,
    host: String,
    /// The node end's ifindex (its low 16 bits are in the reply mark).
    host_index: u32,
    host_mac: String,
    pod_mac: String,
}

/// Steps and their times in milliseconds, in the order they ended.
#[derive(Default)]
struct Profile(Vec<(&'static str, f64)>);

impl Profile {
    fn timed<T>(&mut self, step: &'static str, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.0.push((step, ms_since(start)));
        out
    }
    fn print(&self, started: Instant) {
        if std::env::var_os("SRV6PIPES_CNI_PROFILE").is_some() {
            let mut steps: serde_json::Map<String, Value> = self.0.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
            steps.insert("total".into(), ms_since(started).into());
            eprintln!("{}", serde_json::json!({ "cni_add_steps_ms": steps }));
        }
    }
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

pub fn add(conf: &NetConf, env: &Env) -> Result<Value, CniError> {
    let started = Instant::now();
    let mut profile = Profile::default();
    let ns = open_netns(&env.netns)?;
    let pod_if = conf.pod_ifname(&env.ifname)?;
    let names: Vec<String> = std::iter::once(pod_if.clone()).chain(conf.out_ifname(&pod_if)?).collect();
    profile.timed("live_check", || refuse_live(env, &names))?;
    let mtu = profile.timed("daemon_mtu", || chain_mtu(conf))?;
    let ipam = conf.ipam.as_ref().map(|i| ipam::start(conf, i, "ADD", None)).transpose()?;
    let mut made = Made::default();
    match wire(conf, env, &ns, &names, mtu, ipam, &mut made, &mut profile) {
        Ok((veths, ipam_result)) => {
            let mut ifaces: Vec<Iface> = Vec::new();
            for v in &veths {
                ifaces.push((&v.host, &v.host_mac, None));
                ifaces.push((&v.pod, &v.pod_mac, Some(&env.netns)));
            }
            profile.print(started);
            Ok(add_result(conf, &ifaces, 1, ipam_result.as_ref()))
        }
        Err(e) => {
            undo(conf, env, &ns, &names, &made);
            Err(e)
        }
    }
}

/// What a failed ADD has to undo: only what it made itself.
#[derive(Default)]
struct Made {
    /// The node ends of the veths it created (never one that was there before it: another
    /// attachment's, whose name the same hash gave).
    host_links: Vec<String>,
    /// Whether the daemon may have to be told to forget the attachment.
    registered: bool,
}

/// A second ADD for a live attachment (same container and interface, no DEL between: CNI SPEC
/// §"ADD", which allows a plugin to refuse it) fails before anything is touched: the clean-up
/// of a failed ADD is for what it made, never the attachment that is already there.
fn refuse_live(env: &Env, names: &[String]) -> Result<(), CniError> {
    let live: Vec<String> = on_node(async |h| {
        let mut live = Vec::new();
        for n in names {
            let host = host_ifname(&env.container_id, n);
            if link_by_name(h, &host).await?.is_some() {
                live.push(host);
            }
        }
        Ok(live)
    })?;
    if live.is_empty() {
        return Ok(());
    }
    Err(CniError::new(
        CODE_INVALID_ENV,
        format!(
            "container {} already has {} on this network (node side {}): a second ADD without DEL; nothing changed",
            env.container_id,
            env.ifname,
            live.join(", ")
        ),
    ))
}

/// The chain interface's MTU: the configuration's, or what the node daemon says chains carry.
fn chain_mtu(conf: &NetConf) -> Result<u32, CniError> {
    if let Some(m) = conf.mtu {
        return Ok(m);
    }
    match call(conf, &Request::Sids)? {
        Response::Sids(s) if s.vnf_mtu >= 1280 => Ok(s.vnf_mtu),
        Response::Sids(s) => Err(CniError::config(format!("node {} reports no chain MTU: set mtu", s.node))),
        other => Err(CniError::io(format!("unexpected answer from the node daemon: {other:?}"))),
    }
}

/// The veths, the registration and the pod's routing and addresses; `made` tells the caller
/// what to undo should it fail. The IPAM plugin has always ended when this returns.
#[allow(clippy::too_many_arguments)]
fn wire(
    conf: &NetConf,
    env: &Env,
    ns: &OwnedFd,
    names: &[String],
    mtu: u32,
    ipam: Option<ipam::Running>,
    made: &mut Made,
    profile: &mut Profile,
) -> Result<(Vec<Veth>, Option<Value>), CniError> {
    let veths = match profile.timed("veth", || create(env, ns, names, mtu, &mut made.host_links)) {
        Ok(v) => v,
        Err(e) => {
            let _ = ipam.map(ipam::Running::wait);
            return Err(e);
        }
    };
    let pod = spawn_in_netns(ns, pod_side(&veths, ipam))?;
    let out = veths.get(1).map(|v| OutInterface { ifname: v.pod.clone(), host_ifname: v.host.clone(), host_mac: v.host_mac.clone() });
    let req = Request::Register(Attachment {
        network: conf.name.clone(),
        container_id: env.container_id.clone(),
        ifname: veths[0].pod.clone(),
        runtime_ifname: (veths[0].pod != env.ifname).then(|| env.ifname.clone()),
        netns: env.netns.clone(),
        host_ifname: veths[0].host.clone(),
        pod_namespace: env.pod_namespace.clone(),
        pod_name: env.pod_name.clone(),
        vnf_mac: veths[0].pod_mac.clone(),
        host_mac: veths[0].host_mac.clone(),
        out,
    });
    let register = profile.timed("daemon_register", || node_api::call(Path::new(&conf.socket), &req, DAEMON_TIMEOUT));
    // Registered, or maybe (the answer lost to a timeout): the undo tells the daemon to forget.
    // Not when it refused: what it holds under that key then is not this ADD's.
    made.registered = matches!(register, Ok(_) | Err(CallError::Io { .. } | CallError::Decode { .. }));
    let (pod_result, pod_steps) = pod.join().map_err(|_| CniError::io("pod netns worker panicked"))??;
    profile.0.extend(pod_steps);
    register.map_err(daemon_error)?;
    Ok((veths, pod_result?))
}

/// Each veth in one request: the node end named and up, its peer created in the pod with its
/// final name, both with the MTU and with MACs chosen here (so neither has to be read back).
/// Each node end is named in `created` as soon as it is made.
fn create(env: &Env, ns: &OwnedFd, names: &[String], mtu: u32, created: &mut Vec<String>) -> Result<Vec<Veth>, CniError> {
    let raw_ns = ns.as_raw_fd();
    on_node(async |h| {
        let mut veths = Vec::new();
        for name in names {
            let host = host_ifname(&env.container_id, name);
            let (host_mac, pod_mac) = (random_mac()?, random_mac()?);
            // Up in the pod comes later, from there: a veth end cannot open before it is paired.
            let peer = LinkUnspec::new_with_name(name).mtu(mtu).address(pod_mac.to_vec()).setns_by_fd(raw_ns).build();
            let veth = LinkVeth::new(&host, name)
                .mtu(mtu)
                .address(host_mac.to_vec())
                .up()
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build();
            match h.link().add(veth).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {
                    return Err(CniError::new(
                        CODE_INVALID_ENV,
                        format!("interface {name} already exists in the pod, or {host} on the node (ADD twice?)"),
                    ));
                }
                Err(e) => return Err(nl("create veth")(e)),
            }
            created.push(host.clone());
            let host_index =
                link_by_name(h, &host).await?.ok_or_else(|| CniError::io(format!("{host} vanished from the node")))?.header.index;
            veths.push(Veth { pod: name.clone(), host, host_index, host_mac: format_mac(&host_mac), pod_mac: format_mac(&pod_mac) });
        }
        Ok(veths)
    })
}

/// A random locally administered unicast MAC, as the kernel would give.
fn random_mac() -> Result<[u8; 6], CniError> {
    let mut mac = [0u8; 6];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut mac)).map_err(|e| CniError::io(format!("random MAC: {e}")))?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

type PodSteps = Vec<(&'static str, f64)>;

/// In the pod: its routing for chain traffic, then the IPAM result (waited for here, so the
/// plugin has ended whatever happened before) on the inbound interface.
fn pod_side(
    veths: &[Veth],
    ipam: Option<ipam::Running>,
) -> impl FnOnce(&tokio::runtime::Runtime, Handle) -> (Result<Option<Value>, CniError>, PodSteps) + Send + 'static {
    let (inbound, outbound) = (veths[0].pod.clone(), veths.last().expect("one at least").pod.clone());
    let gw_mac = srv6::node_api::parse_mac(&veths.last().expect("one").host_mac).expect("made here");
    let reply_mark = srv6::node_api::reply_mark(veths[0].host_index);
    move |rt, h| {
        let mut steps = Profile::default();
        let routing = steps.timed("pod_routing", || rt.block_on(pod_routing(&h, &inbound, &outbound, gw_mac, reply_mark)));
        let result = match ipam {
            Some(running) => steps.timed("ipam_wait", || running.wait()),
            None => Ok(None),
        };
        let outcome = match (routing, result) {
            (Ok(idx), Ok(Some(r))) => steps.timed("pod_addresses", || rt.block_on(apply_ipam(&h, idx, &r))).map(|()| Some(r)),
            (routing, result) => routing.and(result),
        };
        (outcome, steps.0)
    }
}

/// The interfaces up, forwarding on, the gateway neighbours, the chain table's default routes and the rules that
/// send through it whatever arrives on the chain interface and the replies the pod's stack makes
/// to that (by `reply_mark`); returns the inbound ifindex.
async fn pod_routing(h: &Handle, inbound: &str, outbound: &str, gw_mac: [u8; 6], reply_mark: u32) -> Result<u32, CniError> {
    // The VNF is a router for chain traffic (SR-unaware: it just forwards), and what its stack
    // answers to a packet (a REJECT's reset or ICMP error) carries that packet's mark.
    for key in ["net/ipv6/conf/all/forwarding", "net/ipv4/ip_forward", "net/ipv6/fwmark_reflect", "net/ipv4/fwmark_reflect"] {
        std::fs::write(format!("/proc/sys/{key}"), "1").map_err(|e| CniError::io(format!("sysctl {key}: {e}")))?;
    }
    let mut idx = Vec::new();
    for name in std::iter::once(inbound).chain((outbound != inbound).then_some(outbound)) {
        let i = link_by_name(h, name).await?.ok_or_else(|| CniError::io(format!("{name} vanished from the pod")))?.header.index;
        h.link().set(LinkUnspec::new_with_index(i).up().build()).execute().await.map_err(nl("set pod interface up"))?;
        idx.push(i);
    }
    let (in_idx, out_idx) = (idx[0], idx[idx.len() - 1]);
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
    let table = table_for(inbound);
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
    // The same rule for both families: whatever arrives on the chain interface is routed by
    // the chain table.
    let rule = || h.rule().add().input_interface(inbound.to_string()).table_id(table).action(RuleAction::ToTable).priority(RULE_PRIORITY);
    rule().v6().execute().await.map_err(nl("add chain rule"))?;
    rule().v4().execute().await.map_err(nl("add chain rule (IPv4)"))?;
    // The replies to what arrived on it, by the mark the node's datapath put on that: back
    // through the node's proxy (sp_vnf sends them to the source), not out of the primary
    // interface through the node's conntrack, which never saw the flow (INVALID, dropped by
    // kube-proxy's KUBE-FORWARD).
    let replies = || h.rule().add().fw_mark(reply_mark).table_id(table).action(RuleAction::ToTable).priority(RULE_PRIORITY);
    replies().v6().execute().await.map_err(nl("add chain reply rule"))?;
    replies().v4().execute().await.map_err(nl("add chain reply rule (IPv4)"))?;
    // rp_filter would drop chain traffic arriving on net1 for sources routed via eth0.
    for key in ["net/ipv4/conf/all/rp_filter".to_string(), format!("net/ipv4/conf/{inbound}/rp_filter")] {
        std::fs::write(format!("/proc/sys/{key}"), "0").map_err(|e| CniError::io(format!("sysctl {key}: {e}")))?;
    }
    Ok(in_idx)
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
                let mut b = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(d.network(), d.prefix_len()).output_interface(idx);
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

/// Nothing half-made stays behind: the registration, the pod-side rules, each node end it
/// made (its peer goes with it) and IPAM's lease (SPEC §4: DEL on failure).
fn undo(conf: &NetConf, env: &Env, ns: &OwnedFd, names: &[String], made: &Made) {
    if made.registered {
        let _ = call(conf, &Request::Unregister { container_id: env.container_id.clone(), ifname: env.ifname.clone() });
    }
    if !made.host_links.is_empty() {
        let inbound = names[0].clone();
        let _ = in_netns(ns, move |h| Box::pin(async move { delete_rules(&h, &inbound).await }));
    }
    let _ = on_node(async |h| {
        for host in &made.host_links {
            delete_link(h, host).await?;
        }
        Ok(())
    });
    if let Some(i) = &conf.ipam {
        let _ = ipam::delegate(conf, i, "DEL", None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_chosen_here_are_locally_administered_unicast_and_differ() {
        let macs: Vec<[u8; 6]> = (0..64).map(|_| random_mac().unwrap()).collect();
        for m in &macs {
            assert_eq!(m[0] & 0x01, 0, "{m:02x?} is multicast");
            assert_eq!(m[0] & 0x02, 0x02, "{m:02x?} is not locally administered");
        }
        let distinct: std::collections::BTreeSet<_> = macs.iter().collect();
        assert_eq!(distinct.len(), macs.len());
    }
}
