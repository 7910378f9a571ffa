//! `compress`'s decompressors, with a bounded output per call: the input they have not expanded
//! yet waits in `pending` (about one read; a gzip header at most 64 KiB), and each call
//! produces at most [`OUT_CAP`] bytes,
//! so that one read of highly compressed data (64 KiB of zstd-compressed zeros is gigabytes)
//! never becomes one allocation: the proxy writes each part before it asks for the next.

use flate2::{Crc, Decompress, FlushDecompress, Status};
use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

use crate::FunctionError;

/// The most one call appends.
pub const OUT_CAP: usize = 1 << 20;

fn corrupt(why: impl std::fmt::Display) -> FunctionError {
    FunctionError::BadInput { function: "compress", why: why.to_string() }
}

pub enum Inflate {
    Zstd { decoder: zstd::stream::raw::Decoder<'static>, frame_done: bool },
    Gzip(Gunzip),
}

impl Inflate {
    pub fn zstd() -> std::io::Result<Self> {
        Ok(Inflate::Zstd { decoder: zstd::stream::raw::Decoder::new()?, frame_done: true })
    }

    pub fn gzip() -> Self {
        Inflate::Gzip(Gunzip { part: Part::Header, inflate: Decompress::new(false), crc: Crc::new() })
    }

    /// Expands what it can of `pending` (consumed from its front), appending at most
    /// [`OUT_CAP`] bytes to `out`; whether it stopped for the cap (call again, with or without
    /// more input). The room it writes into grows with what comes out (zeroed before use: no
    /// more of it than a few times the output).
    pub fn run(&mut self, pending: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<bool, FunctionError> {
        let (start, mut consumed, mut produced) = (out.len(), 0, 0);
        let mut room = (pending.len() * 4).clamp(16 << 10, OUT_CAP);
        loop {
            out.resize(start + produced + room, 0);
            let (used, made) = self.step(&pending[consumed..], &mut out[start + produced..])?;
            (consumed, produced) = (consumed + used, produced + made);
            if made < room || produced == OUT_CAP {
                break;
            }
            room = (room * 2).min(OUT_CAP - produced);
        }
        out.truncate(start + produced);
        pending.drain(..consumed);
        Ok(produced == OUT_CAP)
    }

    /// (consumed, produced): `input` expanded into `output` until either is used up.
    fn step(&mut self, input: &[u8], output: &mut [u8]) -> Result<(usize, usize), FunctionError> {
        match self {
            Inflate::Zstd { decoder, frame_done } => {
                let mut input = InBuffer::around(input);
                let mut output = OutBuffer::around(output);
                // (Run again while it moves: a frame's end and the next frame's start in one input.)
                while output.pos() < output.capacity() {
                    let before = (input.pos(), output.pos());
                    let hint = decoder.run(&mut input, &mut output).map_err(corrupt)?;
                    if (input.pos(), output.pos()) == before {
                        break;
                    }
                    *frame_done = hint == 0;
                }
                Ok((input.pos(), output.pos()))
            }
            Inflate::Gzip(g) => g.run(input, output),
        }
    }

    /// The stream ended here: whether that is between frames (members), not within one.
    pub fn whole(&self) -> bool {
        match self {
            Inflate::Zstd { frame_done, .. } => *frame_done,
            Inflate::Gzip(g) => matches!(g.part, Part::Header),
        }
    }
}

/// Where a gzip member (RFC 1952) is.
enum Part {
    Header,
    Body,
    Trailer,
}

/// RFC 1952 members, one after the other: the header parsed here, the deflate body by flate2,
/// the trailer's CRC-32 and length checked.
pub struct Gunzip {
    part: Part,
    inflate: Decompress,
    crc: Crc,
}

impl Gunzip {
    /// (consumed, produced) of `input` into `output`.
    fn run(&mut self, input: &[u8], output: &mut [u8]) -> Result<(usize, usize), FunctionError> {
        let (mut at, mut produced) = (0, 0);
        loop {
            match self.part {
                Part::Header => match header_len(&input[at..])? {
                    Some(n) => {
                        at += n;
                        self.part = Part::Body;
                    }
                    None => return Ok((at, produced)),
                },
                Part::Body => {
                    let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
                    let status = self.inflate.decompress(&input[at..], &mut output[produced..], FlushDecompress::None).map_err(corrupt)?;
                    let (used, made) = ((self.inflate.total_in() - in0) as usize, (self.inflate.total_out() - out0) as usize);
                    self.crc.update(&output[produced..produced + made]);
                    (at, produced) = (at + used, produced + made);
                    match status {
                        Status::StreamEnd => self.part = Part::Trailer,
                        _ if used == 0 && made == 0 => return Ok((at, produced)),
                        _ if produced == output.len() => return Ok((at, produced)),
                        _ => {}
                    }
                }
                Part::Trailer => {
                    let Some(t) = input.get(at..at + 8) else { return Ok((at, produced)) };
                    let (crc, len) = (u32::from_le_bytes(t[..4].try_into().unwrap()), u32::from_le_bytes(t[4..].try_into().unwrap()));
                    if crc != self.crc.sum() || len != self.crc.amount() {
                        return Err(corrupt("gzip member: CRC or length mismatch"));
                    }
                    at += 8;
                    (self.part, self.crc) = (Part::Header, Crc::new());
                    self.inflate.reset(false);
                }
            }
        }
    }
}

/// The most a gzip header may take (flate2's own bound): its name or comment never ends
/// otherwise, and would be held, and scanned again, read after read.
const MAX_HEADER: usize = 64 << 10;

/// The length of the gzip header at the start of `b` (RFC 1952 §2.3), None while incomplete;
/// reserved flags, a header longer than [`MAX_HEADER`] or a wrong header CRC are errors.
fn header_len(b: &[u8]) -> Result<Option<usize>, FunctionError> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    const RESERVED: u8 = 0xe0;
    if b.len() > MAX_HEADER && header_len(&b[..MAX_HEADER])?.is_none() {
        return Err(corrupt(format!("gzip member: a header longer than {MAX_HEADER} bytes")));
    }
    if b.len() >= 2 && b[..2] != [0x1f, 0x8b] {
        return Err(corrupt("not gzip (no magic number)"));
    }
    if b.len() < 10 {
        return Ok(None);
    }
    if b[2] != 8 {
        return Err(corrupt("gzip member: not deflate"));
    }
    let flags = b[3];
    if flags & RESERVED != 0 {
        return Err(corrupt("gzip member: reserved header flags set"));
    }
    let mut n = 10;
    if flags & FEXTRA != 0 {
        let Some(x) = b.get(n..n + 2) else { return Ok(None) };
        n += 2 + u16::from_le_bytes([x[0], x[1]]) as usize;
    }
    for field in [FNAME, FCOMMENT] {
        if flags & field != 0 {
            match b.get(n..).and_then(|rest| rest.iter().position(|&c| c == 0)) {
                Some(end) => n += end + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & FHCRC != 0 {
        let Some(crc) = b.get(n..n + 2) else { return Ok(None) };
        let mut sum = Crc::new();
        sum.update(&b[..n]);
        if u16::from_le_bytes([crc[0], crc[1]]) != sum.sum() as u16 {
            return Err(corrupt("gzip member: header CRC mismatch"));
        }
        n += 2;
    }
    Ok((b.len() >= n).then_some(n))
}
