//! `compress`: `algorithm` `zstd` (default) or `gzip`, `op` `compress` (default) or
//! `decompress`. Compression flushes at the end of every read (a request/response protocol
//! never waits on bytes the compressor holds), so the next hop can decompress what it has; the
//! stream's end closes the frame. Decompression refuses a corrupt or truncated stream, reads
//! concatenated frames (members), and gives at most 1 MiB a call (`inflate.rs`): a read that
//! expands further is written out in parts.

use std::io::Write;

use super::inflate::Inflate;
use crate::{Args, FunctionError, StreamFunction};

enum Codec {
    ZstdCompress(zstd::stream::write::Encoder<'static, Vec<u8>>),
    GzipCompress(flate2::write::GzEncoder<Vec<u8>>),
    Decompress(Inflate),
    Done,
}

struct Compress {
    codec: Codec,
    /// Decompression: input not expanded yet (at most one read's), and whether the last call
    /// stopped at its output's bound.
    pending: Vec<u8>,
    more: bool,
}

pub fn build(args: &Args) -> Result<Box<dyn StreamFunction>, FunctionError> {
    let known = ["algorithm", "op"];
    let bad = |arg: &str, why: String| FunctionError::BadArg { function: "compress", arg: arg.into(), why };
    let algorithm = crate::arg("compress", args, &known, "algorithm")?.unwrap_or("zstd");
    let op = crate::arg("compress", args, &known, "op")?.unwrap_or("compress");
    let io = |e: std::io::Error| bad("algorithm", e.to_string());
    let codec = match (algorithm, op) {
        ("zstd", "compress") => Codec::ZstdCompress(zstd::stream::write::Encoder::new(Vec::new(), 3).map_err(io)?),
        ("zstd", "decompress") => Codec::Decompress(Inflate::zstd().map_err(io)?),
        ("gzip", "compress") => Codec::GzipCompress(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default())),
        ("gzip", "decompress") => Codec::Decompress(Inflate::gzip()),
        ("zstd" | "gzip", other) => return Err(bad("op", format!("{other:?}: compress or decompress"))),
        (other, _) => return Err(bad("algorithm", format!("{other:?}: zstd or gzip"))),
    };
    Ok(Box::new(Compress { codec, pending: Vec::new(), more: false }))
}

fn corrupt(e: std::io::Error) -> FunctionError {
    FunctionError::BadInput { function: "compress", why: e.to_string() }
}

/// Writes `input` into a streaming codec, flushes it (so the next hop can decode what it has) and
/// moves what the codec produced so far to `out`.
fn feed<W: Write>(w: &mut W, produced: fn(&mut W) -> &mut Vec<u8>, input: &[u8], out: &mut Vec<u8>) -> Result<(), FunctionError> {
    w.write_all(input).and_then(|_| w.flush()).map_err(corrupt)?;
    out.append(produced(w));
    Ok(())
}

