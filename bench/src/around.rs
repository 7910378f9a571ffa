//! What a PDR scenario changes on its lane for each of its trials only (a monitor attached,
//! End.AD's learning age), so that the two sides of a comparison run on one lane.

use std::time::Duration;

use anyhow::Context;

use crate::topo::{Bench, Lane};

/// A `srv6pipes monitor` attached to a lane's node daemon (its socket), draining the events as
/// the CLI does; detached (the socket shut) when dropped, returning the events it counted.
struct Subscriber {
    socket: std::os::unix::net::UnixStream,
    reader: std::thread::JoinHandle<u64>,
}

impl Subscriber {
    fn attach(path: &std::path::Path, request: &srv6::node_api::MonitorRequest) -> anyhow::Result<Self> {
        use srv6::node_api::{Request, Response};
        use std::io::BufRead;
        let (answer, r) = srv6::node_api::exchange(path, &Request::Monitor(request.clone()), Duration::from_secs(10))?;
        anyhow::ensure!(answer == Response::Ok, "{}: monitor answered {answer:?}", path.display());
        r.get_ref().set_read_timeout(None)?;
        let socket = r.get_ref().try_clone()?;
        let reader = std::thread::spawn(move || r.lines().map_while(Result::ok).count() as u64);
        Ok(Subscriber { socket, reader })
    }

    fn detach(self) -> u64 {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        self.reader.join().unwrap_or(0)
    }
}

/// What a scenario changes on its lane for each of its trials only, so that two scenarios a
/// target compares run on one lane, in the same turns: two lanes of the same code differ by
/// tens of ns (each has its own daemon, programs and maps).
pub enum Around {
    /// A monitor attached.
    Monitor(Box<Watch>),
    /// End.AD's learning age changed.
    AdAge(AdAge),
}

impl Around {
    pub fn during<T>(&self, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        match self {
            Around::Monitor(w) => w.during(f),
            Around::AdAge(a) => a.during(f),
        }
    }
}

/// The lane's `ad_age_ns` in `sp_config` (what the daemon's `--ad-age-ms` sets, written once at
/// its start; the programs read it on every packet) set to `ns`, then put back.
pub struct AdAge {
    pin: std::path::PathBuf,
    ns: u64,
}

impl AdAge {
    pub fn new(b: &Bench, lane: &Lane, ns: u64) -> Self {
        AdAge { pin: b.pin_root.join(&lane.name).join("sp_config"), ns }
    }

    fn during<T>(&self, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        use aya::maps::{Array, MapData};
        use srv6pipes_ebpf::NodeConfig;
        let data = MapData::from_pin(&self.pin).with_context(|| format!("open {}", self.pin.display()))?;
        let mut config: Array<MapData, NodeConfig> = Array::try_from(aya::maps::Map::Array(data))?;
        let was = config.get(&0, 0)?;
        config.set(0, NodeConfig { ad_age_ns: self.ns, ..was }, 0)?;
        let r = f();
        let during = config.get(&0, 0)?;
        config.set(0, was, 0)?;
        anyhow::ensure!(during.ad_age_ns == self.ns, "{}: ad_age_ns changed to {} during the trial", self.pin.display(), during.ad_age_ns);
        r
    }
}

/// A monitor attached to a scenario's lane. Each time, the lane's datapath is seen sending
/// what was asked for before the trial, and nothing again after it.
pub struct Watch {
    socket: std::path::PathBuf,
    monitor: srv6pipes_ebpf::Monitor,
    request: srv6::node_api::MonitorRequest,
    /// Events received while attached: over the scenario's trials and, for a change priced in
    /// alternating slices (`crate::alternate`), its slices.
    pub events: std::cell::Cell<u64>,
}

impl Watch {
    pub fn new(b: &Bench, lane: &Lane, request: srv6::node_api::MonitorRequest) -> anyhow::Result<Self> {
        let socket = lane.socket.clone().context("not an srv6pipes lane")?;
        let monitor =
            srv6pipes_ebpf::Monitor::open(&b.pin_root.join(&lane.name)).with_context(|| format!("{}: monitor maps", lane.name))?;
        Ok(Watch { socket, monitor, request, events: Default::default() })
    }

    /// `f` with the monitor attached.
    fn during<T>(&self, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        use srv6pipes_ebpf::{MONITOR_DROPS, MONITOR_TRACE};
        let flags = if self.request.drops { MONITOR_DROPS } else { 0 } | if self.request.traces { MONITOR_TRACE } else { 0 };
        let sub = Subscriber::attach(&self.socket, &self.request)?;
        let attached = self.sending(flags);
        let r = attached.and_then(|()| f());
        self.events.set(self.events.get() + sub.detach());
        self.sending(0)?;
        r
    }

    /// Waits (up to 5 s) until the lane's programs are configured to send `flags`.
    fn sending(&self, flags: u32) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.monitor.config()?.flags;
            if now == flags {
                return Ok(());
            }
            anyhow::ensure!(std::time::Instant::now() < deadline, "{}: the monitor sends {now:#x}, not {flags:#x}", self.socket.display());
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
