//! `base64`: RFC 4648 base64 with padding. Argument `op`: `encode` (default) or `decode`.
//! Decoding skips line breaks (`\r`, `\n`) and refuses any other byte outside the alphabet,
//! or data after the padding. Holds back at most 2 bytes (encode) or 3 characters (decode).

use crate::{Args, FunctionError, StreamFunction};

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn build(args: &Args) -> Result<Box<dyn StreamFunction>, FunctionError> {
    match crate::arg("base64", args, &["op"], "op")?.unwrap_or("encode") {
        "encode" => Ok(Box::new(Encode { held: Vec::new() })),
        "decode" => Ok(Box::new(Decode { held: Vec::new(), ended: false })),
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
}

struct Decode {
    held: Vec<u8>,
    ended: bool,
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
        if self.ended {
            return Err(bad("data after the padding".into()));
        }
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
        self.ended = pad > 0;
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
    }

    #[test]
    fn bad_input_and_arguments_are_errors() {
        let dec = args(&[("op", "decode")]);
        for bad in [&b"Zm9"[..], b"Zm9*", b"Zg==Zg==", b"Z===", b"Zg=a"] {
            let (_, mut f) = crate::build("base64", &dec).unwrap();
            assert!(crate::run(f.as_mut(), bad, &[]).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(crate::build("base64", &args(&[("op", "rot13")])).is_err());
    }
}
