//! Effects the benchmark needs: iproute2 (batched, since a sweep makes thousands of links),
//! per-thread network namespaces, sysctls, CPU pinning and the processes it starts. Everything
//! made is recorded in a `Cleanup`, undone on drop, also when a scenario fails.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// `ip -batch -` with `lines`, in netns `netns` when given (`-n`), failing with ip's stderr.
pub fn ip_batch(netns: Option<&str>, lines: &[String]) -> anyhow::Result<()> {
    ip_batch_with(&[], netns, lines)
}

/// `ip_batch` with global options, e.g. `-6` (rules take their family from it, not from
/// `from ::/0`).
pub fn ip_batch_with(opts: &[&str], netns: Option<&str>, lines: &[String]) -> anyhow::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("ip");
    cmd.args(opts);
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run ip (iproute2)")?;
    child.stdin.take().expect("piped").write_all(lines.join("\n").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("ip -batch in {}: {}", netns.unwrap_or("the root netns"), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

pub fn ip(netns: Option<&str>, line: &str) -> anyhow::Result<()> {
    ip_batch(netns, &[line.to_string()])
}

/// Moves the calling thread into `netns` (only this thread: setns(CLONE_NEWNET) is per task).
pub fn enter(netns: &str) -> anyhow::Result<()> {
    let f = File::open(netns_path(netns)).with_context(|| format!("open netns {netns}"))?;
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {netns}"))
}

/// Runs `f` on a scoped thread that lives in `netns`.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(netns)?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in netns {netns} panicked"))?
    })
}

/// Writes sysctls (`net/ipv6/conf/all/forwarding` = "1", ...) inside `netns`.
pub fn sysctls(netns: &str, kv: &[(&str, &str)]) -> anyhow::Result<()> {
    in_netns(netns, || {
        for (k, v) in kv {
            std::fs::write(Path::new("/proc/sys").join(k), v).with_context(|| format!("sysctl {k}={v} in {netns}"))?;
        }
        Ok(())
    })
}

/// A command run in `netns` by setns only (no `ip netns exec`, which remounts /sys and hides
/// bpffs pins), or with `ip netns exec` when it needs the netns' own /sys (`sysfs` = true).
pub fn command(netns: &str, program: impl AsRef<std::ffi::OsStr>, sysfs: bool) -> anyhow::Result<Command> {
    if sysfs {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", netns]).arg(program);
        return Ok(c);
    }
    let ns = File::open(netns_path(netns)).with_context(|| format!("open netns {netns}"))?;
    let mut cmd = Command::new(program);
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from));
    }
    Ok(cmd)
}

pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}{}", String::from_utf8_lossy(&out.stderr).trim(), String::from_utf8_lossy(&out.stdout).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cmd`'s process pinned to `cpu` from its start.
pub fn pinned(cmd: &mut Command, cpu: usize) -> anyhow::Result<()> {
    let set = cpu_set(cpu)?;
    // SAFETY: sched_setaffinity is a plain syscall, safe between fork and exec.
    unsafe {
        cmd.pre_exec(move || nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(std::io::Error::from));
    }
    Ok(())
}

fn cpu_set(cpu: usize) -> anyhow::Result<nix::sched::CpuSet> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    Ok(set)
}

pub fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu_set(cpu)?).with_context(|| format!("pin to CPU {cpu}"))
}

/// `f` on this thread pinned to `cpu`, its CPUs as they were after.
pub fn on_cpu<T>(cpu: usize, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let this = nix::unistd::Pid::from_raw(0);
    let was = nix::sched::sched_getaffinity(this).context("this thread's CPUs")?;
    pin_to_cpu(cpu)?;
    let r = f();
    let back = nix::sched::sched_setaffinity(this, &was).context("put this thread's CPUs back");
    crate::traffic::joined(r, back, "putting its CPUs back")
}

pub fn ifindex(netns: &str, ifname: &str) -> anyhow::Result<u32> {
    let name = ifname.to_string();
    in_netns(netns, move || nix::net::if_::if_nametoindex(name.as_str()).with_context(|| format!("ifindex of {name}")))
}

/// What to undo: commands that tear down what they made (a lab, an API server), netns (their
/// links go with them), processes, directories, pins.
#[derive(Default)]
pub struct Cleanup {
    commands: Vec<Command>,
    netns: Vec<String>,
    children: Vec<std::process::Child>,
    paths: Vec<PathBuf>,
}

impl Cleanup {
    pub fn netns(&mut self, name: &str) {
        self.netns.push(name.to_string());
    }

    /// A command that undoes something; run before anything else, newest first. Registered
    /// before the thing is made, so a half-made one is also undone.
    pub fn command(&mut self, c: Command) {
        self.commands.push(c);
    }

    pub fn child(&mut self, c: std::process::Child) {
        self.children.push(c);
    }

    pub fn path(&mut self, p: &Path) {
        self.paths.push(p.to_path_buf());
    }

    /// Runs the undo commands, stops processes (SIGTERM, then SIGKILL), deletes netns, removes
    /// paths; in that order.
    pub fn run(&mut self) {
        for mut c in self.commands.drain(..).rev() {
            match c.stdout(Stdio::null()).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!("bench cleanup: {c:?}: {}", String::from_utf8_lossy(&out.stderr).trim()),
                Err(e) => eprintln!("bench cleanup: {c:?}: {e}"),
            }
        }
        for c in &mut self.children {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        for c in &mut self.children {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
            while matches!(c.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        let lines: Vec<String> = self.netns.drain(..).rev().filter(|n| netns_path(n).exists()).map(|n| format!("netns del {n}")).collect();
        if let Err(e) = ip_batch(None, &lines) {
            // One failure stops a batch: finish one by one.
            eprintln!("bench cleanup: {e:#}");
            for l in &lines {
                let _ = ip(None, l);
            }
        }
        for p in self.paths.drain(..).rev() {
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.run();
    }
}
