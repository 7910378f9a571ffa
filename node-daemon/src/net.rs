//! The few netlink operations the daemon needs, on the node's network namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, bail, Context};
use futures::TryStreamExt;
use ipnet::Ipv6Net;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo};
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::{Handle, RouteMessageBuilder};

#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    pub fn connect() -> anyhow::Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("open rtnetlink socket")?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// The interface the node routes `addr` through (`ip route get`): for a pod, its veth.
    pub async fn route_oif(&self, addr: IpAddr) -> anyhow::Result<u32> {
        let msg = match addr {
            IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(a, 128).build(),
            IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(a, 32).build(),
        };
        let mut routes = self.handle.route().get(msg).execute();
        while let Some(r) = routes.try_next().await.with_context(|| format!("route get {addr}"))? {
            if let Some(oif) = r.attributes.iter().find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None }) {
                return Ok(oif);
            }
        }
        Err(anyhow!("no route to {addr}"))
    }

    /// The ifindex of `name` after checking it is a veth with MAC `mac`.
    pub async fn check_veth(&self, name: &str, mac: &str) -> anyhow::Result<u32> {
        let found = match self.handle.link().get().match_name(name.to_string()).execute().try_next().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => None,
            other => other.with_context(|| format!("interface {name}"))?,
        };
        let link = found.ok_or_else(|| anyhow!("interface {name} does not exist"))?;
        let is_veth = link
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::LinkInfo(infos) if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)))));
        if !is_veth {
            bail!("interface {name} is not a veth");
        }
        let bytes = link.attributes.iter().find_map(|a| if let LinkAttribute::Address(m) = a { Some(m.as_slice()) } else { None });
        let actual = srv6::node_api::format_mac(bytes.unwrap_or_default());
        if !actual.eq_ignore_ascii_case(mac) {
            bail!("interface {name} has MAC {actual}, not {mac}");
        }
        Ok(link.header.index)
    }

    /// The MTU of interface `name`.
    pub async fn mtu(&self, name: &str) -> anyhow::Result<u32> {
        let link = self.handle.link().get().match_name(name.to_string()).execute().try_next().await;
        let link = link.with_context(|| format!("interface {name}"))?.ok_or_else(|| anyhow!("interface {name} does not exist"))?;
        link.attributes
            .iter()
            .find_map(|a| if let LinkAttribute::Mtu(m) = a { Some(*m) } else { None })
            .ok_or_else(|| anyhow!("interface {name} reports no MTU"))
    }

    fn locator_route(prefix: Ipv6Net, via: Ipv6Addr, oif: u32) -> RouteMessage {
        RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(prefix.network(), prefix.prefix_len())
            .gateway(via)
            .output_interface(oif)
            .build()
    }

    pub async fn replace_route(&self, prefix: Ipv6Net, via: Ipv6Addr, oif: u32) -> anyhow::Result<()> {
        self.handle
            .route()
            .add(Self::locator_route(prefix, via, oif))
            .replace()
            .execute()
            .await
            .with_context(|| format!("route replace {prefix} via {via}"))
    }

    /// Removes the route; one that is already gone is fine.
    pub async fn delete_route(&self, prefix: Ipv6Net, via: Ipv6Addr, oif: u32) -> anyhow::Result<()> {
        match self.handle.route().del(Self::locator_route(prefix, via, oif)).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            Err(e) => Err(e).with_context(|| format!("route del {prefix} via {via}")),
        }
    }
}

/// The name of the interface that holds one of `addrs`, if any.
pub async fn interface_with_address(addrs: &[IpAddr]) -> anyhow::Result<Option<String>> {
    use netlink_packet_route::address::AddressAttribute;
    let nl = Netlink::connect()?;
    let mut dump = nl.handle.address().get().execute();
    while let Some(msg) = dump.try_next().await.context("list addresses")? {
        if msg.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(ip) if addrs.contains(ip))) {
            let name =
                nix::net::if_::if_indextoname(msg.header.index).with_context(|| format!("name of interface {}", msg.header.index))?;
            return Ok(Some(name.to_string_lossy().into_owned()));
        }
    }
    Ok(None)
}
