//! Locators and SIDs with RFC 8986's LOC:FUNCT:ARG structure.
//!
//! A node's locator is a prefix of the cluster block (e.g. `fcbb:bb00:1::/48` in
//! `fcbb:bb00::/32`). The 16 bits after the locator are FUNCT and name one behaviour instance;
//! the remaining bits are ARG, zero for packet functions' proxies. FUNCT 0 is the node itself:
//! its SRv6 source address is LOC:0:…:1. A stream function's SID (SRv6 pipes) is
//! LOC:FUNCT:ARG with FUNCT the stream proxy instance and ARG its first 16 bits the function id,
//! the rest an argument handle (`Locator::stream_sid`, as SRv6Pipes put function and
//! parameters after the proxy's prefix).

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Width of the FUNCT field.
pub const FUNCT_BITS: u8 = 16;
/// FUNCT of the node's decapsulation SID (End.DT46-like: pop and route the inner packet).
pub const FUNCT_DECAP: u16 = 0x00d6;
/// FUNCTs handed to proxy SIDs (one per VNF interface), in allocation order: `0xe001..=0xffff`
/// first (so the first SIDs read `LOC:e001::`), then `0x1000..=0xe000`: 61,439 per node.
/// `0x0000..=0x0fff` stays for the node's own behaviours.
pub const FUNCT_PROXY_FIRST: u16 = 0xe001;

/// Proxy FUNCTs in allocation order.
pub fn proxy_functs() -> impl Iterator<Item = u16> {
    (FUNCT_PROXY_FIRST..=0xffff).chain(0x1000..FUNCT_PROXY_FIRST)
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SidError {
    #[error("locator {0} leaves no room for a {FUNCT_BITS}-bit FUNCT (prefix must be /112 or shorter)")]
    LocatorTooLong(Ipv6Net),
    #[error("locator {0} has bits set after its prefix length")]
    LocatorNotCanonical(Ipv6Net),
    #[error("cannot parse locator {0:?}: {1}")]
    Parse(String, String),
    #[error("locator {locator} is outside the cluster block {block}")]
    OutsideBlock { locator: Ipv6Net, block: Ipv6Net },
    #[error("cluster block {block} has no locator /{len} number {index}")]
    BlockExhausted { block: Ipv6Net, len: u8, index: u64 },
    #[error("no free proxy SID left in locator {0}")]
    Exhausted(Locator),
    #[error("locator {locator} leaves {bits} ARG bits: a stream SID needs 16 for the function and 8 for the argument handle")]
    NoRoomForStreamArg { locator: Locator, bits: u32 },
    #[error("argument handle {handle} does not fit the {bits} bits locator {locator} leaves for it")]
    HandleTooLarge { locator: Locator, handle: u64, bits: u32 },
}

/// Bits of a stream SID's ARG that name the function (`Locator::stream_sid`).
pub const STREAM_FUNCTION_BITS: u32 = 16;

/// What a stream function's SID says: the proxy instance, the function and its argument handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamArg {
    pub funct: u16,
    pub function: u16,
    pub handle: u64,
}

/// A node's SRv6 locator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Locator(Ipv6Net);

impl Locator {
    pub fn new(prefix: Ipv6Net) -> Result<Self, SidError> {
        if prefix.prefix_len() > 128 - FUNCT_BITS {
            return Err(SidError::LocatorTooLong(prefix));
        }
        if prefix.trunc() != prefix {
            return Err(SidError::LocatorNotCanonical(prefix));
        }
        Ok(Self(prefix))
    }

    /// The `index`-th locator of length `len` inside `block` (index 0 is skipped by callers
    /// that want to reserve it; this function does not).
    pub fn nth_in_block(block: Ipv6Net, len: u8, index: u64) -> Result<Self, SidError> {
        let free_bits = len.saturating_sub(block.prefix_len());
        if len < block.prefix_len() || (free_bits < 64 && index >= 1u64 << free_bits) {
            return Err(SidError::BlockExhausted { block, len, index });
        }
        let base = u128::from(block.network());
        let addr = base | ((index as u128) << (128 - len as u32));
        Self::new(Ipv6Net::new(Ipv6Addr::from(addr), len).expect("len <= 128"))
    }

    pub fn prefix(&self) -> Ipv6Net {
        self.0
    }

    pub fn contains(&self, addr: &Ipv6Addr) -> bool {
        self.0.contains(addr)
    }

    pub fn within(&self, block: Ipv6Net) -> Result<(), SidError> {
        if block.contains(&self.0) {
            Ok(())
        } else {
            Err(SidError::OutsideBlock { locator: self.0, block })
        }
    }

