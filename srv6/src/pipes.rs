//! SRv6 pipes in the compiler (pure): a chain's stream functions checked, consecutive ones on
//! the same proxies merged into one pipeline, and the SID a proxy serves a pipeline under:
//! LOC:FUNCT of the proxy pod's chain interface, then ARG = the first function's id (16 bits)
//! and an argument handle (the rest), a hash of the pipeline (its functions, arguments and
//! directions), the same on every node and across restarts.

use serde::{Deserialize, Serialize};
pub use srv6pipes_crds::{StreamDirection, StreamFunction as Stage};

use crate::sid::{Locator, Sid, StreamArg};

/// What a stream SID stands for: the functions the proxy applies, in chain order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pipeline {
    pub stages: Vec<Stage>,
}

impl Pipeline {
    /// The functions applied to the client's bytes, in order.
    pub fn forward(&self) -> impl Iterator<Item = &Stage> {
        self.stages.iter().filter(|s| s.direction != StreamDirection::Reverse)
    }

    /// The functions applied to the server's reply bytes, in the order the reply meets them
    /// (the chain's order reversed).
    pub fn reverse(&self) -> impl Iterator<Item = &Stage> {
        self.stages.iter().rev().filter(|s| s.direction != StreamDirection::Forward)
    }

    /// `base64(op=encode) | replace(from=RvZ3,to=NhdH)`, with `<-` before a Reverse-only and
    /// `<->` before a Both function.
    pub fn describe(&self) -> String {
        let stage = |s: &Stage| {
            let dir = match s.direction {
                StreamDirection::Forward => "",
                StreamDirection::Reverse => "<-",
                StreamDirection::Both => "<->",
            };
            let args: Vec<String> = s.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{dir}{}({})", s.function, args.join(","))
        };
        self.stages.iter().map(stage).collect::<Vec<_>>().join(" | ")
    }

    /// The argument handle: FNV-1a 64 over the stages' canonical JSON (arguments are ordered),
    /// cut to `bits`.
    pub fn handle(&self, bits: u32) -> u64 {
        let json = serde_json::to_vec(&self.stages).expect("stages serialize");
        let h = json.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3));
        if bits >= 64 {
            h
        } else {
            h & ((1u64 << bits) - 1)
        }
    }

    /// The SID of this pipeline on the proxy interface whose SID is `interface_sid`.
    pub fn sid(&self, locator: &Locator, interface_sid: Sid) -> Result<Sid, String> {
        let funct = locator.funct_of(interface_sid).ok_or_else(|| format!("{interface_sid} is no proxy SID of {locator}"))?;
        let first = self.stages.first().ok_or("a pipeline has at least one function")?;
        let function = function_id(&first.function).ok_or_else(|| format!("unknown stream function {:?}", first.function))?;
        let bits = locator.stream_handle_bits().map_err(|e| e.to_string())?;
        locator.stream_sid(funct, StreamArg { funct, function, handle: self.handle(bits) }).map_err(|e| e.to_string())
    }
}

/// The abstract unix socket name, inside a stream proxy's own netns, where its node daemon gives
/// it its table (and takes its counters): reachable from that pod's netns only, so the proxy
/// needs no credentials and never sees the daemon's root-only socket.
pub const CHANNEL: &str = "srv6pipes-stream";

/// What the node gives a stream proxy (one JSON line per change on the channel).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamTable {
    /// `namespace/pod`.
    pub pod: String,
    /// The chain interface inside the pod (where the node delivers its SIDs' packets).
    pub interface: String,
    /// The pod's SID block: LOC:FUNCT of its chain interface; its stream SIDs are in it.
    pub sid_block: String,
    pub entries: Vec<StreamEntry>,
}

/// One stream SID of the proxy: the listener its SYNs are handed to, and what it applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEntry {
    pub sid: Sid,
    pub port: u16,
    /// The chains using it.
    pub chains: Vec<String>,
    pub pipeline: Pipeline,
}

/// A proxy's counters for one SID (sent back on the channel each second).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCounters {
    /// `namespace/pod` (filled in by the node).
    #[serde(default)]
    pub pod: String,
    pub sid: Sid,
    pub function: String,
    /// Connections being relayed now.
    pub active: u64,
    /// Connections accepted since the proxy started.
    pub total: u64,
    /// Connections that ended in a reset (refused onward, function error, idle, peer reset...).
    pub failed: u64,
    /// Client to server: bytes read from the client, written to the server.
    pub forward_in: u64,
    pub forward_out: u64,
    /// Server to client.
    pub reverse_in: u64,
    pub reverse_out: u64,
    /// Failures by reason (`connect_refused`, `connect_timeout`, `function`, `reset`, `idle`,
    /// `limit`, `drain`).
    pub errors: std::collections::BTreeMap<String, u64>,
}

/// The registry id of a function name.
pub fn function_id(name: &str) -> Option<u16> {
    srv6pipes_functions::REGISTRY.iter().find(|r| r.name == name).map(|r| r.id)
}

