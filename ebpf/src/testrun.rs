//! BPF_PROG_TEST_RUN: run a loaded program on a crafted packet and get the verdict and the
//! packet as the program left it. Used by the packet tests (tier 2); needs root.

use std::os::fd::{AsFd, AsRawFd};

/// `struct __sk_buff` as the test context: only the fields the kernel lets a test set.
#[derive(Clone, Copy, Debug, Default)]
pub struct SkbCtx {
    /// The device the packet arrives on (its `ifindex` and `ingress_ifindex`).
    pub ifindex: u32,
    pub mark: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRun {
    /// The program's return value (TC_ACT_*; -1 = TC_ACT_UNSPEC/TCX_NEXT).
    pub retval: i32,
    /// The packet after the program (Ethernet header first).
    pub data: Vec<u8>,
}

const SKB_CTX_SIZE: usize = 192;
const OFF_MARK: usize = 8;
const OFF_INGRESS_IFINDEX: usize = 36;
const OFF_IFINDEX: usize = 40;

/// The `test` member of `union bpf_attr` (uapi/linux/bpf.h), zero-padded.
#[repr(C, align(8))]
#[derive(Default)]
pub struct TestAttr {
    pub prog_fd: u32,
    pub retval: u32,
    pub data_size_in: u32,
    pub data_size_out: u32,
    pub data_in: u64,
    pub data_out: u64,
    pub repeat: u32,
    pub duration: u32,
    pub ctx_size_in: u32,
    pub ctx_size_out: u32,
    pub ctx_in: u64,
    pub ctx_out: u64,
    pub flags: u32,
    pub cpu: u32,
    pub batch_size: u32,
    pub _pad: [u32; 13],
}

/// The BPF_PROG_TEST_RUN command itself (also used by the benchmark's live-frames generator).
///
/// # Safety
/// Every pointer in `attr` must point at a live buffer of the size given beside it.
pub unsafe fn prog_test_run(attr: &mut TestAttr) -> std::io::Result<()> {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let rc = libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, attr as *mut TestAttr, std::mem::size_of::<TestAttr>());
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn run(prog: &aya::programs::ProgramFd, packet: &[u8], ctx: SkbCtx) -> std::io::Result<TestRun> {
    let mut out = vec![0u8; packet.len() + 512];
    let mut ctx_in = [0u8; SKB_CTX_SIZE];
    ctx_in[OFF_MARK..OFF_MARK + 4].copy_from_slice(&ctx.mark.to_ne_bytes());
    ctx_in[OFF_IFINDEX..OFF_IFINDEX + 4].copy_from_slice(&ctx.ifindex.to_ne_bytes());
    ctx_in[OFF_INGRESS_IFINDEX..OFF_INGRESS_IFINDEX + 4].copy_from_slice(&ctx.ifindex.to_ne_bytes());
    let mut attr = TestAttr {
        prog_fd: prog.as_fd().as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: SKB_CTX_SIZE as u32,
        ctx_in: ctx_in.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: attr points at live buffers of the sizes given, for the duration of the call.
    unsafe { prog_test_run(&mut attr) }?;
    out.truncate(attr.data_size_out as usize);
    Ok(TestRun { retval: attr.retval as i32, data: out })
}
