//! The traffic generator and the sink: XDP live frames (BPF_PROG_TEST_RUN with
//! BPF_F_TEST_XDP_LIVE_FRAMES) from a thread pinned to the generator's CPU, one call per trial
//! paced by the program against the clock and ended by a signal at the deadline; an XDP
//! program on every sink veth counts what arrives. PDR: the highest offered
//! rate whose loss is at most 0.5 %, found by `crate::search`.

use std::net::Ipv6Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aya::maps::{Array, HashMap, PerCpuArray, PerCpuValues};
use aya::programs::{Xdp, XdpMode};
use aya::Ebpf;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

use crate::packet::Frame;
use crate::sys;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench.bpf.o"));

pub const LOSS_BOUND: f64 = 0.005;
/// A failing trial that lost less than this is run once more (`crate::search`).
pub const RETRY_BELOW: f64 = 0.2;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
const BATCH: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct GenConfig {
    n_dsts: u32,
    da_off: u32,
    seg_off: u32,
    mark_off: u32,
    alt_ifindex: u32,
    pad: u32,
    interval_ns: u64,
    window_ns: u64,
}
unsafe impl aya::Pod for GenConfig {}

const MAX_FRAME: usize = 256;

#[repr(C)]
#[derive(Clone, Copy)]
struct GenFrame {
    len: u32,
    pad: u32,
    b: [u8; MAX_FRAME],
}
unsafe impl aya::Pod for GenFrame {}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct GenState {
    next_ns: u64,
    tx: u64,
    first_ns: u64,
    last_ns: u64,
    tx_marked: [u64; MARKS],
}
unsafe impl aya::Pod for GenState {}

/// The sides a marked stream's frames are counted by (the generator writes it into each
/// frame's last four bytes: bench.bpf.c).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    Base = 0,
    Changed = 1,
    /// Sent while the change is being made or unmade: counted by neither side.
    Between = 2,
}
const MARKS: usize = 3;
/// The sink's counter of expected frames that carried no mark.
const UNMARKED: usize = MARKS;

/// `gen_mark`'s flag (bench.bpf.c): the frames go to the other lane.
const GEN_OTHER_LANE: u32 = 0x100;

/// Sets the mark of the frames the generator sends from now on, and in a stream over two lanes
/// ([`Traffic::marked`]) which lane they go to.
pub struct Marker<'a> {
    map: Array<&'a mut aya::maps::MapData, u32>,
    mark: Mark,
    other_lane: bool,
}

impl Marker<'_> {
    pub fn set(&mut self, mark: Mark) -> anyhow::Result<()> {
        self.mark = mark;
        self.write()
    }

    /// Sends the frames to the stream's second lane (`true`) or its first from now on.
    pub fn use_other_lane(&mut self, other: bool) -> anyhow::Result<()> {
        self.other_lane = other;
        self.write()
    }

    /// Frames marked [`Mark::Between`], to the first lane (one write).
    fn reset(&mut self) -> anyhow::Result<()> {
        (self.mark, self.other_lane) = (Mark::Between, false);
        self.write()
    }

    fn write(&mut self) -> anyhow::Result<()> {
        let lane = if self.other_lane { GEN_OTHER_LANE } else { 0 };
        self.map.set(0, self.mark as u32 | lane, 0).context("set the generator's mark")
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SinkConfig {
    slot: u32,
    /// Leading bytes of the destination compared with `dst`: 16 exact, 8 a /64, 0 any.
    bytes: u32,
    dst: [u8; 16],
    /// Count the expected frames by their mark too.
    marks: u32,
}
unsafe impl aya::Pod for SinkConfig {}

/// Where the generator sends one scenario's frames, and where they must arrive.
#[derive(Clone, Debug)]
pub struct Path {
    pub gen_ifindex: u32,
    pub sink_ifindex: u32,
    pub slot: u32,
    /// The destination the sink counts as delivered (None: every IPv6 frame).
    pub expect: Option<Ipv6Addr>,
    /// How many leading bytes of `expect` must match: 16, or 8 for its /64.
    pub expect_bytes: u32,
}

pub struct Traffic {
    bpf: Ebpf,
    gen_netns: String,
    gen_cpu: usize,
    next_slot: u32,
    /// Failing trials run again, and how many of those passed.
    pub retries: (u64, u64),
}

#[derive(Clone, Copy, Debug)]
pub struct Trial {
    /// Frames sent over the time from the first to the last.
    pub offered_pps: f64,
    pub sent: u64,
    pub received: u64,
    pub other: u64,
}

impl Trial {
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 1.0;
        }
        (self.sent - self.received.min(self.sent)) as f64 / self.sent as f64
    }
}

