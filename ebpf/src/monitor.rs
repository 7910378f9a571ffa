//! The live monitor's side of the datapath (`bpf/lib/monitor.h`): its configuration, the ring
//! buffer the programs send drop and trace events into, and the events decoded.
//! `#[repr(C)]` mirrors of the C structs; change both sides together.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;

use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};

use crate::{DatapathError, DropReason, Result};

/// `SP_MON_DROPS`: an event for each (sampled) drop.
pub const MONITOR_DROPS: u32 = 1 << 0;
/// `SP_MON_TRACE`: an event for each (sampled) packet a program sees.
pub const MONITOR_TRACE: u32 = 1 << 1;

const HAS_SID: u8 = 1 << 0;
const HAS_TAG: u8 = 1 << 1;
const HAS_POLICY: u8 = 1 << 2;
const HAS_FLOW: u8 = 1 << 3;

/// `struct monitor_config`: what the programs send. All zero: nothing (the monitor detached).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorConfig {
    /// `MONITOR_DROPS` | `MONITOR_TRACE`.
    pub flags: u32,
    /// 1 in N drops (0 and 1: every one).
    pub drop_sample: u32,
    /// 1 in N packets (0 and 1: every one).
    pub trace_sample: u32,
    /// Most events per second per CPU (0: no limit).
    pub rate: u32,
}

/// `struct monitor_state`, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MonitorState {
    pub(crate) window: u64,
    pub(crate) sent: u64,
    pub(crate) limited: u64,
    pub(crate) lost: u64,
}

/// `struct monitor_event`: one event as the datapath sent it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorRecord {
    /// CLOCK_MONOTONIC, ns.
    pub ts: u64,
    pub ifindex: u32,
    pub len: u32,
    pub(crate) kind: u8,
    pub(crate) hook: u8,
    pub(crate) reason: u8,
    pub(crate) flags: u8,
    pub verdict: i32,
    pub(crate) policy: u32,
    pub(crate) tag: u16,
    pub(crate) family: u8,
    pub(crate) proto: u8,
    pub(crate) sport: [u8; 2],
    pub(crate) dport: [u8; 2],
    pub(crate) sid: [u8; 16],
    pub(crate) saddr: [u8; 16],
    pub(crate) daddr: [u8; 16],
}

unsafe impl aya::Pod for MonitorConfig {}
unsafe impl aya::Pod for MonitorState {}

/// Drop or trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Drop,
    Trace,
}

/// An event's (inner) flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub proto: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

impl MonitorRecord {
    /// The record in a ring buffer item (None if it is not one: another size).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != std::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: the size matches and every bit pattern is a valid MonitorRecord (integers and
        // byte arrays only); read_unaligned copes with the item's alignment.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    pub fn kind(&self) -> Option<RecordKind> {
        match self.kind {
            1 => Some(RecordKind::Drop),
            2 => Some(RecordKind::Trace),
            _ => None,
        }
    }

    /// The program: `uplink`, `vnf`, `headend` or `stream`.
    pub fn hook(&self) -> &'static str {
        match self.hook {
            1 => "uplink",
            2 => "vnf",
            3 => "headend",
            4 => "stream",
            _ => "unknown",
        }
    }

    /// A drop's reason (None: a drop without one, or a trace).
    pub fn reason(&self) -> Option<DropReason> {
        DropReason::from_raw(u32::from(self.reason))
    }

    /// The SID it arrived at (a drop's SID), else the one it left for.
    pub fn sid(&self) -> Option<Ipv6Addr> {
        (self.flags & HAS_SID != 0).then(|| Ipv6Addr::from(self.sid))
    }

    /// The SRH's tag: the chain (`srv6::compiler::chain_tag`).
    pub fn tag(&self) -> Option<u16> {
        (self.flags & HAS_TAG != 0).then_some(self.tag)
    }

    /// The headend policy that dropped the packet.
    pub fn policy(&self) -> Option<u32> {
        (self.flags & HAS_POLICY != 0).then_some(self.policy)
    }

    pub fn flow(&self) -> Option<Flow> {
        if self.flags & HAS_FLOW == 0 {
            return None;
        }
        let addr = |b: &[u8; 16]| match self.family {
            4 => IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
            _ => IpAddr::V6(Ipv6Addr::from(*b)),
        };
        Some(Flow {
            proto: self.proto,
            src: addr(&self.saddr),
            sport: u16::from_be_bytes(self.sport),
            dst: addr(&self.daddr),
            dport: u16::from_be_bytes(self.dport),
        })
    }
}

