//! SRv6 pipes: the bytestream functions a chain's stream hops apply to a TCP payload, like a
//! Unix pipeline (`base64 | sed | base64 -d`). A function sees the stream as it arrives, in
//! reads of any size, and writes what it has for the next hop; it may change the stream's
//! length and holds back at most a bounded tail (a pattern or a code unit that a read may cut).
//!
//! Adding a function is one file in `functions/` implementing [`StreamFunction`] and one line in
//! [`REGISTRY`]. Argument values are strings; each function documents its own.

use std::collections::BTreeMap;

use thiserror::Error;

mod functions;

/// Arguments of a function, by name (the ServiceChain's `stream.args`).
pub type Args = BTreeMap<String, String>;

/// A bytestream function, one instance per connection and direction.
pub trait StreamFunction: Send {
    /// Transforms the next bytes of the stream, appending what is ready to `out`. Bytes held
    /// back (at most a bounded number) come out with later input or at `finish`.
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), FunctionError>;
    /// The stream ended (FIN): appends what was held back and any trailer (none by default: a
    /// function that holds nothing back needs no `finish`).
    fn finish(&mut self, _out: &mut Vec<u8>) -> Result<(), FunctionError> {
        Ok(())
    }
    /// Output is ready without more input: the last call stopped at its output's bound (a
    /// decompressor: one read may expand to gigabytes); `push` with no input gives the next
    /// part. Never, by default.
    fn more(&self) -> bool {
        false
    }
    /// Whether it holds bytes back that [`flush`](Self::flush) would let go (the proxy then
    /// waits at most [`HOLD`] for more input). Never, by default.
    fn holds(&self) -> bool {
        false
    }
    /// The sender paused with bytes held back (the proxy waited [`HOLD`] for more): appends
    /// what can go without more input, so that a request/response protocol is not stalled by
    /// a held tail. Nothing by default.
    fn flush(&mut self, _out: &mut Vec<u8>) -> Result<(), FunctionError> {
        Ok(())
    }
}

/// How long the proxy lets a function hold bytes back while the sender sends nothing more,
/// before it flushes them ([`StreamFunction::flush`]).
pub const HOLD: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum FunctionError {
    #[error("unknown stream function {0:?} (known: {known})", known = names().join(", "))]
    Unknown(String),
    #[error("function {function}: argument {arg}: {why}")]
    BadArg { function: &'static str, arg: String, why: String },
    #[error("function {function}: the stream is not valid input: {why}")]
    BadInput { function: &'static str, why: String },
}

/// A function's entry: its name (the resource's `stream.function`), its 16-bit id (carried in
/// the SID's ARG) and how to build one from its arguments (validated there).
pub struct Registration {
    pub name: &'static str,
    pub id: u16,
    pub build: fn(&Args) -> Result<Box<dyn StreamFunction>, FunctionError>,
}

/// Every built-in function. Ids are part of the SID layout: never reuse or renumber one.
pub static REGISTRY: &[Registration] = &[
    Registration { name: "identity", id: 1, build: functions::identity::build },
    Registration { name: "base64", id: 2, build: functions::base64::build },
    Registration { name: "replace", id: 3, build: functions::replace::build },
    Registration { name: "xor", id: 4, build: functions::xor::build },
    Registration { name: "compress", id: 5, build: functions::compress::build },
];

/// The registered function names.
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|r| r.name).collect()
}

/// A function by name, its arguments checked.
pub fn build(name: &str, args: &Args) -> Result<(u16, Box<dyn StreamFunction>), FunctionError> {
    let r = REGISTRY.iter().find(|r| r.name == name).ok_or_else(|| FunctionError::Unknown(name.to_string()))?;
    Ok((r.id, (r.build)(args)?))
}

/// The argument `name` of `function`, or `default` when absent; an argument the function does
/// not know is an error (a typo must not silently fall back to a default).
pub(crate) fn arg<'a>(function: &'static str, args: &'a Args, known: &[&str], name: &str) -> Result<Option<&'a str>, FunctionError> {
    if let Some(unknown) = args.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(FunctionError::BadArg { function, arg: unknown.clone(), why: format!("unknown (known: {})", known.join(", ")) });
    }
    Ok(args.get(name).map(String::as_str))
}

/// The functions one direction of a connection crosses, in order: each one's output is the
/// next one's input (consecutive stream functions on one proxy run in one process, without
/// another TCP hop).
#[derive(Default)]
pub struct Chain(pub Vec<Box<dyn StreamFunction>>);

impl Chain {
    /// The next bytes of the stream through every function: what is ready for the next hop.
    pub fn push(&mut self, input: &[u8]) -> Result<Vec<u8>, FunctionError> {
        let mut data: Option<Vec<u8>> = None;
        for f in &mut self.0 {
            let src = data.as_deref().unwrap_or(input);
            let mut out = Vec::with_capacity(src.len());
            f.push(src, &mut out)?;
            data = Some(out);
        }
        Ok(data.unwrap_or_else(|| input.to_vec()))
    }

