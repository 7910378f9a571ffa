//! The few netlink operations the daemon needs, on the node's network namespace.

use std::net::Ipv6Addr;

use anyhow::{anyhow, Context};
use futures::TryStreamExt;
use ipnet::Ipv6Net;
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::{Handle, RouteMessageBuilder};

pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    pub fn connect() -> anyhow::Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("open rtnetlink socket")?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// The interface the node routes `addr` through (`ip -6 route get`): for a pod, its veth.
    pub async fn route_oif(&self, addr: Ipv6Addr) -> anyhow::Result<u32> {
        let msg = RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(addr, 128).build();
        let mut routes = self.handle.route().get(msg).execute();
        while let Some(r) = routes.try_next().await.with_context(|| format!("route get {addr}"))? {
            if let Some(oif) = r.attributes.iter().find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None }) {
                return Ok(oif);
            }
        }
        Err(anyhow!("no route to {addr}"))
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
