//! `base64`: RFC 4648 base64 with padding. Argument `op`: `encode` (default) or `decode`.
//! Decoding skips line breaks (`\r`, `\n`), refuses any other byte outside the alphabet and
//! reads concatenated encodings (each padded: what an encoder flushed at a pause of its
//! sender). Holds back at most 2 bytes (encode: flushed as a padded group when the sender
//! pauses, so that what it encodes is then several padded encodings one after the other, which
//! this decoder reads and a decoder that takes one encoding only refuses) or 3 characters
//! (decode: a group is never split).

use crate::{Args, FunctionError, StreamFunction};

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn build(args: &Args) -> Result<Box<dyn StreamFunction>, FunctionError> {
    match crate::arg("base64", args, &["op"], "op")?.unwrap_or("encode") {
        "encode" => Ok(Box::new(Encode { held: Vec::new() })),
        "decode" => Ok(Box::new(Decode { held: Vec::new() })),
        other => Err(FunctionError::BadArg { function: "base64", arg: "op".into(), why: format!("{other:?}: encode or decode") }),
    }
}

struct Encode {
    held: Vec<u8>,
}

fn encode_group(g: &[u8], out: &mut Vec<u8>) {
    let b = [g[0], *g.get(1).unwrap_or(&0), *g.get(2).unwrap_or(&0)];
    let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
    for i in 0..4 {
        if i <= g.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]);
        } else {
            out.push(b'=');
        }
    }
}

impl StreamFunction for Encode {
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), FunctionError> {
        self.held.extend_from_slice(input);
        let whole = self.held.len() / 3 * 3;
        for g in self.held[..whole].chunks(3) {
            encode_group(g, out);
        }
        self.held.drain(..whole);
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), FunctionError> {
        if !self.held.is_empty() {
            encode_group(&self.held, out);
            self.held.clear();
        }
        Ok(())
    }

    fn holds(&self) -> bool {
        !self.held.is_empty()
    }

    fn flush(&mut self, out: &mut Vec<u8>) -> Result<(), FunctionError> {
        self.finish(out)
    }
}

struct Decode {
    held: Vec<u8>,
}

fn bad(why: String) -> FunctionError {
    FunctionError::BadInput { function: "base64", why }
}

fn value(c: u8) -> Option<u32> {
    ALPHABET.iter().position(|&a| a == c).map(|v| v as u32)
}

impl Decode {
    /// Decodes one 4-character group.
    fn group(&mut self, g: &[u8], out: &mut Vec<u8>) -> Result<(), FunctionError> {
        let pad = g.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || g[..4 - pad].contains(&b'=') {
            return Err(bad(format!("misplaced padding in {:?}", String::from_utf8_lossy(g))));
        }
        let mut n = 0u32;
        for &c in &g[..4 - pad] {
            n = n << 6 | value(c).ok_or_else(|| bad(format!("byte {c:#04x} is not base64")))?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
        Ok(())
    }
}

impl StreamFunction for Decode {
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), FunctionError> {
        for &c in input.iter().filter(|&&c| c != b'\n' && c != b'\r') {
            self.held.push(c);
            if self.held.len() == 4 {
                let g = std::mem::take(&mut self.held);
                self.group(&g, out)?;
            }
        }
        Ok(())
    }

    fn finish(&mut self, _out: &mut Vec<u8>) -> Result<(), FunctionError> {
        if !self.held.is_empty() {
            return Err(bad(format!("{} characters left over at the end", self.held.len())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::*;

    #[test]
    fn rfc_4648_test_vectors_over_every_split() {
        let enc = args(&[("op", "encode")]);
        let dec = args(&[("op", "decode")]);
        for (plain, coded) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(same_over_every_split("base64", &enc, plain.as_bytes()), coded.as_bytes(), "{plain}");
            assert_eq!(same_over_every_split("base64", &dec, coded.as_bytes()), plain.as_bytes(), "{coded}");
        }
        assert_eq!(same_over_every_split("base64", &args(&[]), b"\xff\x00\xfe"), b"/wD+", "encode by default");
        assert_eq!(same_over_every_split("base64", &dec, b"Zm9v\r\nYmFy\n"), b"foobar", "line breaks");
        assert_eq!(same_over_every_split("base64", &dec, b"Zg==Zm8=Zm9v"), b"ffofoo", "concatenated encodings");
    }

    /// A pause of the sender: the encoder lets its held bytes go as a padded group, which the
    /// decoder reads as the start of another encoding; the decoder never splits a group.
    #[test]
    fn a_pause_flushes_the_encoders_held_bytes() {
        let (_, mut enc) = crate::build("base64", &args(&[("op", "encode")])).unwrap();
        let (_, mut dec) = crate::build("base64", &args(&[("op", "decode")])).unwrap();
        let (mut coded, mut plain) = (Vec::new(), Vec::new());
        for part in [&b"GET /\r\n"[..], b"Host: x\r\n\r\n"] {
            enc.push(part, &mut coded).unwrap();
            enc.flush(&mut coded).unwrap();
            dec.push(&coded, &mut plain).unwrap();
            dec.flush(&mut plain).unwrap();
            assert!(plain.ends_with(part), "{:?} held back", String::from_utf8_lossy(part));
            coded.clear();
        }
        assert_eq!(plain, b"GET /\r\nHost: x\r\n\r\n");
        let mut partial = Vec::new();
        dec.push(b"Zm9", &mut partial).unwrap();
        dec.flush(&mut partial).unwrap();
        assert!(partial.is_empty(), "half a group is not decoded");
        dec.push(b"v", &mut partial).unwrap();
        assert_eq!(partial, b"foo");
    }

    #[test]
    fn bad_input_and_arguments_are_errors() {
        let dec = args(&[("op", "decode")]);
        for bad in [&b"Zm9"[..], b"Zm9*", b"Z===", b"Zg=a"] {
            let (_, mut f) = crate::build("base64", &dec).unwrap();
            assert!(crate::run(f.as_mut(), bad, &[]).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(crate::build("base64", &args(&[("op", "rot13")])).is_err());
    }
}
