//! What a run leaves when it cannot clean up after itself: killed by a signal (its `Cleanup`
//! never runs) or by SIGKILL. Everything a run makes is named by its tag, `spb<pid>`: its netns
//! (`spb<pid>-*`), its labs (`spb<pid>-kube`, `spb<pid>-pipes`), its BPF pins and its run
//! directory, and the processes it starts sit in those netns or name that directory. A run
//! sweeps its own tag when SIGINT, SIGTERM or SIGHUP stops it ([`on_signals`]), and at its start
//! the tags of runs that are gone ([`stale`]).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::{SigSet, Signal};

/// The tag of the run with process id `pid`.
fn tag_of(pid: u32) -> String {
    format!("spb{pid}")
}

/// This run's tag.
pub fn own_tag() -> String {
    tag_of(std::process::id())
}

/// The pid in a name that starts with a run's tag (`spb<pid>`, alone or followed by `-`).
fn tag_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("spb")?;
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    (digits > 0 && (digits == rest.len() || rest[digits..].starts_with('-'))).then(|| rest[..digits].parse().ok())?
}

/// Whether `name` is `tag` or starts with `tag-`.
fn tagged(name: &str, tag: &str) -> bool {
    name.strip_prefix(tag).is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
}

/// Whether `cmdline` (NUL-separated) names `tag` as a whole word (`spb12` is not in `spb123`).
fn names_tag(cmdline: &[u8], tag: &str) -> bool {
    let tag = tag.as_bytes();
    cmdline.windows(tag.len()).enumerate().any(|(i, w)| w == tag && !cmdline.get(i + tag.len()).is_some_and(u8::is_ascii_digit))
}

fn names_in(dir: &str) -> Vec<String> {
    std::fs::read_dir(dir).into_iter().flatten().flatten().filter_map(|e| e.file_name().into_string().ok()).collect()
}

/// Runs' pins: `/sys/fs/bpf/srv6pipes-bench-<tag>`.
const PINS: &str = "srv6pipes-bench-";

/// Removes what the run tagged `tag` made: its labs (`srv6pipes lab down`, in `bin_dir`), the
/// processes in its netns or naming it, its netns, pins and run directory. What it removed, for
/// the log.
pub fn sweep(tag: &str, bin_dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    for lab in names_in("/run/srv6pipes/labs").into_iter().filter(|n| tagged(n, tag)) {
        let down = Command::new(bin_dir.join("srv6pipes")).args(["lab", "--name", &lab, "down"]).stdout(Stdio::null()).status();
        removed.push(format!("lab {lab} ({})", down.map_or_else(|e| e.to_string(), |s| s.to_string())));
    }
    let netns: Vec<String> = names_in("/run/netns").into_iter().filter(|n| tagged(n, tag)).collect();
    let inodes: HashSet<u64> = netns.iter().filter_map(|n| std::fs::metadata(crate::sys::netns_path(n)).ok()).map(|m| m.ino()).collect();
    let me = std::process::id();
    for pid in names_in("/proc").into_iter().filter_map(|p| p.parse::<u32>().ok()).filter(|p| *p != me) {
        let in_netns = std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| inodes.contains(&m.ino()));
        let ours = in_netns || std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| names_tag(&c, tag));
        if ours && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
            removed.push(format!("process {pid}"));
        }
    }
    for n in netns {
        if crate::sys::ip(None, &format!("netns del {n}")).is_ok() {
            removed.push(format!("netns {n}"));
        }
    }
    for dir in [PathBuf::from(format!("/sys/fs/bpf/{PINS}{tag}")), Path::new("/run/srv6pipes-bench").join(tag)] {
        if std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir.display().to_string());
        }
    }
    removed
}

/// Sweeps the tags of runs that are gone (no live `srv6pipes-bench` with that pid).
pub fn stale(bin_dir: &Path) {
    let pins = names_in("/sys/fs/bpf").into_iter().filter_map(|n| n.strip_prefix(PINS).map(str::to_string));
    let names =
        names_in("/run/netns").into_iter().chain(names_in("/run/srv6pipes-bench")).chain(names_in("/run/srv6pipes/labs")).chain(pins);
    let pids: HashSet<u32> = names.filter_map(|n| tag_pid(&n)).collect();
    for pid in pids {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "srv6pipes-bench" {
            continue;
        }
        let removed = sweep(&tag_of(pid), bin_dir);
        eprintln!("bench: removed what run {pid} left: {}", removed.join(", "));
    }
}

/// From now on SIGINT, SIGTERM and SIGHUP sweep this run's tag and end it (128 + the signal):
/// they are blocked in this thread (and in the threads it starts; the processes it starts get
/// an empty mask from `std::process`) and waited for by a thread of their own.
pub fn on_signals(tag: String, bin_dir: PathBuf) -> anyhow::Result<()> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()?;
    std::thread::spawn(move || {
        let Ok(signal) = set.wait() else { return };
        eprintln!("bench: {signal}: removing what this run made");
        let removed = sweep(&tag, &bin_dir);
        eprintln!("bench: removed {}", removed.join(", "));
        std::process::exit(128 + signal as i32);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_tag_is_told_from_other_names_and_other_runs() {
        assert_eq!(tag_pid(&tag_of(123)), Some(123));
        assert_eq!(tag_pid("spb123-sp-v4"), Some(123));
        for other in ["spb", "spb-1", "spb12x", "xspb1", "lab-1", ""] {
            assert_eq!(tag_pid(other), None, "{other}");
        }
        assert!(tagged("spb12", "spb12") && tagged("spb12-kube", "spb12"));
        assert!(!tagged("spb123", "spb12") && !tagged("spb123-kube", "spb12"));
        assert!(names_tag(b"etcd\0--data-dir=/run/srv6pipes-bench/spb12/sim/etcd\0", "spb12"));
        assert!(!names_tag(b"etcd\0--data-dir=/run/srv6pipes-bench/spb123/sim/etcd\0", "spb12"));
        assert!(names_tag(b"ip\0netns\0exec\0spb12", "spb12"));
    }
}
