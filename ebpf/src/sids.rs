//! Local SIDs (`sp_sids`) and their counters (`sp_sid_stats`, a per-CPU array): each SID's
//! entry holds the index of its counters, given here, so that the datapath reaches them from the
//! entry it looked up instead of hashing the SID a second time.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;

use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuValues};

use crate::maps::{SidEntry, SidStats, SidValue};
use crate::{ignore_missing, Datapath, DatapathError, Result};

/// Counter indexes, given lowest first (pure: the datapath's own bookkeeping): those below
/// `high` that are not in `free` are in use.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    free: BTreeSet<u32>,
    high: u32,
    capacity: u32,
}

impl Slots {
    /// Slots `0..capacity`, those in `used` taken (the entries a previous daemon left pinned).
    pub fn new(capacity: u32, used: impl IntoIterator<Item = u32>) -> Self {
        let used: BTreeSet<u32> = used.into_iter().filter(|&s| s < capacity).collect();
        let high = used.last().map_or(0, |&s| s + 1);
        Slots { free: (0..high).filter(|s| !used.contains(s)).collect(), high, capacity }
    }

    /// Takes the lowest free slot, or None when all are taken.
    pub fn take(&mut self) -> Option<u32> {
        if let Some(s) = self.free.pop_first() {
            return Some(s);
        }
        (self.high < self.capacity).then(|| {
            self.high += 1;
            self.high - 1
        })
    }

    pub fn free(&mut self, slot: u32) {
        if slot < self.high {
            self.free.insert(slot);
        }
    }
}

impl Datapath {
    /// The counter slots of the SIDs pinned now (a restarted daemon's SIDs keep theirs).
    pub(crate) fn sid_slots(&self) -> Result<Slots> {
        let stats: PerCpuArray<&MapData, SidStats> = self.typed_ref("sp_sid_stats")?;
        Ok(Slots::new(stats.len(), self.sid_values()?.into_iter().map(|(_, v)| v.stats)))
    }

    fn sid_value(&self, sid: Ipv6Addr) -> Result<Option<SidValue>> {
        let sids: HashMap<&MapData, [u8; 16], SidValue> = self.typed_ref("sp_sids")?;
        match sids.get(&sid.octets(), 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DatapathError::Map { map: "sp_sids", source }),
        }
    }

    fn sid_values(&self) -> Result<Vec<(Ipv6Addr, SidValue)>> {
        let sids: HashMap<&MapData, [u8; 16], SidValue> = self.typed_ref("sp_sids")?;
        sids.iter()
            .map(|r| r.map(|(k, v)| (Ipv6Addr::from(k), v)))
            .collect::<std::result::Result<_, _>>()
            .map_err(|source| DatapathError::Map { map: "sp_sids", source })
    }

    /// Installs a local SID; its counters start at zero unless it had some (a re-installed SID
    /// keeps its slot).
    pub fn set_sid(&mut self, sid: Ipv6Addr, entry: SidEntry) -> Result<()> {
        let (stats, fresh) = match self.sid_value(sid)? {
            Some(had) => (had.stats, false),
            None => {
                let slot =
                    self.stats_slots.take().ok_or_else(|| DatapathError::Invalid(format!("SID {sid}: every counter slot is taken")))?;
                (slot, true)
            }
        };
        let inserted = if fresh { self.zero_sid_stats(stats) } else { Ok(()) }.and_then(|()| {
            let mut sids: HashMap<&mut MapData, [u8; 16], SidValue> = self.typed("sp_sids")?;
            sids.insert(sid.octets(), SidValue { entry, stats }, 0).map_err(|source| DatapathError::Map { map: "sp_sids", source })
        });
        // A slot given for a SID that did not go in is free again.
        if inserted.is_err() && fresh {
            self.stats_slots.free(stats);
        }
        inserted
    }

    fn zero_sid_stats(&mut self, slot: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(m, e)| DatapathError::Invalid(format!("{m}: {e}")))?;
        let zero = PerCpuValues::try_from(vec![SidStats::default(); cpus]).map_err(|e| DatapathError::Invalid(e.to_string()))?;
        let mut stats: PerCpuArray<&mut MapData, SidStats> = self.typed("sp_sid_stats")?;
        stats.set(slot, zero, 0).map_err(|source| DatapathError::Map { map: "sp_sid_stats", source })
    }

    pub fn remove_sid(&mut self, sid: Ipv6Addr) -> Result<()> {
        let Some(had) = self.sid_value(sid)? else { return Ok(()) };
        let mut sids: HashMap<&mut MapData, [u8; 16], SidValue> = self.typed("sp_sids")?;
        ignore_missing(sids.remove(&sid.octets()), "sp_sids")?;
        self.stats_slots.free(had.stats);
        Ok(())
    }

    pub fn sids(&self) -> Result<Vec<(Ipv6Addr, SidEntry)>> {
        Ok(self.sid_values()?.into_iter().map(|(sid, v)| (sid, v.entry)).collect())
    }

    /// Counters of a SID summed over CPUs (zeros for a SID not installed).
    pub fn sid_stats(&self, sid: Ipv6Addr) -> Result<SidStats> {
        let Some(v) = self.sid_value(sid)? else { return Ok(SidStats::default()) };
        let stats: PerCpuArray<&MapData, SidStats> = self.typed_ref("sp_sid_stats")?;
        let per_cpu = stats.get(&v.stats, 0).map_err(|source| DatapathError::Map { map: "sp_sid_stats", source })?;
        Ok(per_cpu.iter().fold(SidStats::default(), |a, s| a.plus(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::Slots;

    #[test]
    fn slots_go_lowest_first_and_come_back() {
        let mut s = Slots::new(4, [1]);
        assert_eq!(s.take(), Some(0));
        assert_eq!(s.take(), Some(2), "1 was taken when the daemon found it pinned");
        assert_eq!(s.take(), Some(3));
        assert_eq!(s.take(), None, "all four taken");
        s.free(2);
        assert_eq!(s.take(), Some(2), "a freed slot is given again");
        s.free(0);
        s.free(0);
        assert_eq!(s.take(), Some(0));
        assert_eq!(s.take(), None);
    }

    #[test]
    fn slots_out_of_range_are_not_counted() {
        let mut s = Slots::new(2, [7]);
        assert_eq!((s.take(), s.take(), s.take()), (Some(0), Some(1), None));
    }
}