/// The monitor's maps, on handles of their own (opened from the pins of a loaded
/// [`crate::Datapath`]): the node daemon's reader owns them, apart from the node.
pub struct Monitor {
    ring: RingBuf<MapData>,
    config: Map,
    state: Map,
}

impl Monitor {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let open = |map: &'static str| MapData::from_pin(pin_dir.join(map)).map_err(|source| DatapathError::Map { map, source });
        let ring =
            RingBuf::try_from(Map::RingBuf(open("sp_monitor")?)).map_err(|source| DatapathError::Map { map: "sp_monitor", source })?;
        Ok(Monitor { ring, config: Map::Array(open("sp_monitor_config")?), state: Map::PerCpuArray(open("sp_monitor_state")?) })
    }

    /// What the programs send from now on.
    pub fn configure(&mut self, cfg: MonitorConfig) -> Result<()> {
        let map = "sp_monitor_config";
        let mut a: Array<&mut MapData, MonitorConfig> =
            Array::try_from(&mut self.config).map_err(|source| DatapathError::Map { map, source })?;
        a.set(0, cfg, 0).map_err(|source| DatapathError::Map { map, source })
    }

    pub fn config(&self) -> Result<MonitorConfig> {
        let map = "sp_monitor_config";
        let a: Array<&MapData, MonitorConfig> = Array::try_from(&self.config).map_err(|source| DatapathError::Map { map, source })?;
        a.get(&0, 0).map_err(|source| DatapathError::Map { map, source })
    }

    /// The next event in the ring, if any (records of another layout are skipped).
    pub fn read(&mut self) -> Option<MonitorRecord> {
        loop {
            let item = self.ring.next()?;
            if let Some(r) = MonitorRecord::decode(&item) {
                return Some(r);
            }
        }
    }

    /// Events not sent since the maps were made, summed over CPUs: (over the rate limit, the
    /// ring full).
    pub fn not_sent(&self) -> Result<(u64, u64)> {
        let a = PerCpuArray::try_from(&self.state).map_err(|source| DatapathError::Map { map: "sp_monitor_state", source })?;
        Self::not_sent_in(a)
    }

    pub(crate) fn not_sent_in(a: PerCpuArray<&MapData, MonitorState>) -> Result<(u64, u64)> {
        let v = a.get(&0, 0).map_err(|source| DatapathError::Map { map: "sp_monitor_state", source })?;
        Ok(v.iter().fold((0, 0), |(l, o), s| (l + s.limited, o + s.lost)))
    }
}

impl AsFd for Monitor {
    /// Readable when the ring has events (epoll).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl AsRawFd for Monitor {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_their_fields() {
        let mut r = MonitorRecord { kind: 1, hook: 2, reason: DropReason::NoCache as u8, flags: HAS_SID | HAS_FLOW, ..Default::default() };
        r.sid = "fcbb:bb00:1:e001::".parse::<Ipv6Addr>().unwrap().octets();
        r.family = 4;
        r.proto = 17;
        r.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        r.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        r.sport = 5353u16.to_be_bytes();
        r.dport = 53u16.to_be_bytes();
        // SAFETY: a plain repr(C) struct viewed as bytes.
        let bytes = unsafe { std::slice::from_raw_parts((&r as *const MonitorRecord).cast::<u8>(), std::mem::size_of::<MonitorRecord>()) };
        let d = MonitorRecord::decode(bytes).unwrap();
        assert_eq!(d.kind(), Some(RecordKind::Drop));
        assert_eq!(d.hook(), "vnf");
        assert_eq!(d.reason(), Some(DropReason::NoCache));
        assert_eq!(d.sid(), Some("fcbb:bb00:1:e001::".parse().unwrap()));
        assert_eq!(d.tag(), None);
        assert_eq!(d.policy(), None);
        let f = d.flow().unwrap();
        assert_eq!((f.proto, f.src, f.sport, f.dst, f.dport), (17, "10.0.0.1".parse().unwrap(), 5353, "10.0.0.2".parse().unwrap(), 53));
        assert_eq!(MonitorRecord::decode(&bytes[1..]), None, "another size is no record");
    }
}