impl Traffic {
    pub fn load(gen_netns: &str, gen_cpu: usize) -> anyhow::Result<Self> {
        let mut bpf = Ebpf::load(OBJECT).context("load the bench XDP object")?;
        for p in ["bench_gen", "bench_sink"] {
            let prog: &mut Xdp = bpf.program_mut(p).context(p)?.try_into()?;
            prog.load().with_context(|| format!("load {p}"))?;
        }
        // The signal that ends a trial's test run: no SA_RESTART, so the call returns EINTR.
        let action = SigAction::new(SigHandler::Handler(wake), SaFlags::empty(), SigSet::empty());
        // SAFETY: the handler does nothing.
        unsafe { sigaction(Signal::SIGUSR1, &action) }.context("install SIGUSR1 handler")?;
        Ok(Self { bpf, gen_netns: gen_netns.into(), gen_cpu, next_slot: 0, retries: (0, 0) })
    }

    /// The CPU the generator's thread is pinned to.
    pub fn gen_cpu(&self) -> usize {
        self.gen_cpu
    }

    /// Attaches the sink program to `ifname` in `netns` and gives it a counter slot.
    pub fn add_sink(&mut self, netns: &str, ifname: &str) -> anyhow::Result<(u32, u32)> {
        let slot = self.next_slot;
        self.next_slot += 1;
        let ifindex = sys::ifindex(netns, ifname)?;
        let prog: &mut Xdp = self.bpf.program_mut("bench_sink").context("bench_sink")?.try_into()?;
        let name = ifname.to_string();
        // aya resolves the name in the calling thread's netns; the link lives as long as `bpf`.
        sys::in_netns(netns, || prog.attach(&name, XdpMode::Driver).map(|_| ()).with_context(|| format!("attach sink XDP to {name}")))?;
        Ok((ifindex, slot))
    }

    /// The sink of `path` counts its expected frames (by mark too when `marked`).
    fn configure_sink(&mut self, path: &Path, marked: bool) -> anyhow::Result<()> {
        let mut sinks: HashMap<_, u32, SinkConfig> = HashMap::try_from(self.bpf.map_mut("sink_config").context("sink_config")?)?;
        let cfg = SinkConfig {
            slot: path.slot,
            bytes: if path.expect.is_some() { path.expect_bytes.min(16) } else { 0 },
            dst: path.expect.map(|a| a.octets()).unwrap_or_default(),
            marks: u32::from(marked),
        };
        Ok(sinks.insert(path.sink_ifindex, cfg, 0)?)
    }

    /// The generator's template `index`: 0 the lane's frame, 1 the other lane's.
    fn set_template(&mut self, index: u32, frame: &Frame) -> anyhow::Result<()> {
        if frame.bytes.len() > MAX_FRAME {
            bail!("frame of {} bytes: the generator takes at most {MAX_FRAME}", frame.bytes.len());
        }
        let mut template = GenFrame { len: frame.bytes.len() as u32, pad: 0, b: [0; MAX_FRAME] };
        template.b[..frame.bytes.len()].copy_from_slice(&frame.bytes);
        let mut frames: Array<_, GenFrame> = Array::try_from(self.bpf.map_mut("gen_frame").context("gen_frame")?)?;
        Ok(frames.set(index, template, 0)?)
    }

