//! How the programs are attached to interfaces: tcx links pinned per interface (adopted from a
//! previous daemon, kept at the head of their chains), `sp_vnf` as a cls_bpf filter, and
//! `sp_stream_pod` inside a pod's netns.

use std::collections::BTreeMap;
use std::path::Path;

use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle};
use aya::programs::{SchedClassifier, TcAttachType};

use crate::{classifier, load_object, Datapath, DatapathError, Result};

/// Which program an interface gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    Uplink,
    /// On srv6pipes' own VNF veths, where no other program runs, so it needs no place in a tcx
    /// chain: it is a cls_bpf filter (direct action) on the interface's clsact ingress. A tcx
    /// attach publishes the device's new program array with `synchronize_rcu()` under RTNL
    /// (`tcx_entry_sync`): 10-40 ms on a CNI ADD's answer path, during which every netlink
    /// request on the node waits; a filter on a fresh clsact is in place in ~0.1 ms.
    Vnf,
    Headend,
    /// Inside a stream proxy's netns; keyed (and pinned) by the node-side end of its veth.
    StreamPod,
}

impl Hook {
    pub fn program(self) -> &'static str {
        match self {
            Hook::Uplink => "sp_uplink",
            Hook::Vnf => "sp_vnf",
            Hook::Headend => "sp_headend",
            Hook::StreamPod => "sp_stream_pod",
        }
    }

    pub(crate) const ALL: [Hook; 4] = [Hook::Uplink, Hook::Vnf, Hook::Headend, Hook::StreamPod];

    fn tag(self) -> &'static str {
        match self {
            Hook::Uplink => "uplink",
            Hook::Vnf => "vnf",
            Hook::Headend => "headend",
            Hook::StreamPod => "streampod",
        }
    }

    fn from_tag(tag: &str) -> Option<Self> {
        Hook::ALL.into_iter().find(|h| h.tag() == tag)
    }
}

/// How a hook's program is attached to an interface. Both outlive the daemon (restarts and
/// upgrades do not touch traffic).
pub(crate) enum Attached {
    /// A tcx link pinned at `<pin dir>/links/<hook>-<ifname>-<ifindex>`, until it is unpinned or
    /// its interface goes away. The ifindex in the name tells a live pin from one whose interface
    /// was replaced; kept here so that the order check needs no lookup by name. (VNF links
    /// pinned by a daemon before filters are adopted and kept.)
    Link { link: PinnedLink, ifindex: u32 },
    /// A cls_bpf filter at [`FILTER_PRIORITY`]/[`FILTER_HANDLE`] on `ifindex`'s clsact ingress: it
    /// goes with the interface, and a restarted daemon replaces it with its own program.
    Filter { ifindex: u32 },
}

/// Where `sp_vnf`'s filter sits on a VNF veth's clsact ingress.
const FILTER_PRIORITY: u16 = 1;
const FILTER_HANDLE: TcHandle = TcHandle::new(0, 1);