    /// LOC:FUNCT with ARG zero.
    pub fn sid(&self, funct: u16) -> Sid {
        let shift = 128 - self.0.prefix_len() as u32 - FUNCT_BITS as u32;
        Sid(Ipv6Addr::from(u128::from(self.0.network()) | ((funct as u128) << shift)))
    }

    /// The FUNCT of `sid` if it belongs to this locator and its ARG bits are zero.
    pub fn funct_of(&self, sid: Sid) -> Option<u16> {
        if !self.contains(&sid.0) {
            return None;
        }
        let shift = 128 - self.0.prefix_len() as u32 - FUNCT_BITS as u32;
        let bits = u128::from(sid.0);
        let arg_mask = if shift == 0 { 0 } else { (1u128 << shift) - 1 };
        (bits & arg_mask == 0).then(|| ((bits >> shift) & 0xffff) as u16)
    }

    /// Bits after FUNCT.
    fn arg_bits(&self) -> u32 {
        128 - self.0.prefix_len() as u32 - FUNCT_BITS as u32
    }

    /// Bits of a stream SID's argument handle: ARG less the function id, at most 64.
    pub fn stream_handle_bits(&self) -> Result<u32, SidError> {
        let bits = self.arg_bits();
        if bits < STREAM_FUNCTION_BITS + 8 {
            return Err(SidError::NoRoomForStreamArg { locator: *self, bits });
        }
        Ok((bits - STREAM_FUNCTION_BITS).min(64))
    }

    /// A stream function's SID: LOC:`funct`:ARG, ARG = `function` (16 bits) then `handle`.
    pub fn stream_sid(&self, funct: u16, arg: StreamArg) -> Result<Sid, SidError> {
        let handle_bits = self.stream_handle_bits()?;
        if handle_bits < 64 && arg.handle >> handle_bits != 0 {
            return Err(SidError::HandleTooLarge { locator: *self, handle: arg.handle, bits: handle_bits });
        }
        let low = self.arg_bits() - STREAM_FUNCTION_BITS - handle_bits;
        let value = ((arg.function as u128) << (handle_bits + low)) | ((arg.handle as u128) << low);
        Ok(Sid(Ipv6Addr::from(u128::from(self.sid(funct).0) | value)))
    }

    /// The proxy instance, function and handle a stream SID of this locator carries (`funct` in
    /// the answer is the SID's FUNCT; `arg.funct` is ignored by `stream_sid`).
    pub fn stream_arg_of(&self, sid: Sid) -> Option<StreamArg> {
        let handle_bits = self.stream_handle_bits().ok()?;
        if !self.contains(&sid.0) {
            return None;
        }
        let arg_bits = self.arg_bits();
        let low = arg_bits - STREAM_FUNCTION_BITS - handle_bits;
        let bits = u128::from(sid.0);
        let arg = bits & ((1u128 << arg_bits) - 1);
        if low > 0 && arg & ((1u128 << low) - 1) != 0 {
            return None;
        }
        let handle_mask = if handle_bits == 64 { u64::MAX as u128 } else { (1u128 << handle_bits) - 1 };
        Some(StreamArg {
            funct: ((bits >> arg_bits) & 0xffff) as u16,
            function: (arg >> (handle_bits + low)) as u16,
            handle: ((arg >> low) & handle_mask) as u64,
        })
    }

    /// The node's own SRv6 source address: FUNCT 0, ARG 1 (never a SID).
    pub fn source_address(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.0.network()) | 1)
    }

    pub fn decap_sid(&self) -> Sid {
        self.sid(FUNCT_DECAP)
    }
}

impl fmt::Display for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Locator {
    type Err = SidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let net: Ipv6Net = s.parse().map_err(|e| SidError::Parse(s.into(), format!("{e}")))?;
        Self::new(net)
    }
}