    /// The generator's lane `lane` (0 the stream's first, 1 its second): `frame`, spread over
    /// `dsts`; its template and configuration `base` with the lane's frame and destinations.
    fn configure_lane(&mut self, lane: u32, frame: &Frame, dsts: &[Ipv6Addr], marked: bool, base: GenConfig) -> anyhow::Result<()> {
        let mut table: Array<_, [u8; 16]> = Array::try_from(self.bpf.map_mut("gen_dsts").context("gen_dsts")?)?;
        // Half the table a lane (the program's MAX_DSTS).
        let per_lane = table.len() as usize / 2;
        anyhow::ensure!(dsts.len() <= per_lane, "{} destinations: the generator spreads over at most {per_lane}", dsts.len());
        let first = lane as usize * per_lane;
        for (i, d) in dsts.iter().enumerate() {
            table.set((first + i) as u32, d.octets(), 0)?;
        }
        self.set_template(lane, frame)?;
        let mut config: Array<_, GenConfig> = Array::try_from(self.bpf.map_mut("gen_config").context("gen_config")?)?;
        let mark_off = if marked { frame.mark_off()? } else { 0 };
        let cfg = GenConfig { n_dsts: dsts.len() as u32, da_off: frame.da_off, seg_off: frame.seg_off, mark_off, ..base };
        Ok(config.set(lane, cfg, 0)?)
    }

    fn configure(&mut self, path: &Path, frame: &Frame, dsts: &[Ipv6Addr], pps: f64, marked: bool) -> anyhow::Result<()> {
        self.configure_sink(path, marked)?;
        let interval_ns = if pps > 0.0 { (1e9 / pps) as u64 } else { 0 };
        let stream = GenConfig { interval_ns, window_ns: 64 * interval_ns, ..GenConfig::default() };
        self.configure_lane(0, frame, dsts, marked, stream)?;
        let mut state: PerCpuArray<_, GenState> = PerCpuArray::try_from(self.bpf.map_mut("gen_state").context("gen_state")?)?;
        let cpus = aya::util::nr_cpus().map_err(|(m, e)| anyhow::anyhow!("{m}: {e}"))?;
        state.set(0, PerCpuValues::try_from(vec![GenState::default(); cpus])?, 0)?;
        Ok(())
    }

    /// After `configure`: the frames [`Marker::use_other_lane`] sends are `frame` spread over
    /// `dsts`, marked, redirected to `path`'s generator veth; `path`'s sink counts them by mark.
    fn configure_other_lane(&mut self, path: &Path, frame: &Frame, dsts: &[Ipv6Addr]) -> anyhow::Result<()> {
        self.configure_sink(path, true)?;
        self.configure_lane(1, frame, dsts, true, GenConfig::default())?;
        let mut config: Array<_, GenConfig> = Array::try_from(self.bpf.map_mut("gen_config").context("gen_config")?)?;
        let cfg = GenConfig { alt_ifindex: path.gen_ifindex, ..config.get(&0, 0)? };
        Ok(config.set(0, cfg, 0)?)
    }

    fn sent(&self) -> anyhow::Result<(u64, f64)> {
        let m: PerCpuArray<_, GenState> = PerCpuArray::try_from(self.bpf.map("gen_state").context("gen_state")?)?;
        let per_cpu = m.get(&0, 0)?;
        let tx: u64 = per_cpu.iter().map(|s| s.tx).sum();
        let first = per_cpu.iter().filter(|s| s.tx > 0).map(|s| s.first_ns).min().unwrap_or(0);
        let last = per_cpu.iter().map(|s| s.last_ns).max().unwrap_or(0);
        let secs = (last.saturating_sub(first)) as f64 / 1e9;
        Ok((tx, if secs > 0.0 { tx as f64 / secs } else { 0.0 }))
    }

    /// Frames the sink of `path` has counted as delivered so far.
    pub fn delivered(&self, path: &Path) -> anyhow::Result<u64> {
        Ok(self.counts(path.slot)?.0)
    }

    fn counts(&self, slot: u32) -> anyhow::Result<(u64, u64)> {
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(self.bpf.map("sink_counts").context("sink_counts")?)?;
        let sum = |k: u32| -> anyhow::Result<u64> { Ok(m.get(&k, 0)?.iter().sum()) };
        Ok((sum(slot * 2)?, sum(slot * 2 + 1)?))
    }