impl Datapath {
    pub(crate) fn adopt_pinned_links(&mut self) -> Result<()> {
        let entries =
            std::fs::read_dir(&self.links_dir).map_err(|e| DatapathError::Invalid(format!("read {}: {e}", self.links_dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let parsed = parse_link_pin(&name);
            let live =
                parsed.as_ref().is_some_and(|(_, ifname, ifindex)| nix::net::if_::if_nametoindex(ifname.as_str()).ok() == Some(*ifindex));
            match (parsed, live) {
                (Some((hook, ifname, ifindex)), true) => {
                    let link =
                        PinnedLink::from_pin(&path).map_err(|e| DatapathError::Invalid(format!("adopt link {}: {e}", path.display())))?;
                    self.links.insert((hook, ifname.clone()), Attached::Link { link, ifindex });
                    self.adopted.push((hook, ifname, path));
                }
                // The interface is gone (its link with it) or was replaced: drop the stale pin.
                _ => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(())
    }

    /// Attaches `hook`'s program at the head of `ifname`'s tcx ingress chain (before programs
    /// already there, e.g. the primary CNI's, which may end the chain with `TC_ACT_OK`; ours
    /// returns `TCX_NEXT` for what is not its own) and pins the link; [`Hook::Vnf`]'s as a
    /// filter instead. Attaching twice is a no-op.
    pub fn attach(&mut self, hook: Hook, ifname: &str) -> Result<()> {
        if self.links.contains_key(&(hook, ifname.to_string())) {
            return Ok(());
        }
        let attached = match hook {
            Hook::Vnf => Attached::Filter { ifindex: self.attach_filter(hook, ifname)? },
            _ => self.attach_first(hook, ifname, false)?,
        };
        self.links.insert((hook, ifname.to_string()), attached);
        Ok(())
    }

    /// `hook`'s program as the direct-action filter at [`FILTER_PRIORITY`]/[`FILTER_HANDLE`] of
    /// `ifname`'s clsact ingress (the qdisc added if missing). A filter already there (a previous
    /// daemon's) gets this instance's program, swapped in atomically. Returns the ifindex.
    fn attach_filter(&mut self, hook: Hook, ifname: &str) -> Result<u32> {
        let program = hook.program();
        let attach_err = |source| DatapathError::Attach { program, ifname: ifname.into(), source };
        let ifindex =
            nix::net::if_::if_nametoindex(ifname).map_err(|e| DatapathError::Invalid(format!("attach {program} on {ifname}: {e}")))?;
        match aya::programs::tc::qdisc_add_clsact(ifname) {
            Ok(()) => {}
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(attach_err(e.into())),
        }
        let prog = classifier(&mut self.bpf, hook);
        let options = TcAttachOptions::Netlink(NlOptions { priority: FILTER_PRIORITY, handle: FILTER_HANDLE, classid: None });
        let id = match prog.attach_with_options(ifname, TcAttachType::Ingress, options) {
            Ok(id) => id,
            Err(aya::programs::ProgramError::TcError(TcError::NetlinkError(e))) if e.raw_os_error() == Some(libc::EEXIST) => {
                let there = SchedClassifierLink::attached(ifname, TcAttachType::Ingress, FILTER_PRIORITY, FILTER_HANDLE, None)
                    .map_err(|e| DatapathError::Invalid(format!("attach {program} on {ifname}: {e}")))?;
                prog.attach_to_link(there).map_err(attach_err)?
            }
            Err(e) => return Err(attach_err(e)),
        };
        // The filter must outlive this process, but a link dropped (or left with the program,
        // dropped at exit) removes it; it holds no descriptor, so forgetting it leaks nothing.
        std::mem::forget(prog.take_link(id).map_err(attach_err)?);
        Ok(ifindex)
    }

    /// A new link of `hook`'s program (of the spare instance with `spare`) at the head of
    /// `ifname`'s tcx ingress, pinned at its path (replacing an older pin there atomically: the
    /// older link, once its last descriptor goes, is detached; until then both run, the new one
    /// first, so no packet misses the program).
    fn attach_first(&mut self, hook: Hook, ifname: &str, spare: bool) -> Result<Attached> {
        self.attach_first_in(hook, ifname, spare, None)
    }

    /// `attach_first`, on `pod`'s interface (netns path, interface name) instead of `ifname`,
    /// which still names the pin: the node-side end of the pod's veth.
    fn attach_first_in(&mut self, hook: Hook, ifname: &str, spare: bool, pod: Option<(&Path, &str)>) -> Result<Attached> {
        let program = hook.program();
        let attach_err = |source| DatapathError::Attach { program, ifname: ifname.into(), source };
        let ifindex =
            nix::net::if_::if_nametoindex(ifname).map_err(|e| DatapathError::Invalid(format!("attach {program} on {ifname}: {e}")))?;
        let bpf = if spare {
            if self.spare.is_none() {
                self.spare = Some(load_object(&self.pin_dir)?);
            }
            self.spare.as_mut().expect("loaded")
        } else {
            &mut self.bpf
        };
        let prog = classifier(bpf, hook);
        let first = TcAttachOptions::TcxOrder(LinkOrder::first());
        let id = match pod {
            None => prog.attach_with_options(ifname, TcAttachType::Ingress, first).map_err(attach_err)?,
            Some((netns, pod_if)) => in_netns(netns, || prog.attach_with_options(pod_if, TcAttachType::Ingress, first))?
                .map_err(|source| DatapathError::Attach { program, ifname: format!("{pod_if} in {}", netns.display()), source })?,
        };
        let link: FdLink = prog
            .take_link(id)
            .map_err(attach_err)?
            .try_into()
            .map_err(|e| DatapathError::Invalid(format!("attach {program} on {ifname}: not a tcx link ({e})")))?;
        let path = self.links_dir.join(format!("{}-{ifname}-{ifindex}", hook.tag()));
        // bpffs refuses names with a dot; a leftover "new-" pin is not a link name: adoption drops it.
        let fresh = self.links_dir.join(format!("new-{}-{ifname}-{ifindex}", hook.tag()));
        let pin_err = |e: &dyn std::fmt::Display| DatapathError::Invalid(format!("pin link {}: {e}", path.display()));
        let _ = std::fs::remove_file(&fresh);
        let pinned = link.pin(&fresh).map_err(|e| pin_err(&e))?;
        std::fs::rename(&fresh, &path).map_err(|e| pin_err(&e))?;
        drop(pinned); // its path is gone; the pin at `path` holds the link
        Ok(Attached::Link { link: PinnedLink::from_pin(&path).map_err(|e| pin_err(&e))?, ifindex })
    }

    /// Attaches `sp_stream_pod` on a stream proxy's chain interface `pod_ifname` inside its netns
    /// `netns`, pinned under the node-side end `host_ifname` of its veth (the link goes with the
    /// pod's netns; adoption after a restart checks the node-side end). Twice is a no-op.
    pub fn attach_in_pod(&mut self, host_ifname: &str, netns: &Path, pod_ifname: &str) -> Result<()> {
        let key = (Hook::StreamPod, host_ifname.to_string());
        if self.links.contains_key(&key) {
            return Ok(());
        }
        let attached = self.attach_first_in(Hook::StreamPod, host_ifname, false, Some((netns, pod_ifname)))?;
        self.links.insert(key, attached);
        Ok(())
    }

    /// Puts our program back at the head of every interface where another program was inserted
    /// in front of it since (a primary CNI re-inserting itself; one attached before this daemon
    /// started, ahead of adopted links): attached again first — from the instance that is not
    /// in that chain yet — then the old link released. Returns the (hook, interface) pairs
    /// moved. An interface that is gone is skipped.
    pub fn keep_first(&mut self) -> Result<Vec<(Hook, String)>> {
        let mut ours = BTreeMap::new();
        for hook in Hook::ALL.into_iter().filter(|h| *h != Hook::StreamPod) {
            ours.insert(hook, self.program_id(hook)?);
        }
        // Every second on every interface (hundreds on a node with many pods): one query for
        // the head's id, by the ifindex kept with the link, answers the usual case (a lookup
        // by name would open a socket each time: ~20 µs, 20 ms a second at 1,000 interfaces);
        // only another head costs the full query (which opens each program of the chain).
        let displaced: Vec<(Hook, String)> = self
            .links
            .iter()
            .filter_map(|((hook, ifname), a)| match a {
                Attached::Link { ifindex, .. } if ours.get(hook).is_some_and(|id| first_tcx_ingress(*ifindex) != Some(*id)) => {
                    Some((*hook, ifname.clone()))
                }
                _ => None,
            })
            .collect();
        let mut moved = Vec::new();
        for (hook, ifname) in displaced {
            let Ok((_, progs)) = SchedClassifier::query_tcx(&ifname, TcAttachType::Ingress) else { continue };
            if progs.first().and_then(|p| p.name_as_str()) == Some(hook.program()) {
                continue;
            }
            let spare = progs.iter().any(|p| p.id() == ours[&hook]);
            let attached = self.attach_first(hook, &ifname, spare)?;
            // The replaced link's descriptor goes with it (its pin is already gone).
            self.links.insert((hook, ifname.clone()), attached);
            moved.push((hook, ifname));
        }
        Ok(moved)
    }

    /// Unpins and so detaches (removes the filter); an interface that is already gone (its link
    /// or filter with it) is fine.
    pub fn detach(&mut self, hook: Hook, ifname: &str) -> Result<()> {
        let Some(a) = self.links.remove(&(hook, ifname.to_string())) else { return Ok(()) };
        let link = match a {
            Attached::Link { link, .. } => link,
            Attached::Filter { ifindex } => return detach_filter(hook, ifname, ifindex),
        };
        match link.unpin() {
            Ok(fd) => drop(fd),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DatapathError::Invalid(format!("unpin {} link on {ifname}: {e}", hook.program()))),
        }
        Ok(())
    }

    pub fn attached(&self) -> impl Iterator<Item = (Hook, &str)> {
        self.links.keys().map(|(h, i)| (*h, i.as_str()))
    }
}

/// Runs `f` on a thread of its own moved into the network namespace at `netns`.
fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = std::fs::File::open(netns).map_err(|e| DatapathError::Invalid(format!("open netns {}: {e}", netns.display())))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| DatapathError::Invalid(format!("enter netns {}: {e}", netns.display())))?;
            Ok(f())
        })
        .join()
        .map_err(|_| DatapathError::Invalid(format!("thread in netns {} panicked", netns.display())))?
    })
}

