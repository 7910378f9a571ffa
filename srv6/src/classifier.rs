//! The headend classifier, compiled (pure): rules of several chains on one source interface in,
//! lookup tables out, so that per packet the cost is two longest-prefix matches whatever the
//! number of chains (no per-chain scan).
//!
//! Stage 1 maps the destination address (LPM over every rule's prefix) to a *class*: the set of
//! rules whose prefix contains that address, already ordered by priority (higher first), then
//! by the more specific prefix. Stage 2 maps (class, protocol, destination port) to a policy
//! (LPM: a port range is split into aligned port blocks; "any port" and "any protocol" are
//! shorter prefixes). Within a class, a rule's entry is only added where no earlier (higher
//! priority or more specific) rule covers it, so the LPM's "longest wins" never overrides
//! priority. Fragments carry no ports (after the first): they are classified by (class,
//! protocol) alone, to the first rule matching addresses and protocol, so fragmentation cannot
//! bypass a function.
//!
//! A symmetric chain's reverse rules match the forward destination ports as *source* ports.
//! Those rules get stage-2 entries of their own (keyed by source port, `L4Entry::by_source`),
//! and their class says so (`ClassEntry::source_ports`): the datapath then looks up both and
//! keeps the entry of the rule that comes first in the class (`rank`), so priorities hold
//! across the two.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

/// One chain's rule for one source and destination prefix. The source is whatever tells the
/// node's interfaces apart (the daemon: the interface's index; tests: the pod's address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule<S = IpAddr> {
    pub source: S,
    pub destination: IpNet,
    /// IP protocol number; None = any.
    pub proto: Option<u8>,
    /// Destination port ranges (inclusive); empty = any port.
    pub ports: Vec<(u16, u16)>,
    /// Source port ranges (inclusive; a symmetric chain's reverse rules); empty = any port. A
    /// rule has destination or source ports, not both.
    pub source_ports: Vec<(u16, u16)>,
    pub priority: i32,
    /// Caller's reference (e.g. the policy the rule steers into).
    pub target: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassEntry<S = IpAddr> {
    pub source: S,
    pub destination: IpNet,
    pub class: u32,
    /// Some rule of the class matches source ports: look up its `by_source` entries too.
    pub source_ports: bool,
}

/// A stage-2 entry: `proto` None matches any protocol (and then any port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L4Entry {
    pub class: u32,
    pub proto: Option<u8>,
    /// Port block `port/port_len` (port_len 0 = any port).
    pub port: u16,
    pub port_len: u8,
    /// The port block is of source ports.
    pub by_source: bool,
    /// The rule's position in its class (priority order): of two entries that match, the lower
    /// rank wins.
    pub rank: u32,
    pub target: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragEntry {
    pub class: u32,
    pub proto: Option<u8>,
    pub target: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables<S = IpAddr> {
    pub classes: Vec<ClassEntry<S>>,
    pub l4: Vec<L4Entry>,
    pub frags: Vec<FragEntry>,
}

/// Splits an inclusive port range into aligned blocks (value, prefix length).
pub fn port_blocks(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (lo as u32, hi as u32);
    while lo <= hi {
        let mut size = if lo == 0 { 1 << 16 } else { 1u32 << lo.trailing_zeros().min(16) };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, (16 - size.trailing_zeros()) as u8));
        lo += size;
    }
    out
}

fn block_contains(outer: (u16, u8), inner: (u16, u8)) -> bool {
    if outer.1 > inner.1 {
        return false;
    }
    let mask = if outer.1 == 0 { 0 } else { u16::MAX << (16 - outer.1) };
    outer.0 & mask == inner.0 & mask
}