impl TryFrom<String> for Locator {
    type Error = SidError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Locator> for String {
    fn from(l: Locator) -> String {
        l.to_string()
    }
}

/// A segment identifier (an IPv6 address that names a behaviour).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Sid(pub Ipv6Addr);

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Picks proxy FUNCTs: the lowest free one, so the same registrations in the same order give
/// the same SIDs, and a FUNCT in use is never handed out again; nor one `cooling` (released a
/// moment ago: headends on other nodes may steer a chain to its SID until they are reprogrammed,
/// and that chain's packets would reach another pod's function) while any other is free; then
/// the one that has cooled longest (`cooling` is oldest first). Persisting the taken set is the
/// caller's business (the node daemon keeps it in its state directory).
pub fn allocate_proxy_funct(locator: Locator, taken: &BTreeSet<u16>, cooling: &[u16]) -> Result<u16, SidError> {
    let free = |f: &u16| !taken.contains(f);
    let warm: BTreeSet<u16> = cooling.iter().copied().collect();
    proxy_functs().find(|f| free(f) && !warm.contains(f)).or_else(|| cooling.iter().copied().find(free)).ok_or(SidError::Exhausted(locator))
}

/// The operator's locator for a node that joins: the lowest `len`-bit locator of `block` that
/// no node holds (index 0 stays reserved), so allocation is stable and never hands out one in use.
pub fn allocate_locator(block: Ipv6Net, len: u8, taken: &BTreeSet<Locator>) -> Result<Locator, SidError> {
    for index in 1u64.. {
        let l = Locator::nth_in_block(block, len, index)?;
        if !taken.contains(&l) {
            return Ok(l);
        }
    }
    unreachable!("nth_in_block ends the search")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(s: &str) -> Locator {
        s.parse().unwrap()
    }

    #[test]
    fn sid_layout_is_loc_funct_arg() {
        let l = loc("fcbb:bb00:1::/48");
        assert_eq!(l.sid(0xe001).to_string(), "fcbb:bb00:1:e001::");
        assert_eq!(l.decap_sid().to_string(), "fcbb:bb00:1:d6::");
        assert_eq!(l.source_address().to_string(), "fcbb:bb00:1::1");
        let l64 = loc("fcbb:bb00:0:2::/64");
        assert_eq!(l64.sid(0xe002).to_string(), "fcbb:bb00:0:2:e002::");
        let l112 = loc("fc00::/112");
        assert_eq!(l112.sid(0xabcd).to_string(), "fc00::abcd");
        assert_eq!(l112.funct_of(l112.sid(0xabcd)), Some(0xabcd));
    }

    #[test]
    fn funct_of_rejects_foreign_and_arg_bits() {
        let l = loc("fcbb:bb00:1::/48");
        assert_eq!(l.funct_of(l.sid(0xe123)), Some(0xe123));
        assert_eq!(l.funct_of(Sid("fcbb:bb00:2:e123::".parse().unwrap())), None);
        assert_eq!(l.funct_of(Sid("fcbb:bb00:1:e123::5".parse().unwrap())), None, "ARG must be zero");
    }

    #[test]
    fn locator_validation() {
        assert!(matches!("fc00::/113".parse::<Locator>(), Err(SidError::LocatorTooLong(_))));
        assert!(matches!("fc00::1/48".parse::<Locator>(), Err(SidError::LocatorNotCanonical(_))));
        assert!(matches!("nope".parse::<Locator>(), Err(SidError::Parse(..))));
        let block: Ipv6Net = "fcbb:bb00::/32".parse().unwrap();
        assert!(loc("fcbb:bb00:7::/48").within(block).is_ok());
        assert!(loc("fcbb:bb01::/48").within(block).is_err());
    }

    #[test]
    fn locators_from_block() {
        let block: Ipv6Net = "fcbb:bb00::/32".parse().unwrap();
        assert_eq!(Locator::nth_in_block(block, 48, 1).unwrap(), loc("fcbb:bb00:1::/48"));
        assert_eq!(Locator::nth_in_block(block, 48, 0xffff).unwrap(), loc("fcbb:bb00:ffff::/48"));
        assert!(matches!(Locator::nth_in_block(block, 48, 0x10000), Err(SidError::BlockExhausted { .. })));
        assert!(Locator::nth_in_block(block, 16, 0).is_err());
    }

    #[test]
    fn locator_allocation_is_lowest_free_and_reports_exhaustion() {
        let block: Ipv6Net = "fcbb:bb00::/46".parse().unwrap();
        let mut taken = BTreeSet::new();
        assert_eq!(allocate_locator(block, 48, &taken).unwrap(), loc("fcbb:bb00:1::/48"), "index 0 reserved");
        taken.insert(loc("fcbb:bb00:1::/48"));
        taken.insert(loc("fcbb:bb00:3::/48"));
        assert_eq!(allocate_locator(block, 48, &taken).unwrap(), loc("fcbb:bb00:2::/48"));
        taken.insert(loc("fcbb:bb00:2::/48"));
        assert!(matches!(allocate_locator(block, 48, &taken), Err(SidError::BlockExhausted { index: 4, .. })));
    }

    #[test]
    fn proxy_allocation_is_lowest_free_and_never_reuses_taken() {
        let l = loc("fcbb:bb00:1::/48");
        let mut taken = BTreeSet::new();
        let none = [];
        let first = allocate_proxy_funct(l, &taken, &none).unwrap();
        assert_eq!(first, FUNCT_PROXY_FIRST);
        taken.insert(first);
        taken.insert(FUNCT_PROXY_FIRST + 2);
        assert_eq!(allocate_proxy_funct(l, &taken, &none).unwrap(), FUNCT_PROXY_FIRST + 1);
        let mut all: BTreeSet<u16> = (FUNCT_PROXY_FIRST..=0xffff).collect();
        assert_eq!(allocate_proxy_funct(l, &all, &none).unwrap(), 0x1000, "then the lower range");
        all.extend(proxy_functs());
        assert_eq!(all.len(), 61_439 + 1, "with the one taken above");
        assert_eq!(allocate_proxy_funct(l, &all, &none), Err(SidError::Exhausted(l)));
        assert!(proxy_functs().all(|f| f >= 0x1000 && f != FUNCT_DECAP), "never a node behaviour");
    }

    #[test]
    fn a_funct_released_a_moment_ago_is_given_again_only_when_nothing_else_is_free() {
        let l = loc("fcbb:bb00:1::/48");
        let taken: BTreeSet<u16> = [FUNCT_PROXY_FIRST + 1].into();
        // Released first FIRST + 5, then FIRST, then FIRST + 2.
        let cooling = [FUNCT_PROXY_FIRST + 5, FUNCT_PROXY_FIRST, FUNCT_PROXY_FIRST + 2];
        assert_eq!(allocate_proxy_funct(l, &taken, &cooling).unwrap(), FUNCT_PROXY_FIRST + 3);
        let mut all: BTreeSet<u16> = proxy_functs().filter(|f| !cooling.contains(f)).collect();
        assert_eq!(allocate_proxy_funct(l, &all, &cooling).unwrap(), FUNCT_PROXY_FIRST + 5, "the one cooled longest, rather than none");
        all.insert(FUNCT_PROXY_FIRST + 5);
        assert_eq!(allocate_proxy_funct(l, &all, &cooling).unwrap(), FUNCT_PROXY_FIRST);
        all.extend(cooling);
        assert_eq!(allocate_proxy_funct(l, &all, &cooling), Err(SidError::Exhausted(l)));
    }

    #[test]
    fn locator_serde_is_a_string() {
        let l = loc("fcbb:bb00:1::/48");
        assert_eq!(serde_json::to_string(&l).unwrap(), "\"fcbb:bb00:1::/48\"");
        assert!(serde_json::from_str::<Locator>("\"fcbb:bb00:1::1/48\"").is_err());
    }

    #[test]
    fn stream_sids_carry_function_and_handle_in_arg() {
        let loc: Locator = "fcbb:bb00:1::/48".parse().unwrap();
        assert_eq!(loc.stream_handle_bits().unwrap(), 48);
        let arg = StreamArg { funct: 0, function: 0x0002, handle: 0xbcde_ffff };
        let sid = loc.stream_sid(0xe001, arg).unwrap();
        assert_eq!(sid.to_string(), "fcbb:bb00:1:e001:2:0:bcde:ffff");
        assert_eq!(loc.stream_arg_of(sid), Some(StreamArg { funct: 0xe001, ..arg }));
        assert_eq!(loc.funct_of(sid), None, "not a plain proxy SID: ARG bits are set");
        assert_eq!(loc.stream_arg_of(loc.sid(0xe001)), Some(StreamArg { funct: 0xe001, function: 0, handle: 0 }));
        let other: Locator = "fcbb:bb00:2::/48".parse().unwrap();
        assert_eq!(other.stream_arg_of(sid), None, "another node's");
        // A /64 locator leaves 32 bits of handle; a /100 too few for any.
        let l64: Locator = "fcbb:bb00:1:2::/64".parse().unwrap();
        assert_eq!(l64.stream_handle_bits().unwrap(), 32);
        let big = StreamArg { funct: 0, function: 1, handle: 1 << 32 };
        assert!(matches!(l64.stream_sid(0xe001, big), Err(SidError::HandleTooLarge { bits: 32, .. })));
        let s = l64.stream_sid(0xe001, StreamArg { handle: 0xffff_ffff, ..big }).unwrap();
        assert_eq!(l64.stream_arg_of(s).unwrap().handle, 0xffff_ffff);
        let l100: Locator = "fcbb:bb00:1:2::/100".parse().unwrap();
        assert!(matches!(l100.stream_handle_bits(), Err(SidError::NoRoomForStreamArg { bits: 12, .. })));
    }
}