/// The registry name of a function id.
pub fn function_name(id: u16) -> Option<&'static str> {
    srv6pipes_functions::REGISTRY.iter().find(|r| r.id == id).map(|r| r.name)
}

/// Checks the stream function of the chain's function `name`: known, arguments valid. The error
/// names the chain's function, the stream function and the argument.
pub fn check(name: &str, stage: &Stage) -> Result<(), String> {
    srv6pipes_functions::build(&stage.function, &stage.args).map(|_| ()).map_err(|e| format!("function {name}: {e}"))
}

/// A stream SID as `srv6pipes stats`, `trace` and `lab status` show it: the function its ARG
/// names (and, given the pipeline it stands for, every function with its arguments).
pub fn decode(locator: &Locator, sid: Sid, pipeline: Option<&Pipeline>) -> Option<String> {
    let arg = locator.stream_arg_of(sid)?;
    if arg.function == 0 {
        return None;
    }
    Some(match pipeline {
        Some(p) => p.describe(),
        None => format!("{}(handle={:#x})", function_name(arg.function).unwrap_or("unknown"), arg.handle),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(function: &str, args: &[(&str, &str)], direction: StreamDirection) -> Stage {
        Stage { function: function.into(), args: args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), direction }
    }

    fn seed() -> Pipeline {
        Pipeline {
            stages: vec![
                stage("base64", &[("op", "encode")], StreamDirection::Forward),
                stage("replace", &[("from", "RvZ3"), ("to", "NhdH")], StreamDirection::Forward),
                stage("base64", &[("op", "decode")], StreamDirection::Forward),
            ],
        }
    }

    #[test]
    fn a_pipeline_sid_carries_the_first_function_and_a_stable_handle() {
        let loc: Locator = "fcbb:bb00:1::/48".parse().unwrap();
        let iface = loc.sid(0xe001);
        let sid = seed().sid(&loc, iface).unwrap();
        let arg = loc.stream_arg_of(sid).unwrap();
        assert_eq!((arg.funct, arg.function), (0xe001, 2), "{sid}");
        assert_eq!(arg.handle, seed().handle(48));
        assert!(sid.to_string().starts_with("fcbb:bb00:1:e001:2:"), "{sid}");
        assert_eq!(seed().sid(&loc, iface).unwrap(), sid, "deterministic");
        // Any change of function, argument or direction is another handle.
        let mut other = seed();
        other.stages[1].args.insert("to".into(), "NhdI".into());
        assert_ne!(other.sid(&loc, iface).unwrap(), sid);
        let mut other = seed();
        other.stages[0].direction = StreamDirection::Both;
        assert_ne!(other.sid(&loc, iface).unwrap(), sid);
        assert!(seed().sid(&loc, Sid("fcbb:bb00:2:e001::".parse().unwrap())).is_err(), "another locator's interface");
    }

    #[test]
    fn directions_and_description() {
        let mut p = seed();
        p.stages.push(stage("compress", &[("algorithm", "zstd"), ("op", "compress")], StreamDirection::Reverse));
        p.stages.push(stage("xor", &[("key", "2a")], StreamDirection::Both));
        assert_eq!(p.forward().count(), 4);
        let rev: Vec<&str> = p.reverse().map(|s| s.function.as_str()).collect();
        assert_eq!(rev, ["xor", "compress"], "the reply meets the last function first");
        assert_eq!(
            p.describe(),
            "base64(op=encode) | replace(from=RvZ3,to=NhdH) | base64(op=decode) | <-compress(algorithm=zstd,op=compress) | <->xor(key=2a)"
        );
    }

    #[test]
    fn decode_names_the_function_with_or_without_the_table() {
        let loc: Locator = "fcbb:bb00:1::/48".parse().unwrap();
        let sid = seed().sid(&loc, loc.sid(0xe001)).unwrap();
        assert_eq!(decode(&loc, sid, Some(&seed())).unwrap(), seed().describe());
        assert!(decode(&loc, sid, None).unwrap().starts_with("base64(handle=0x"));
        assert_eq!(decode(&loc, loc.sid(0xe001), None), None, "a packet function's SID has no ARG");
    }

    /// Every ServiceChain of examples/ parses, and its stream functions check out.
    #[test]
    fn the_examples_chains_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut streams = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for v in docs {
                if v["kind"] != "ServiceChain" {
                    continue;
                }
                let c: srv6pipes_crds::ServiceChain = serde_json::from_value(v).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                for f in &c.spec.functions {
                    if let Some(s) = &f.stream {
                        check(&f.name, s).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                        streams += 1;
                    }
                }
            }
        }
        assert!(streams >= 6, "the pipes examples have stream functions ({streams})");
    }

    #[test]
    fn checks_name_the_function_and_argument() {
        let e = check("encode", &stage("base64", &[("op", "sideways")], StreamDirection::Forward)).unwrap_err();
        assert!(e.starts_with("function encode: ") && e.contains("op"), "{e}");
        let e = check("x", &stage("rot13", &[], StreamDirection::Forward)).unwrap_err();
        assert!(e.contains("rot13"), "{e}");
        check("ok", &stage("identity", &[], StreamDirection::Both)).unwrap();
    }
}