impl StreamFunction for Compress {
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), FunctionError> {
        match &mut self.codec {
            _ if input.is_empty() && !self.more => Ok(()),
            Codec::ZstdCompress(e) => feed(e, zstd::stream::write::Encoder::get_mut, input, out),
            Codec::GzipCompress(e) => feed(e, flate2::write::GzEncoder::get_mut, input, out),
            Codec::Decompress(d) => {
                self.pending.extend_from_slice(input);
                self.more = d.run(&mut self.pending, out)?;
                Ok(())
            }
            Codec::Done => Ok(()),
        }
    }

    fn more(&self) -> bool {
        self.more
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), FunctionError> {
        while self.more {
            self.push(&[], out)?;
        }
        let mut rest = match std::mem::replace(&mut self.codec, Codec::Done) {
            Codec::ZstdCompress(e) => e.finish().map_err(corrupt)?,
            Codec::GzipCompress(e) => e.finish().map_err(corrupt)?,
            // A decompressor's input must end on a whole frame / member: a truncated stream is
            // an error, not a short one.
            Codec::Decompress(d) if !d.whole() || !self.pending.is_empty() => {
                return Err(corrupt(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "truncated: the stream ended within a frame")))
            }
            Codec::Decompress(_) | Codec::Done => Vec::new(),
        };
        out.append(&mut rest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::*;

    fn text(n: usize) -> Vec<u8> {
        (0..n).map(|i| format!("line {} of a text that compresses well\n", i % 97)).collect::<String>().into_bytes()[..n].to_vec()
    }

    #[test]
    fn round_trips_over_every_split_and_compresses() {
        for algorithm in ["zstd", "gzip"] {
            let c = args(&[("algorithm", algorithm), ("op", "compress")]);
            let d = args(&[("algorithm", algorithm), ("op", "decompress")]);
            let input = text(3000);
            let packed = crate::run(crate::build("compress", &c).unwrap().1.as_mut(), &input, &[1000, 2000]).unwrap();
            assert!(packed.len() * 4 < input.len(), "{algorithm}: {} of {} bytes", packed.len(), input.len());
            assert_eq!(same_over_every_split("compress", &d, &packed), input, "{algorithm}");
            // Each read's bytes are out before the next read: a request/response never stalls.
            let (_, mut f) = crate::build("compress", &c).unwrap();
            let mut out = Vec::new();
            f.push(b"GET / HTTP/1.1\r\n\r\n", &mut out).unwrap();
            let (_, mut g) = crate::build("compress", &d).unwrap();
            let mut plain = Vec::new();
            g.push(&out, &mut plain).unwrap();
            assert_eq!(plain, b"GET / HTTP/1.1\r\n\r\n", "{algorithm}: flushed per read");
        }
    }

    /// One read of highly compressed data (16 MiB of zeros in a few KB) comes out in parts of
    /// at most 1 MiB, the next one on asking (`more`), whatever the algorithm; gzip's members
    /// (and zstd's frames) may follow one another.
    #[test]
    fn a_read_that_expands_comes_out_in_bounded_parts() {
        let zeros = vec![0u8; 16 << 20];
        for algorithm in ["zstd", "gzip"] {
            let c = args(&[("algorithm", algorithm)]);
            let packed = crate::run(crate::build("compress", &c).unwrap().1.as_mut(), &zeros, &[]).unwrap();
            let twice = [packed.clone(), packed].concat();
            let (_, mut d) = crate::build("compress", &args(&[("algorithm", algorithm), ("op", "decompress")])).unwrap();
            let (mut total, mut parts, mut part) = (0, 0, Vec::new());
            d.push(&twice, &mut part).unwrap();
            loop {
                assert!(part.len() <= 1 << 20, "{algorithm}: a part of {} bytes", part.len());
                assert!(part.iter().all(|&b| b == 0));
                (total, parts) = (total + part.len(), parts + 1);
                if !d.more() {
                    break;
                }
                part.clear();
                d.push(&[], &mut part).unwrap();
            }
            assert_eq!(total, 2 * zeros.len(), "{algorithm}: both frames or members");
            assert!(parts >= 32, "{algorithm}: {parts} parts");
            let mut tail = Vec::new();
            d.finish(&mut tail).unwrap();
            assert!(tail.is_empty());
        }
    }

    /// gzip members with every optional header field (extra, name, comment), two of them one
    /// after the other, over every split; a header with reserved flags, a wrong header CRC, or
    /// a name that never ends (past 64 KiB) is refused.
    #[test]
    fn gzip_headers_of_every_shape() {
        use std::io::Write;
        let d = args(&[("algorithm", "gzip"), ("op", "decompress")]);
        let member = |plain: &[u8]| {
            let mut w =
                flate2::GzBuilder::new().extra(&b"xy"[..]).filename("a.txt").comment("c").write(Vec::new(), flate2::Compression::fast());
            w.write_all(plain).unwrap();
            w.finish().unwrap()
        };
        let two = [member(b"first, "), member(b"second")].concat();
        assert_eq!(same_over_every_split("compress", &d, &two), b"first, second");
        let refused = |bytes: &[u8]| crate::run(crate::build("compress", &d).unwrap().1.as_mut(), bytes, &[]).is_err();
        let mut reserved = member(b"x");
        reserved[3] |= 0x20;
        assert!(refused(&reserved), "reserved flags");
        // FHCRC: the header's CRC-32, low 16 bits, after the other fields.
        let with_crc = |good: bool| {
            let mut h = vec![0x1f, 0x8b, 8, 2, 0, 0, 0, 0, 0, 255];
            let mut sum = flate2::Crc::new();
            sum.update(&h);
            let crc = (sum.sum() as u16) ^ if good { 0 } else { 1 };
            h.extend_from_slice(&crc.to_le_bytes());
            // A member with the plain 10-byte header, its body and trailer after ours.
            let mut plain = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            plain.write_all(b"crc").unwrap();
            [h, plain.finish().unwrap()[10..].to_vec()].concat()
        };
        assert_eq!(same_over_every_split("compress", &d, &with_crc(true)), b"crc");
        assert!(refused(&with_crc(false)), "a wrong header CRC");
        let endless = [&[0x1f, 0x8b, 8, 8, 0, 0, 0, 0, 0, 255][..], &vec![b'n'; 70 << 10]].concat();
        assert!(refused(&endless), "a name past 64 KiB");
    }

    #[test]
    fn empty_streams_and_broken_ones() {
        for algorithm in ["zstd", "gzip"] {
            let c = args(&[("algorithm", algorithm)]);
            let d = args(&[("algorithm", algorithm), ("op", "decompress")]);
            let packed = crate::run(crate::build("compress", &c).unwrap().1.as_mut(), b"", &[]).unwrap();
            assert_eq!(same_over_every_split("compress", &d, &packed), b"", "{algorithm}: an empty stream");
            assert_eq!(same_over_every_split("compress", &d, b""), b"", "{algorithm}: nothing at all");
            let whole = crate::run(crate::build("compress", &c).unwrap().1.as_mut(), &text(500), &[]).unwrap();
            let truncated = crate::run(crate::build("compress", &d).unwrap().1.as_mut(), &whole[..whole.len() - 3], &[]);
            assert!(truncated.is_err(), "{algorithm}: truncated");
            let garbage = crate::run(crate::build("compress", &d).unwrap().1.as_mut(), b"not compressed at all", &[]);
            assert!(garbage.is_err(), "{algorithm}: not its format");
        }
        assert!(crate::build("compress", &args(&[("algorithm", "lz4")])).is_err());
        assert!(crate::build("compress", &args(&[("op", "squeeze")])).is_err());
    }
}
