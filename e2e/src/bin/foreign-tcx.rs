//! foreign-tcx: plays an eBPF primary CNI (Cilium, Calico-eBPF) on an interface, for the
//! coexistence tests: a tcx ingress program that returns `TC_ACT_OK` for every packet, which
//! ends the tcx chain, attached at its head (`BPF_F_BEFORE` with no anchor).
//!
//!   foreign-tcx attach --dev IFNAME --pin PATH   (in the interface's network namespace)
//!   foreign-tcx chain --dev IFNAME               (prints the tcx ingress chain's program
//!                                                 names, first to last)
//!
//! The link is pinned at PATH (a bpffs path), so it outlives this process; removing the pin
//! detaches it. Raw bpf(2) calls, no object file: the program is two instructions.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::libc;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_F_BEFORE: u32 = 1 << 3;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<RawFd> {
    // SAFETY: `attr` is a zeroed, 128-byte bpf_attr laid out for `cmd`; the kernel reads at
    // most its size.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc as RawFd)
}

/// Writes a u32 at byte offset `off` of the attribute union.
fn put32(attr: &mut [u64; 16], off: usize, v: u32) {
    let w = &mut attr[off / 8];
    let shift = (off % 8) * 8;
    *w = (*w & !(0xffff_ffffu64 << shift)) | (v as u64) << shift;
}

fn load_pass_program() -> std::io::Result<OwnedFd> {
    // r0 = 0 (TC_ACT_OK); exit
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = CString::new("GPL").unwrap();
    let mut attr = [0u64; 16];
    put32(&mut attr, 0, BPF_PROG_TYPE_SCHED_CLS);
    put32(&mut attr, 4, insns.len() as u32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    // prog_name at offset 48 (16 bytes): "foreign_pass"
    let name = b"foreign_pass\0\0\0\0";
    attr[6] = u64::from_le_bytes(name[..8].try_into().unwrap());
    attr[7] = u64::from_le_bytes(name[8..].try_into().unwrap());
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: a new file descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn attach_first(prog: &OwnedFd, ifindex: u32) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let mut attr = [0u64; 16];
    put32(&mut attr, 0, prog.as_raw_fd() as u32);
    put32(&mut attr, 4, ifindex);
    put32(&mut attr, 8, BPF_TCX_INGRESS);
    put32(&mut attr, 12, BPF_F_BEFORE);
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pin(link: &OwnedFd, path: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let path = CString::new(path).unwrap();
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    put32(&mut attr, 8, link.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone());
    if let (Some("chain"), Some(dev)) = (args.get(1).map(String::as_str), arg("--dev")) {
        match aya::programs::SchedClassifier::query_tcx(&dev, aya::programs::TcAttachType::Ingress) {
            Ok((_, progs)) => progs.iter().for_each(|p| println!("{}", p.name_as_str().unwrap_or("?"))),
            Err(e) => {
                eprintln!("foreign-tcx: query {dev}: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let (Some("attach"), Some(dev), Some(path)) = (args.get(1).map(String::as_str), arg("--dev"), arg("--pin")) else {
        eprintln!("usage: foreign-tcx attach --dev IFNAME --pin BPFFS_PATH | foreign-tcx chain --dev IFNAME");
        std::process::exit(2);
    };
    let run = || -> std::io::Result<()> {
        let ifindex = nix::net::if_::if_nametoindex(dev.as_str()).map_err(std::io::Error::from)?;
        let prog = load_pass_program()?;
        let link = attach_first(&prog, ifindex)?;
        pin(&link, &path)
    };
    if let Err(e) = run() {
        eprintln!("foreign-tcx: attach on {dev}: {e}");
        std::process::exit(1);
    }
}
