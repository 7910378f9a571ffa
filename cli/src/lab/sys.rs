//! Processes and namespaces for the lab: commands run in a network namespace by entering it
//! with setns only (no `ip netns exec`, which remounts /sys and would hide bpffs pins).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context};

pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// `ip ARGS...`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

pub fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// A network namespace's identity: the device and inode of its nsfs file, as `ip netns pids`
/// compares them.
pub type NetnsId = (u64, u64);

fn netns_id_of(path: &Path) -> Option<NetnsId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The processes of every network namespace, read once from /proc (zombies, which have none,
/// are left out).
pub fn processes_by_netns() -> std::collections::HashMap<NetnsId, Vec<u32>> {
    let mut out: std::collections::HashMap<NetnsId, Vec<u32>> = std::collections::HashMap::new();
    let me = std::process::id();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()).filter(|p| *p != me) else { continue };
        if let Some(id) = netns_id_of(&e.path().join("ns/net")) {
            out.entry(id).or_default().push(pid);
        }
    }
    out
}

/// Stops what still runs in network namespace `name` (found in `procs`): what `lab exec`
/// started and left behind (a daemonized server, a command whose `lab exec` was killed) would
/// otherwise keep the namespace alive after it is deleted. SIGTERM, then SIGKILL after a grace
/// period.
pub fn stop_netns_processes(name: &str, procs: &std::collections::HashMap<NetnsId, Vec<u32>>) {
    use nix::sys::signal::kill;
    let Some(id) = netns_id_of(&netns_path(name)) else { return };
    let Some(pids) = procs.get(&id) else { return };
    // Each pid checked again as it is signalled: one that ended since the scan may be reused.
    let still_in = |p: u32| netns_id_of(Path::new(&format!("/proc/{p}/ns/net"))) == Some(id);
    let signal_all = |sig| {
        for p in pids.iter().filter(|p| still_in(**p)) {
            let _ = kill(nix::unistd::Pid::from_raw(*p as i32), sig);
        }
    };
    terminate(signal_all, || !pids.iter().any(|p| still_in(*p)));
}

/// SIGTERM through `signal`, then SIGKILL if not `gone` within a second; waits up to a second
/// more for `gone`.
fn terminate(signal: impl Fn(nix::sys::signal::Signal), gone: impl Fn() -> bool) {
    let wait = || {
        for _ in 0..50 {
            if gone() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        gone()
    };
    signal(nix::sys::signal::Signal::SIGTERM);
    if !wait() {
        signal(nix::sys::signal::Signal::SIGKILL);
        wait();
    }
}

/// A command that will run inside network namespace `netns`.
pub fn in_netns(netns: &str, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
    let ns = File::open(netns_path(netns)).with_context(|| format!("open netns {netns}"))?;
    let mut cmd = Command::new(program);
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from));
    }
    Ok(cmd)
}

/// A command that will run with a pod's own view: inside network namespace `netns`, in a mount
/// namespace of its own where /sys is a sysfs of that network namespace (as `ip netns exec`
/// gives), so `/sys/class/net` lists the pod's interfaces and their statistics. The lab's own
/// processes use [`in_netns`] instead: they need the host's /sys/fs/bpf.
pub fn in_pod_view(netns: &str, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
    let mut cmd = in_netns(netns, program)?;
    // SAFETY: only async-signal-safe syscalls between fork and exec, on static C strings; runs
    // after in_netns's setns (pre_exec hooks run in order), so the new sysfs is the netns's.
    unsafe {
        cmd.pre_exec(|| {
            let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing done here propagates back to the host's mounts.
            check(libc::mount(c"none".as_ptr(), c"/".as_ptr(), std::ptr::null(), libc::MS_SLAVE | libc::MS_REC, std::ptr::null()))?;
            check(libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH))?;
            check(libc::mount(c"sysfs".as_ptr(), c"/sys".as_ptr(), c"sysfs".as_ptr(), 0, std::ptr::null()))
        });
    }
    Ok(cmd)
}

/// Runs to completion with `stdin`, returning its output.
pub fn run_with_stdin(mut cmd: Command, stdin: &[u8]) -> anyhow::Result<Output> {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    child.stdin.take().expect("piped").write_all(stdin)?;
    Ok(child.wait_with_output()?)
}

/// Starts a long-running process in its own session, output appended to `log`; returns its pid.
pub fn spawn_detached(mut cmd: Command, log: &Path) -> anyhow::Result<u32> {
    let out = File::options().create(true).append(true).open(log).with_context(|| format!("open {}", log.display()))?;
    let err = out.try_clone()?;
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
    }
    let child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn()?;
    Ok(child.id())
}

pub fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// SIGTERM to the process group, then SIGKILL after a grace period.
pub fn stop_group(pid: u32) {
    let pg = nix::unistd::Pid::from_raw(pid as i32);
    terminate(
        |sig| {
            let _ = nix::sys::signal::killpg(pg, sig);
        },
        || !alive(pid),
    );
    reap(pid);
}

fn reap(pid: u32) {
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