    /// Offers `frame` at `pps` for `dur` (0 pps: as fast as the generator goes), spreading the
    /// destination over `dsts` when there is more than one; then counts what arrived.
    pub fn trial(&mut self, path: &Path, frame: &Frame, dsts: &[Ipv6Addr], pps: f64, dur: Duration) -> anyhow::Result<Trial> {
        self.configure(path, frame, dsts, pps, false)?;
        let before = self.counts(path.slot)?;
        self.send_while(path, frame, dur, |_, _| Ok(()))?;
        let after = self.counts(path.slot)?;
        let (sent, offered_pps) = self.sent()?;
        Ok(Trial { offered_pps, sent, received: after.0 - before.0, other: after.1 - before.1 })
    }

    /// The generator sends `frame` along `path` for `dur` from its own thread, pinned to its
    /// CPU in its netns, while `meanwhile` runs on this one (given the programs' maps, and
    /// whether the generator still runs); then queues drain.
    fn send_while(
        &mut self,
        path: &Path,
        frame: &Frame,
        dur: Duration,
        meanwhile: impl FnOnce(&mut Ebpf, &dyn Fn() -> bool) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let prog: &Xdp = self.bpf.program("bench_gen").context("bench_gen")?.try_into()?;
        let fd = prog.fd()?.as_fd().as_raw_fd();
        let (netns, cpu, ifindex) = (self.gen_netns.clone(), self.gen_cpu, path.gen_ifindex);
        let bytes = frame.bytes.clone();
        let done = AtomicBool::new(false);
        let bpf = &mut self.bpf;
        let (sent, alongside) = std::thread::scope(|s| {
            let gen = s.spawn(|| {
                let r = sys::in_netns(&netns, move || {
                    sys::pin_to_cpu(cpu)?;
                    send(fd, &bytes, ifindex, dur)
                });
                done.store(true, Ordering::SeqCst);
                r
            });
            let alongside = meanwhile(bpf, &|| !done.load(Ordering::SeqCst));
            (gen.join().map_err(|_| anyhow::anyhow!("the generator's thread panicked")).and_then(|r| r), alongside)
        });
        // Let queues drain before counting.
        std::thread::sleep(Duration::from_millis(40));
        joined(sent, alongside, "what ran alongside")
    }

    fn sent_by_mark(&self) -> anyhow::Result<[u64; MARKS]> {
        let m: PerCpuArray<_, GenState> = PerCpuArray::try_from(self.bpf.map("gen_state").context("gen_state")?)?;
        let mut by = [0; MARKS];
        for cpu in m.get(&0, 0)?.iter() {
            by.iter_mut().zip(cpu.tx_marked).for_each(|(b, t)| *b += t);
        }
        Ok(by)
    }

    /// Expected frames the sink counted by mark, and unmarked ones last ([`UNMARKED`]).
    fn received_by_mark(&self, slot: u32) -> anyhow::Result<[u64; MARKS + 1]> {
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(self.bpf.map("sink_marks").context("sink_marks")?)?;
        let mut by = [0; MARKS + 1];
        for (i, b) in by.iter_mut().enumerate() {
            *b = m.get(&(slot * 4 + i as u32), 0)?.iter().sum();
        }
        Ok(by)
    }

