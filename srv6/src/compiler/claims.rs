//! What the chains compiled so far claimed of the proxies: per interface, whether stream or
//! packet functions use it; per SID, each distinct kind of use. A chain is checked against them
//! in time independent of how many chains came before it (scanning every earlier chain's uses
//! made compiling 10,000 chains that share a VNF quadratic).

use std::collections::HashMap;
use std::sync::Arc;

use super::{Behavior, SidUse};
use crate::pipes::Pipeline;
use crate::sid::Sid;

/// A kind of use of a SID, as the clash check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Kind {
    behavior: Behavior,
    rewrites_flows: bool,
    pipeline: Option<Pipeline>,
}

/// The first two chains (in compilation order) that made a use: one of them is not the chain
/// being checked.
type Earliest = Vec<(u64, String)>;

fn note(e: &mut Earliest, seq: u64, chain: &str) {
    if e.len() < 2 && !e.iter().any(|(_, c)| c == chain) {
        e.push((seq, chain.to_string()));
    }
}

/// A clash found: the chain that made the use, its behaviour, whether it rewrites flows.
pub(crate) struct Clash<'a> {
    pub chain: &'a str,
    pub behavior: Behavior,
    pub rewrites_flows: bool,
}

#[derive(Default)]
pub(crate) struct Claims {
    next: u64,
    /// Interface -> the earliest chains using it for [packet, stream] functions.
    interfaces: HashMap<Arc<str>, [Earliest; 2]>,
    sids: HashMap<Sid, Vec<(Kind, Earliest)>>,
}

impl Claims {
    /// Records a use, in compilation order.
    pub(crate) fn add(&mut self, u: &SidUse) {
        let seq = self.next;
        self.next += 1;
        if let Some(name) = &u.interface {
            let slots = self.interfaces.entry(name.clone()).or_default();
            note(&mut slots[usize::from(u.behavior == Behavior::Stream)], seq, &u.chain);
        }
        let kind = Kind { behavior: u.behavior, rewrites_flows: u.rewrites_flows, pipeline: u.pipeline.clone() };
        let kinds = self.sids.entry(u.sid).or_default();
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, e)) => note(e, seq, &u.chain),
            None => {
                let mut e = Vec::new();
                note(&mut e, seq, &u.chain);
                kinds.push((kind, e));
            }
        }
    }

    /// The earliest chain using `interface` for the other kind of function (packet if
    /// `stream`, else stream).
    pub(crate) fn other_kind(&self, interface: &str, stream: bool) -> Option<&str> {
        self.interfaces.get(interface)?[usize::from(!stream)].first().map(|(_, c)| c.as_str())
    }

    /// The earliest use of `sid` that `clashes` (given its behaviour, whether it rewrites flows
    /// and its pipeline) by a chain other than `key`, or by any chain if `any_chain`.
    pub(crate) fn clash(
        &self,
        sid: Sid,
        key: &str,
        any_chain: bool,
        clashes: impl Fn(Behavior, bool, &Option<Pipeline>) -> bool,
    ) -> Option<Clash<'_>> {
        self.sids
            .get(&sid)?
            .iter()
            .filter(|(k, _)| clashes(k.behavior, k.rewrites_flows, &k.pipeline))
            .filter_map(|(k, e)| e.iter().find(|(_, c)| any_chain || c != key).map(|(seq, c)| (*seq, c, k)))
            .min_by_key(|(seq, _, _)| *seq)
            .map(|(_, chain, k)| Clash { chain, behavior: k.behavior, rewrites_flows: k.rewrites_flows })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(chain: &str, sid: &str, behavior: Behavior, interface: &str) -> SidUse {
        SidUse {
            sid: Sid(sid.parse().unwrap()),
            behavior,
            chain: chain.into(),
            interface: Some(interface.into()),
            return_path: Vec::new(),
            rewrites_flows: false,
            both_ways: false,
            pipeline: None,
        }
    }

    #[test]
    fn a_clash_names_the_earliest_other_chain_that_clashes() {
        let mut c = Claims::default();
        let sid = Sid("fcbb:bb00:1:e001::".parse().unwrap());
        for chain in ["ns/a", "ns/b", "ns/c"] {
            c.add(&usage(chain, "fcbb:bb00:1:e001::", Behavior::EndAD, "ns/fw:net1"));
        }
        let any = |_: Behavior, _: bool, _: &Option<Pipeline>| true;
        assert_eq!(c.clash(sid, "ns/a", false, any).map(|x| x.chain), Some("ns/b"), "not the chain itself");
        assert_eq!(c.clash(sid, "ns/c", false, any).map(|x| x.chain), Some("ns/a"));
        assert_eq!(c.clash(sid, "ns/a", true, any).map(|x| x.chain), Some("ns/a"), "any chain");
        // Only uses that clash count: End.AD beside End.AD does not, End.AS does.
        let not_end_ad = |b: Behavior, _: bool, _: &Option<Pipeline>| b != Behavior::EndAD;
        assert!(c.clash(sid, "ns/z", false, not_end_ad).is_none());
        c.add(&usage("ns/d", "fcbb:bb00:1:e001::", Behavior::EndAS, "ns/fw:net1"));
        let x = c.clash(sid, "ns/z", false, not_end_ad).unwrap();
        assert_eq!((x.chain, x.behavior), ("ns/d", Behavior::EndAS));
        assert!(c.clash(Sid("fcbb:bb00:1:e002::".parse().unwrap()), "ns/z", true, any).is_none(), "another SID");
    }

    #[test]
    fn an_interface_remembers_which_kinds_of_function_use_it() {
        let mut c = Claims::default();
        c.add(&usage("ns/a", "fcbb:bb00:1:e001::", Behavior::EndAD, "ns/p:net1"));
        assert_eq!(c.other_kind("ns/p:net1", true), Some("ns/a"), "a packet function uses it");
        assert_eq!(c.other_kind("ns/p:net1", false), None);
        c.add(&usage("ns/b", "fcbb:bb00:1:e001:5::", Behavior::Stream, "ns/p:net1"));
        assert_eq!(c.other_kind("ns/p:net1", false), Some("ns/b"), "and a stream function");
        assert_eq!(c.other_kind("ns/q:net1", false), None);
    }
}