/// Removes `hook`'s filter from `ifname` if that name still has `ifindex` (a veth of the same
/// name made since is not ours to touch).
fn detach_filter(hook: Hook, ifname: &str, ifindex: u32) -> Result<()> {
    if nix::net::if_::if_nametoindex(ifname).ok() != Some(ifindex) {
        return Ok(());
    }
    let link = SchedClassifierLink::attached(ifname, TcAttachType::Ingress, FILTER_PRIORITY, FILTER_HANDLE, None);
    let gone = |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENOENT));
    let result = match link {
        Ok(link) => {
            use aya::programs::links::Link as _;
            link.detach()
        }
        Err(e) if gone(&e) => return Ok(()),
        Err(e) => return Err(DatapathError::Invalid(format!("detach {} on {ifname}: {e}", hook.program()))),
    };
    match result {
        Err(aya::programs::ProgramError::NetlinkError(e) | aya::programs::ProgramError::TcError(TcError::NetlinkError(e)))
            if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENOENT | libc::EINVAL)) =>
        {
            Ok(())
        }
        r => r.map_err(|source| DatapathError::Attach { program: hook.program(), ifname: ifname.into(), source }),
    }
}

/// `<hook>-<ifname>-<ifindex>` (interface names may contain '-').
fn parse_link_pin(name: &str) -> Option<(Hook, String, u32)> {
    let (hook, rest) = name.split_once('-')?;
    let (ifname, ifindex) = rest.rsplit_once('-')?;
    Some((Hook::from_tag(hook)?, ifname.to_string(), ifindex.parse().ok()?))
}