    /// A function has more output without more input ([`StreamFunction::more`]): `push` with no
    /// input gives the next part.
    pub fn more(&self) -> bool {
        self.0.iter().any(|f| f.more())
    }

    /// A function holds bytes back that a flush would let go ([`StreamFunction::holds`]).
    pub fn holds(&self) -> bool {
        self.0.iter().any(|f| f.holds())
    }

    /// No function: the bytes go through as they are (the relay then copies nothing).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The end of the stream: each function's held-back bytes and trailer, through the rest.
    pub fn finish(&mut self) -> Result<Vec<u8>, FunctionError> {
        self.drain(|f, out| f.finish(out))
    }

    /// The sender paused: what each function can let go without more input, through the rest.
    pub fn flush(&mut self) -> Result<Vec<u8>, FunctionError> {
        self.drain(|f, out| f.flush(out))
    }

    fn drain(
        &mut self,
        mut step: impl FnMut(&mut dyn StreamFunction, &mut Vec<u8>) -> Result<(), FunctionError>,
    ) -> Result<Vec<u8>, FunctionError> {
        let mut data = Vec::new();
        for f in &mut self.0 {
            let mut out = Vec::new();
            if !data.is_empty() {
                f.push(&data, &mut out)?;
            }
            step(f.as_mut(), &mut out)?;
            data = out;
        }
        Ok(data)
    }
}

/// Runs `f` over `input` cut into reads at `cuts` (offsets), each read's output taken in as
/// many parts as it comes, then finishes: the stream's output.
pub fn run(f: &mut dyn StreamFunction, input: &[u8], cuts: &[usize]) -> Result<Vec<u8>, FunctionError> {
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&input.len())) {
        let c = c.clamp(at, input.len());
        f.push(&input[at..c], &mut out)?;
        while f.more() {
            f.push(&[], &mut out)?;
        }
        at = c;
    }
    f.finish(&mut out)?;
    Ok(out)
}

#[cfg(test)]
pub mod testing {
    use super::*;

    pub fn args(pairs: &[(&str, &str)]) -> Args {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// The output of `name(args)` over `input` is the same whatever the reads: whole, every
    /// single cut point, and byte by byte.
    pub fn same_over_every_split(name: &str, a: &Args, input: &[u8]) -> Vec<u8> {
        let whole = run(build(name, a).unwrap().1.as_mut(), input, &[]).unwrap();
        for cut in 0..=input.len() {
            let split = run(build(name, a).unwrap().1.as_mut(), input, &[cut]).unwrap();
            assert_eq!(split, whole, "{name}: cut at {cut}");
        }
        let bytes: Vec<usize> = (1..input.len()).collect();
        assert_eq!(run(build(name, a).unwrap().1.as_mut(), input, &bytes).unwrap(), whole, "{name}: byte by byte");
        whole
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn registry_names_and_ids_are_unique() {
        let mut n = names();
        n.sort();
        n.dedup();
        assert_eq!(n.len(), REGISTRY.len());
        let mut ids: Vec<u16> = REGISTRY.iter().map(|r| r.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), REGISTRY.len());
        assert!(!ids.contains(&0), "0 is no function");
    }

    #[test]
    fn unknown_functions_and_arguments_are_named() {
        let e = build("rot13", &Args::new()).err().unwrap();
        assert!(e.to_string().contains("rot13") && e.to_string().contains("base64"), "{e}");
        let e = build("base64", &args(&[("mode", "encode")])).err().unwrap();
        assert_eq!(e, FunctionError::BadArg { function: "base64", arg: "mode".into(), why: "unknown (known: op)".into() });
    }

    /// The seed's pipeline: `echo "I love dogs!" | base64 | sed 's/RvZ3/NhdH/g' | base64 -d`.
    #[test]
    fn the_seed_pipeline_turns_dogs_into_cats() {
        let stages = [
            ("base64", args(&[("op", "encode")])),
            ("replace", args(&[("from", "RvZ3"), ("to", "NhdH")])),
            ("base64", args(&[("op", "decode")])),
        ];
        let mut data = b"I love dogs!".to_vec();
        for (name, a) in &stages {
            data = same_over_every_split(name, a, &data);
        }
        assert_eq!(data, b"I love cats!");
        // The same three as one chain, the input in odd reads.
        let mut chain = Chain(stages.iter().map(|(n, a)| build(n, a).unwrap().1).collect());
        let mut out = Vec::new();
        for part in [&b"I lo"[..], b"ve d", b"ogs", b"!"] {
            out.extend(chain.push(part).unwrap());
        }
        out.extend(chain.finish().unwrap());
        assert_eq!(out, b"I love cats!");
    }
}