    /// One stream at `pps` for `dur`, its frames marked by side: `drive` runs on this thread
    /// while the generator sends on its own, setting the mark (and making the change for the
    /// changed side's frames) as long as `running()`; frames start marked [`Mark::Between`].
    /// `lanes` are the base side's path, frame and destinations and the changed side's: the
    /// same (one lane, the change made on it), or another lane's, which the frames go to while
    /// `drive` has them on the other lane ([`Marker::use_other_lane`]; each lane's frames of
    /// its own length, spread over its own destinations). Returns the base side's trial and
    /// the changed side's: each side's frames sent and delivered (at its own lane's sink), at
    /// the stream's rate.
    pub fn marked(
        &mut self,
        lanes: [(&Path, &Frame, &[Ipv6Addr]); 2],
        (pps, dur): (f64, Duration),
        drive: impl FnOnce(&mut Marker, &dyn Fn() -> bool) -> anyhow::Result<()>,
    ) -> anyhow::Result<[Trial; 2]> {
        let [(path, frame, dsts), (other, other_frame, other_dsts)] = lanes;
        self.configure(path, frame, dsts, pps, true)?;
        let two_lanes = path.slot != other.slot;
        if two_lanes {
            self.configure_other_lane(other, other_frame, other_dsts)?;
        } else {
            anyhow::ensure!(
                other_frame.bytes == frame.bytes && other_dsts == dsts,
                "one lane, one frame and its destinations: the change is made on the lane"
            );
        }
        let counts = |t: &Self| -> anyhow::Result<[([u64; MARKS + 1], u64); 2]> {
            let at = |p: &Path| -> anyhow::Result<_> { Ok((t.received_by_mark(p.slot)?, t.counts(p.slot)?.1)) };
            Ok([at(path)?, at(other)?])
        };
        let before = counts(self)?;
        let cpu = self.gen_cpu;
        self.send_while(path, frame, dur, |bpf, running| {
            let map = Array::try_from(bpf.map_mut("gen_mark").context("gen_mark")?)?;
            let mut marker = Marker { map, mark: Mark::Between, other_lane: false };
            marker.reset()?;
            // The marks set from the generator's CPU, off the system under test's.
            let driven = sys::on_cpu(cpu, || drive(&mut marker, running));
            joined(driven, marker.reset(), "setting the mark back")
        })?;
        let after = counts(self)?;
        let (sent, (_, offered_pps)) = (self.sent_by_mark()?, self.sent()?);
        let received = |lane: usize, m: usize| after[lane].0[m] - before[lane].0[m];
        for lane in 0..2 {
            anyhow::ensure!(received(lane, UNMARKED) == 0, "{} frames arrived without a mark", received(lane, UNMARKED));
        }
        if two_lanes {
            let (astray_changed, astray_base) = (received(0, Mark::Changed as usize), received(1, Mark::Base as usize));
            anyhow::ensure!(
                astray_changed + astray_base == 0,
                "frames arrived on the other side's lane: {astray_changed} changed on the base's, {astray_base} base on the changed's"
            );
        }
        let side = |m: Mark, lane: usize| -> anyhow::Result<Trial> {
            let (sent, received) = (sent[m as usize], received(lane, m as usize));
            anyhow::ensure!(received <= sent, "{m:?}: {received} frames arrived of {sent} sent");
            Ok(Trial { offered_pps, sent, received, other: after[lane].1 - before[lane].1 })
        };
        Ok([side(Mark::Base, 0)?, side(Mark::Changed, 1)?])
    }

    /// `trial`, an error if it lost more than `LOSS_BOUND` (a cost trial runs below the PDR:
    /// its loss means a noisy moment).
    pub fn loss_free(&mut self, path: &Path, frame: &Frame, dsts: &[Ipv6Addr], pps: f64, dur: Duration) -> anyhow::Result<Trial> {
        let t = self.trial(path, frame, dsts, pps, dur)?;
        if t.loss() > LOSS_BOUND {
            bail!("{:.1} % loss at {:.0} kpps in a trial that must be below the PDR", t.loss() * 100.0, pps / 1000.0);
        }
        Ok(t)
    }

    /// A slow trial that must deliver (almost) everything: proves the scenario is wired right
    /// before it is measured, and warms caches (End.AD learns from it).
    pub fn check(&mut self, what: &str, path: &Path, frame: &Frame, dsts: &[Ipv6Addr]) -> anyhow::Result<()> {
        // 1 kpps: slow enough for the slowest path measured (the kernel proxy at 1,000 VNFs).
        let t = self.trial(path, frame, dsts, 1_000.0, Duration::from_millis(300))?;
        if t.loss() > LOSS_BOUND || t.other > 0 {
            bail!(
                "{what}: at 1 kpps {} of {} frames arrived as expected ({} others): the scenario is miswired",
                t.received,
                t.sent,
                t.other
            );
        }
        Ok(())
    }
}