/// Builds the tables for all rules of one node. Classes are numbered from 1.
pub fn build<S: Ord + Copy>(rules: &[Rule<S>]) -> Tables<S> {
    let mut t = Tables { classes: Vec::new(), l4: Vec::new(), frags: Vec::new() };
    let mut by_source: BTreeMap<S, Vec<&Rule<S>>> = BTreeMap::new();
    for r in rules {
        by_source.entry(r.source).or_default().push(r);
    }
    let mut next_class = 1u32;
    for (source, rules) in by_source {
        // The rules by their (truncated) prefix, and the prefix lengths in use: a prefix's
        // candidates are the rules at its ancestors of those lengths (not a scan of every rule
        // per prefix, which was quadratic in the chains of one source).
        let mut at: HashMap<IpNet, Vec<usize>> = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            at.entry(r.destination.trunc()).or_default().push(i);
        }
        let lengths: BTreeSet<(bool, u8)> = at.keys().map(|p| (p.addr().is_ipv6(), p.prefix_len())).collect();
        let mut prefixes: Vec<IpNet> = at.keys().copied().collect();
        prefixes.sort();
        for p in prefixes {
            let ancestors = lengths.iter().filter(|(v6, len)| *v6 == p.addr().is_ipv6() && *len <= p.prefix_len());
            let mut found: Vec<usize> = ancestors
                .filter_map(|(_, len)| IpNet::new(p.addr(), *len).ok().map(|a| a.trunc()))
                .filter_map(|a| at.get(&a))
                .flatten()
                .copied()
                .collect();
            found.sort_unstable();
            let mut candidates: Vec<&Rule<S>> = found.into_iter().map(|i| rules[i]).collect();
            // Stable: among equals, the caller's order decides.
            candidates.sort_by(|a, b| b.priority.cmp(&a.priority).then(b.destination.prefix_len().cmp(&a.destination.prefix_len())));
            let class = next_class;
            next_class += 1;
            // This class's fragment entries (those before it are other classes').
            let frags_from = t.frags.len();
            let source_ports = candidates.iter().any(|r| !r.source_ports.is_empty());
            t.classes.push(ClassEntry { source, destination: p, class, source_ports });
            let (mut l4, mut l4_src): (Vec<L4Entry>, Vec<L4Entry>) = (Vec::new(), Vec::new());
            for (rank, r) in candidates.iter().enumerate() {
                let by_source = !r.source_ports.is_empty();
                let ports = if by_source { &r.source_ports } else { &r.ports };
                let space = if by_source { &mut l4_src } else { &mut l4 };
                add_l4(space, class, rank as u32, r.proto, ports, by_source, r.target);
                let frag_covered = t.frags[frags_from..].iter().any(|f| f.proto.is_none() || f.proto == r.proto);
                if !frag_covered {
                    let protos: Vec<Option<u8>> = match (r.proto, ports.is_empty()) {
                        (None, false) => vec![Some(6), Some(17)],
                        (p, _) => vec![p],
                    };
                    for proto in protos {
                        if !t.frags[frags_from..].iter().any(|f| f.proto == proto) {
                            t.frags.push(FragEntry { class, proto, target: r.target });
                        }
                    }
                }
            }
            t.l4.extend(l4);
            t.l4.extend(l4_src);
        }
    }
    t
}

/// A rule's stage-2 entries in one key space (destination or source ports), only where no
/// earlier rule of the class already covers them.
fn add_l4(space: &mut Vec<L4Entry>, class: u32, rank: u32, proto: Option<u8>, ports: &[(u16, u16)], by_source: bool, target: usize) {
    // (protocol, port block): None = any protocol, no block = any port.
    type Want = (Option<u8>, Option<(u16, u8)>);
    let wanted: Vec<Want> = match (proto, ports.is_empty()) {
        (p, true) => vec![(p, None)],
        // Ports mean TCP or UDP: "any protocol" with ports is both.
        (p, false) => {
            let protos = p.map_or(vec![6, 17], |p| vec![p]);
            let blocks: Vec<(u16, u8)> = ports.iter().flat_map(|&(lo, hi)| port_blocks(lo, hi)).collect();
            protos.into_iter().flat_map(|p| blocks.iter().map(move |b| (Some(p), Some(*b)))).collect()
        }
    };
    for (proto, block) in wanted {
        let covered = space.iter().any(|e| match (e.proto, proto, block) {
            (None, _, _) => true,
            (Some(_), None, _) => false,
            (Some(ep), Some(p), _) if ep != p => false,
            (Some(_), Some(_), None) => e.port_len == 0,
            (Some(_), Some(_), Some(b)) => block_contains((e.port, e.port_len), b),
        });
        if !covered {
            let (port, port_len) = block.unwrap_or((0, 0));
            space.push(L4Entry { class, proto, port, port_len, by_source, rank, target });
        }
    }
}