/// The id of the first program in `ifindex`'s tcx ingress chain, by one BPF_PROG_QUERY that
/// opens no program; None if the chain is empty or the query fails (the interface is gone).
pub fn first_tcx_ingress(ifindex: u32) -> Option<u32> {
    /// `union bpf_attr`'s BPF_PROG_QUERY part (linux/bpf.h).
    #[repr(C)]
    #[derive(Default)]
    struct ProgQuery {
        target_ifindex: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_TCX_INGRESS: u32 = 46;
    let mut first = 0u32;
    let mut q = ProgQuery {
        target_ifindex: ifindex,
        attach_type: BPF_TCX_INGRESS,
        prog_ids: &mut first as *mut u32 as u64,
        prog_cnt: 1,
        ..Default::default()
    };
    // SAFETY: `q` is a valid BPF_PROG_QUERY attribute of the size passed; the kernel writes at
    // most `prog_cnt` (1) ids to `prog_ids`, which points at `first`, alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, &mut q as *mut ProgQuery, std::mem::size_of::<ProgQuery>()) };
    // ENOSPC: more programs than the one id asked for; the first is written all the same.
    let answered = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSPC);
    (answered && q.prog_cnt > 0 && first != 0).then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names_roundtrip() {
        assert_eq!(parse_link_pin("vnf-sp12ab-7"), Some((Hook::Vnf, "sp12ab".into(), 7)));
        assert_eq!(parse_link_pin("headend-veth-a-b-12"), Some((Hook::Headend, "veth-a-b".into(), 12)));
        assert_eq!(parse_link_pin("uplink-eth0-x"), None);
        assert_eq!(parse_link_pin("other-eth0-1"), None);
    }
}
