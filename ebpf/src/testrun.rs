//! BPF_PROG_TEST_RUN: run a loaded program on a crafted packet and get the verdict and the
//! packet as the program left it (aya's `test_run`). Used by the packet tests (tier 2); needs
//! root.

use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};

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
    /// `skb->mark` after the program.
    pub mark: u32,
}

const SKB_CTX_SIZE: usize = 192;
const OFF_MARK: usize = 8;
const OFF_INGRESS_IFINDEX: usize = 36;
const OFF_IFINDEX: usize = 40;

pub(crate) fn run(prog: &SchedClassifier, packet: &[u8], ctx: SkbCtx) -> Result<TestRun, aya::programs::ProgramError> {
    let mut out = vec![0u8; packet.len() + 512];
    let mut ctx_in = [0u8; SKB_CTX_SIZE];
    ctx_in[OFF_MARK..OFF_MARK + 4].copy_from_slice(&ctx.mark.to_ne_bytes());
    ctx_in[OFF_IFINDEX..OFF_IFINDEX + 4].copy_from_slice(&ctx.ifindex.to_ne_bytes());
    ctx_in[OFF_INGRESS_IFINDEX..OFF_INGRESS_IFINDEX + 4].copy_from_slice(&ctx.ifindex.to_ne_bytes());
    let mut ctx_out = [0u8; SKB_CTX_SIZE];
    let opts = TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx_in),
        ctx_out: Some(&mut ctx_out),
        repeat: 1,
        ..Default::default()
    };
    let result = prog.test_run(opts)?;
    out.truncate(result.data_size_out as usize);
    let mark = u32::from_ne_bytes(ctx_out[OFF_MARK..OFF_MARK + 4].try_into().expect("4 bytes"));
    Ok(TestRun { retval: result.return_value as i32, data: out, mark })
}