/// What the tables decide for a packet (the datapath's lookup, for tests and `trace`): `ports`
/// is (source, destination) for a TCP/UDP packet that is not a fragment, None for a fragment.
pub fn lookup<S: PartialEq>(t: &Tables<S>, source: S, dst: IpAddr, proto: u8, ports: Option<(u16, u16)>) -> Option<usize> {
    let c = t.classes.iter().filter(|c| c.source == source && c.destination.contains(&dst)).max_by_key(|c| c.destination.prefix_len())?;
    let class = c.class;
    let Some((sport, dport)) = ports else {
        return t
            .frags
            .iter()
            .find(|f| f.class == class && f.proto == Some(proto))
            .or_else(|| t.frags.iter().find(|f| f.class == class && f.proto.is_none()))
            .map(|f| f.target);
    };
    // The longest match in each key space, as an LPM trie answers; then the lower rank.
    let best = |by_source: bool, port: u16| {
        t.l4.iter()
            .filter(|e| e.class == class && e.by_source == by_source && (e.proto.is_none() || e.proto == Some(proto)))
            .filter(|e| e.proto.is_none() || block_contains((e.port, e.port_len), (port, 16)))
            .max_by_key(|e| if e.proto.is_none() { 0 } else { 8 + e.port_len as u32 })
    };
    let by_dst = best(false, dport);
    let by_src = if c.source_ports { best(true, sport) } else { None };
    [by_dst, by_src].into_iter().flatten().min_by_key(|e| e.rank).map(|e| e.target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(dst: &str, proto: Option<u8>, ports: &[(u16, u16)], priority: i32, target: usize) -> Rule {
        Rule {
            source: "fd00::2".parse().unwrap(),
            destination: dst.parse().unwrap(),
            proto,
            ports: ports.to_vec(),
            source_ports: vec![],
            priority,
            target,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Against a scan of every rule, over nested and overlapping prefixes of both families,
    /// protocols, ports and priorities: every lookup finds the first rule (higher priority, then
    /// the more specific prefix, then the caller's order) matching address, protocol and port.
    #[test]
    fn lookups_agree_with_a_scan_of_every_rule() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut rules = Vec::new();
        for target in 0..400 {
            let (dst, len) = if next(3) > 0 {
                (format!("fd00:99:{:x}:{:x}::", next(3), next(3)), [32u8, 40, 48, 56, 64][next(5) as usize])
            } else {
                (format!("10.{}.{}.0", next(3), next(3)), [8u8, 16, 24][next(3) as usize])
            };
            let destination = IpNet::new(ip(&dst), len).unwrap();
            let proto = [None, Some(6), Some(17)][next(3) as usize];
            let lo = 8000 + next(4) as u16;
            let ports = if proto.is_some() && next(2) == 0 { vec![(lo, lo + next(3) as u16)] } else { vec![] };
            rules.push(Rule { destination, proto, ports, priority: next(3) as i32, ..rule("::/0", None, &[], 0, target) });
        }
        let t = build(&rules);
        let source: IpAddr = ip("fd00::2");
        for _ in 0..3000 {
            let dst = if next(3) > 0 {
                ip(&format!("fd00:99:{:x}:{:x}::{:x}", next(4), next(4), next(9)))
            } else {
                ip(&format!("10.{}.{}.{}", next(4), next(4), next(9)))
            };
            let proto = [6u8, 17, 1][next(3) as usize];
            let port = 7999 + next(7) as u16;
            let mut matching: Vec<&Rule> = rules
                .iter()
                .filter(|r| r.destination.contains(&dst) && r.proto.is_none_or(|p| p == proto))
                .filter(|r| r.ports.is_empty() || r.ports.iter().any(|(lo, hi)| (*lo..=*hi).contains(&port)))
                .collect();
            matching.sort_by(|a, b| b.priority.cmp(&a.priority).then(b.destination.prefix_len().cmp(&a.destination.prefix_len())));
            let want = matching.first().map(|r| r.target);
            assert_eq!(lookup(&t, source, dst, proto, Some((40000, port))), want, "{dst} proto {proto} port {port}");
        }
    }

    #[test]
    fn port_ranges_split_into_aligned_blocks() {
        assert_eq!(port_blocks(80, 80), [(80, 16)]);
        let blocks = port_blocks(8000, 8080);
        let covered: u32 = blocks.iter().map(|(_, l)| 1u32 << (16 - l)).sum();
        assert_eq!(covered, 81);
        for p in 8000..=8080 {
            assert!(blocks.iter().any(|b| block_contains(*b, (p, 16))), "{p}");
        }
        assert!(!blocks.iter().any(|b| block_contains(*b, (7999, 16)) || block_contains(*b, (8081, 16))));
        assert_eq!(port_blocks(0, 65535), [(0, 0)]);
        assert!(port_blocks(1, 65535).len() <= 16);
    }

    #[test]
    fn priority_then_specificity_with_no_per_chain_scan() {
        let rules = [
            rule("fd00:20::/64", Some(6), &[(80, 80)], 0, 1),    // web, low priority
            rule("fd00:20::/48", None, &[], 10, 2),              // everything, high priority
            rule("fd00:20::5/128", Some(17), &[(53, 53)], 0, 3), // dns to one host
            rule("fd00:30::/64", Some(6), &[(8000, 8080)], 0, 4),
            rule("fd00:30::/64", Some(6), &[], 0, 5),
        ];
        let t = build(&rules);
        let s = ip("fd00::2");
        assert_eq!(lookup(&t, s, ip("fd00:20::9"), 6, Some((40000, 80))), Some(2), "higher priority wins over more specific");
        assert_eq!(lookup(&t, s, ip("fd00:20::5"), 17, Some((40000, 53))), Some(2));
        assert_eq!(lookup(&t, s, ip("fd00:30::1"), 6, Some((40000, 8080))), Some(4), "port range");
        assert_eq!(lookup(&t, s, ip("fd00:30::1"), 6, Some((40000, 8081))), Some(5), "then any port");
        assert_eq!(lookup(&t, s, ip("fd00:30::1"), 17, Some((40000, 8080))), None, "protocol");
        assert_eq!(lookup(&t, s, ip("fd00:40::1"), 6, Some((40000, 80))), None);
        assert_eq!(lookup(&t, ip("fd00::3"), ip("fd00:20::9"), 6, Some((40000, 80))), None, "another source");
        assert_eq!(t.classes.len(), 4);
    }

    #[test]
    fn equal_priority_prefers_the_more_specific_match() {
        let rules = [rule("fd00:20::/48", Some(6), &[], 0, 1), rule("fd00:20::/64", Some(6), &[(443, 443)], 0, 2)];
        let t = build(&rules);
        let s = ip("fd00::2");
        assert_eq!(lookup(&t, s, ip("fd00:20::1"), 6, Some((40000, 443))), Some(2));
        assert_eq!(lookup(&t, s, ip("fd00:20::1"), 6, Some((40000, 22))), Some(1));
        assert_eq!(lookup(&t, s, ip("fd00:20:0:1::1"), 6, Some((40000, 443))), Some(1));
    }

    #[test]
    fn fragments_follow_addresses_and_protocol() {
        let rules = [rule("10.20.0.0/16", Some(17), &[(53, 53)], 0, 7), rule("10.20.0.0/16", Some(6), &[(443, 443)], 5, 8)];
        let mut rules = rules.to_vec();
        for r in &mut rules {
            r.source = ip("10.10.1.2");
        }
        let t = build(&rules);
        let s = ip("10.10.1.2");
        assert_eq!(lookup(&t, s, ip("10.20.1.1"), 17, None), Some(7), "a UDP fragment of the DNS chain's addresses");
        assert_eq!(lookup(&t, s, ip("10.20.1.1"), 6, None), Some(8));
        assert_eq!(lookup(&t, s, ip("10.20.1.1"), 1, None), None, "another protocol is not steered");
        assert_eq!(lookup(&t, s, ip("10.20.1.1"), 17, Some((40000, 54))), None, "unfragmented: ports count");
    }

    #[test]
    fn any_protocol_with_ports_means_tcp_and_udp() {
        let t = build(&[rule("fd00:20::/64", None, &[(5000, 5001)], 0, 1)]);
        let s = ip("fd00::2");
        assert_eq!(lookup(&t, s, ip("fd00:20::1"), 6, Some((40000, 5001))), Some(1));
        assert_eq!(lookup(&t, s, ip("fd00:20::1"), 17, Some((40000, 5000))), Some(1));
        assert_eq!(lookup(&t, s, ip("fd00:20::1"), 132, Some((40000, 5000))), None);
    }

    #[test]
    fn reverse_rules_match_source_ports_and_priorities_hold_across() {
        let s = ip("fd00::2");
        let mut back = rule("fd00:10::2/128", Some(6), &[], 5, 1);
        back.source_ports = vec![(443, 443)];
        // A lower-priority forward rule of another chain to the same prefix, and a higher one.
        let low = rule("fd00:10::/64", Some(6), &[(443, 443), (8000, 8000)], 0, 2);
        let t = build(&[back.clone(), low.clone()]);
        assert!(t.classes.iter().any(|c| c.source_ports));
        assert_eq!(lookup(&t, s, ip("fd00:10::2"), 6, Some((443, 51000))), Some(1), "the reply of a :443 flow");
        assert_eq!(lookup(&t, s, ip("fd00:10::2"), 6, Some((22, 51000))), None, "other traffic to the client is not");
        assert_eq!(lookup(&t, s, ip("fd00:10::2"), 6, Some((22, 8000))), Some(2), "the other chain's own match");
        assert_eq!(lookup(&t, s, ip("fd00:10::2"), 6, Some((443, 8000))), Some(1), "priority 5 over 0");
        assert_eq!(lookup(&t, s, ip("fd00:10::2"), 17, Some((443, 51000))), None, "the protocol too");
        let high = rule("fd00:10::/64", Some(6), &[(8000, 8000)], 9, 3);
        let t = build(&[back, high]);
        assert_eq!(lookup(&t, s, ip("fd00:10::2"), 6, Some((443, 8000))), Some(3), "priority 9 over 5");
        assert_eq!(lookup(&t, s, ip("fd00:10::2"), 6, Some((443, 8001))), Some(1));
    }
}
