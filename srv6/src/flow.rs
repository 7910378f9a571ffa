//! The replica hash of a flow, the same for both of its directions: the Rust twin of the
//! datapath's `flow_hash` (ebpf/bpf/lib/flow.h), which the packet tests compare against.
//!
//! Each endpoint (address, port) is hashed alone (MurmurHash3's mix and finalizer) and the two
//! are combined with XOR, so swapping source and destination gives the same value. Ports count
//! for TCP, UDP and SCTP packets that are not fragments; fragments (the first one included) and
//! other protocols such as ICMP hash addresses and protocol only (the 3-tuple).

use std::net::IpAddr;

use crate::compiler::REPLICA_SLOTS;

/// Protocols whose transport header starts with source and destination ports.
pub fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132)
}

fn mix32(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// An address as the datapath loads it: 16 bytes (IPv4 in the first 4, the rest zero) read as
/// four native-endian words.
fn words(addr: IpAddr) -> [u32; 4] {
    let mut b = [0u8; 16];
    match addr {
        IpAddr::V4(a) => b[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => b = a.octets(),
    }
    std::array::from_fn(|i| u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().unwrap()))
}

fn endpoint_hash(addr: IpAddr, port: u16) -> u32 {
    fmix32(mix32(words(addr).iter().fold(0x5eed_5eed, |h, w| mix32(h, *w)), port as u32))
}

/// The flow's hash. `ports` (source, destination) is ignored for fragments and for protocols
/// without ports, as in the datapath.
pub fn flow_hash(src: IpAddr, dst: IpAddr, proto: u8, ports: (u16, u16), fragment: bool) -> u32 {
    let (sp, dp) = if !fragment && has_ports(proto) { ports } else { (0, 0) };
    fmix32(endpoint_hash(src, sp) ^ endpoint_hash(dst, dp) ^ proto as u32)
}

/// The slot of a hop's replica table (`compiler::replica_slots`) a flow hash picks.
pub fn replica_slot(hash: u32) -> usize {
    hash as usize & (REPLICA_SLOTS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn both_directions_hash_alike() {
        for (a, b) in [("fd00:10:1::2", "fd00:10:4::2"), ("10.10.1.2", "10.10.4.2")] {
            for proto in [6, 17, 132, 1, 58] {
                let fwd = flow_hash(ip(a), ip(b), proto, (40000, 5201), false);
                assert_eq!(fwd, flow_hash(ip(b), ip(a), proto, (5201, 40000), false), "{a} {b} {proto}");
            }
        }
    }

    #[test]
    fn ports_count_only_for_whole_port_protocols() {
        let (a, b) = (ip("fd00:10:1::2"), ip("fd00:10:4::2"));
        assert_ne!(flow_hash(a, b, 6, (40000, 5201), false), flow_hash(a, b, 6, (40001, 5201), false));
        // ICMP and fragments, the first one included: the 3-tuple.
        assert_eq!(flow_hash(a, b, 58, (1, 2), false), flow_hash(a, b, 58, (3, 4), false));
        assert_eq!(flow_hash(a, b, 17, (40000, 53), true), flow_hash(a, b, 17, (0, 0), false));
        assert_ne!(flow_hash(a, b, 17, (0, 0), false), flow_hash(a, b, 6, (0, 0), false), "the protocol counts");
    }

    #[test]
    fn flows_spread_over_the_slots() {
        let (a, b) = (ip("fd00:10:1::2"), ip("fd00:10:4::2"));
        let mut per_slot = [0u32; REPLICA_SLOTS];
        for sport in 0..6400u16 {
            per_slot[replica_slot(flow_hash(a, b, 6, (32768 + sport, 443), false))] += 1;
        }
        assert!(per_slot.iter().all(|n| (50..=150).contains(n)), "{per_slot:?}");
    }
}
