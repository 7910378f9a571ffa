//! The proxy pod's own routing (it has CAP_NET_ADMIN in its netns, nothing more), set up once at
//! start and idempotent:
//! - what the node delivers for a stream SID carries `STREAM_MARK | port` (the node's eBPF sets
//!   it, a peer redirect keeps it): a rule sends every such packet to table `LOCAL_TABLE`, where
//!   `local ::/0` and `local 0.0.0.0/0` deliver it to this host whatever its destination (the
//!   server's address for a client's SYN, the client's for the server's reply), so the
//!   listeners (SYNs, assigned by the pod-side eBPF) and the transparent sockets get it;
//! - what the proxy sends carries `OUT_MARK` (SO_MARK on its sockets): a rule sends it out of
//!   the chain interface (table `OUT_TABLE`, the node-side gateway the CNI plugin pinned), where
//!   the node's eBPF puts it back on the chain;
//! - SYN cookies off ([`no_syncookies`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context;
use futures::TryStreamExt;
use netlink_packet_route::route::{RouteScope, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute};
use rtnetlink::{Handle, RouteMessageBuilder};

/// The high half of the mark the node puts on what it delivers for a stream SID (the low half
/// is the SID's listener port); the eBPF datapath's `SP_STREAM_MARK`.
pub const STREAM_MARK: u32 = 0x5f6e_0000;
/// The mark of the proxy's own sockets.
pub const OUT_MARK: u32 = 0x5f6f_0000;
pub const LOCAL_TABLE: u32 = 190;
pub const OUT_TABLE: u32 = 191;
const RULE_PRIORITY: u32 = 90;
/// The node-side gateways the CNI plugin pins on a chain interface (permanent neighbours).
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const GATEWAY4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Sets up the rules and tables above for chain interface `ifname`.
pub async fn setup(ifname: &str) -> anyhow::Result<()> {
    let (conn, h, _) = rtnetlink::new_connection().context("netlink socket")?;
    tokio::spawn(conn);
    let index = h
        .link()
        .get()
        .match_name(ifname.to_string())
        .execute()
        .try_next()
        .await
        .with_context(|| format!("chain interface {ifname}"))?
        .with_context(|| format!("no interface {ifname} in this pod"))?
        .header
        .index;
    let lo = h.link().get().match_name("lo".to_string()).execute().try_next().await?.context("no lo")?.header.index;
    let local6 = RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
        .kind(RouteType::Local)
        .output_interface(lo)
        .table_id(LOCAL_TABLE)
        .build();
    h.route().add(local6).replace().execute().await.context("local ::/0 route")?;
    let local4 = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .output_interface(lo)
        .table_id(LOCAL_TABLE)
        .build();
    h.route().add(local4).replace().execute().await.context("local 0.0.0.0/0 route")?;
    let out6 = RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
        .gateway(GATEWAY6)
        .output_interface(index)
        .table_id(OUT_TABLE)
        .build();
    h.route().add(out6).replace().execute().await.context("chain route")?;
    let out4 = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
        .gateway(GATEWAY4)
        .output_interface(index)
        .onlink()
        .table_id(OUT_TABLE)
        .build();
    h.route().add(out4).replace().execute().await.context("chain route (IPv4)")?;
    for v6 in [true, false] {
        // What this pod's stack answers by itself to a packet the node delivered (a reset, a
        // TIME_WAIT ack, an ICMP error) carries that packet's mark: srv6pipes-cni turns
        // fwmark_reflect on for End.AD functions' replies. Out of the chain interface, as the
        // proxy's own sockets send (a TIME_WAIT ack is theirs), not to LOCAL_TABLE, which would
        // deliver it back here. (Output lookups match `iif lo`.)
        rule(&h, v6, Some("lo"), STREAM_MARK, 0xffff_0000, OUT_TABLE, RULE_PRIORITY - 1).await?;
        rule(&h, v6, None, STREAM_MARK, 0xffff_0000, LOCAL_TABLE, RULE_PRIORITY).await?;
        rule(&h, v6, None, OUT_MARK, 0xffff_ffff, OUT_TABLE, RULE_PRIORITY + 1).await?;
    }
    no_syncookies();
    Ok(())
}

/// SYN cookies off in the pod's netns. A connection completed from a cookie (the listener's
/// queue full) starts with the client's ACK, which the pod's eBPF does not hand to a listener
/// (it assigns SYNs only): the client would believe itself connected to nothing. Without
/// cookies a full queue drops SYNs, which clients send again. Where /proc/sys is read-only (a
/// container) the pod's sysctl sets it (the chart does); if it is on all the same, said.
fn no_syncookies() {
    const PATH: &str = "/proc/sys/net/ipv4/tcp_syncookies";
    if std::fs::read_to_string(PATH).is_ok_and(|v| v.trim() == "0") {
        return;
    }
    if let Err(e) = std::fs::write(PATH, "0") {
        tracing::warn!(
            error = %e,
            "SYN cookies are on in this pod and cannot be turned off from here (set the pod's sysctl net.ipv4.tcp_syncookies=0): a connection completed from a cookie reaches no listener"
        );
    }
}

/// `[iif IIF] fwmark mark/mask lookup table`, once (an identical rule already there is fine).
async fn rule(h: &Handle, v6: bool, iif: Option<&str>, mark: u32, mask: u32, table: u32, priority: u32) -> anyhow::Result<()> {
    let mut base = h.rule().add().table_id(table).action(RuleAction::ToTable).priority(priority).fw_mark(mark);
    if let Some(iif) = iif {
        base = base.input_interface(iif);
    }
    let r = if v6 {
        let mut r = base.v6();
        r.message_mut().attributes.push(RuleAttribute::FwMask(mask));
        r.execute().await
    } else {
        let mut r = base.v4();
        r.message_mut().attributes.push(RuleAttribute::FwMask(mask));
        r.execute().await
    };
    match r {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_eexist() => Ok(()),
        Err(e) => Err(e).with_context(|| format!("rule iif {iif:?} fwmark {mark:#x}/{mask:#x} lookup {table}")),
    }
}

fn libc_eexist() -> i32 {
    nix::errno::Errno::EEXIST as i32
}

/// Whether `ip` is IPv4 (or IPv4-mapped IPv6, as a dual-stack listener reports IPv4 peers).
pub fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