/// `main`'s result, with `side`'s error when both failed (`side_what` names it).
pub fn joined<T>(main: anyhow::Result<T>, side: anyhow::Result<()>, side_what: &str) -> anyhow::Result<T> {
    match (main, side) {
        (Ok(t), Ok(())) => Ok(t),
        (Err(e), Ok(())) => Err(e),
        (Ok(_), Err(e)) => Err(e.context(format!("{side_what} failed"))),
        (Err(e), Err(d)) => Err(e.context(format!("and {side_what} failed: {d:#}"))),
    }
}

extern "C" fn wake(_: libc::c_int) {}

/// The `test` member of `union bpf_attr` (uapi/linux/bpf.h), zero-padded: the generator calls
/// BPF_PROG_TEST_RUN itself, by fd, from the thread it pins (aya's `test_run` wants the program).
#[repr(C, align(8))]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: [u32; 13],
}

/// # Safety
/// Every pointer in `attr` must point at a live buffer of the size given beside it.
unsafe fn prog_test_run(attr: &mut TestAttr) -> std::io::Result<()> {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    // SAFETY: the caller's buffers are live; the size is the struct's.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, attr as *mut TestAttr, std::mem::size_of::<TestAttr>()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Why this kernel cannot generate traffic, if it cannot: it refuses `BPF_PROG_TEST_RUN` with
/// live frames even for the sink program on `lo` (no sink configured there: it drops the frame),
/// as some hosts' kernels do (EPERM, to root with every BPF capability), while plain test runs
/// work. None when live frames run (or when the probe itself cannot load: [`Traffic::load`]
/// then says why).
pub fn live_frames_refused() -> Option<String> {
    let mut bpf = Ebpf::load(OBJECT).ok()?;
    let prog: &mut Xdp = bpf.program_mut("bench_sink")?.try_into().ok()?;
    prog.load().ok()?;
    let fd = prog.fd().ok()?.as_fd().as_raw_fd();
    match test_run(fd, &[0u8; 64], 1, 1) {
        Err(e) if e.root_cause().downcast_ref::<std::io::Error>().and_then(|e| e.raw_os_error()) == Some(libc::EPERM) => Some(format!(
            "this kernel ({}) refuses BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES (EPERM) even for a program that drops every frame: no packet generator here",
            std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
        )),
        _ => None,
    }
}

/// Runs the generator program on live frames; Ok(false) when a signal ended the run.
fn test_run(fd: i32, frame: &[u8], ifindex: u32, repeat: u32) -> anyhow::Result<bool> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let ctx: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
    let mut attr = TestAttr {
        prog_fd: fd as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: std::mem::size_of_val(&ctx) as u32,
        ctx_in: ctx.as_ptr() as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: BATCH,
        ..Default::default()
    };
    // SAFETY: attr points at live buffers of the sizes given, for the duration of the call.
    match unsafe { prog_test_run(&mut attr) } {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context(format!("BPF_PROG_TEST_RUN (live frames) on ifindex {ifindex}"))),
    }
}

/// Runs the generator until `dur` has passed: a helper thread signals this one at the
/// deadline (and again until it has stopped, in case a signal fell between two calls).
fn send(fd: i32, frame: &[u8], ifindex: u32, dur: Duration) -> anyhow::Result<()> {
    let done = AtomicBool::new(false);
    let (pid, tid) = (nix::unistd::getpid().as_raw(), nix::unistd::gettid().as_raw());
    let deadline = Instant::now() + dur;
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(dur);
            while !done.load(Ordering::Acquire) {
                // SAFETY: tgkill to a thread of this process that is alive until `done`.
                unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGUSR1) };
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let r = loop {
            match test_run(fd, frame, ifindex, 1 << 30) {
                Ok(true) if Instant::now() < deadline => continue,
                Ok(_) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        done.store(true, Ordering::Release);
        r
    })
}
