//! `xor`: each byte XORed with a repeating key (`key`: hex, 1 to 64 bytes), continued across
//! reads. Its own inverse: two `xor` hops with one key give the stream back. Holds nothing back.

use crate::{Args, FunctionError, StreamFunction};

struct Xor {
    key: Vec<u8>,
    at: usize,
}

pub fn build(args: &Args) -> Result<Box<dyn StreamFunction>, FunctionError> {
    let bad = |why: String| FunctionError::BadArg { function: "xor", arg: "key".into(), why };
    let hex = crate::arg("xor", args, &["key"], "key")?.ok_or_else(|| bad("required".into()))?;
    if hex.is_empty() || hex.len() % 2 != 0 || hex.len() > 128 {
        return Err(bad(format!("{hex:?}: 1 to 64 bytes as an even number of hex digits")));
    }
    let key = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad(format!("{hex:?} is not hex"))))
        .collect::<Result<Vec<u8>, _>>()?;
    Ok(Box::new(Xor { key, at: 0 }))
}

impl StreamFunction for Xor {
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), FunctionError> {
        out.extend(input.iter().map(|b| {
            let k = self.key[self.at];
            self.at = (self.at + 1) % self.key.len();
            b ^ k
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::*;

    #[test]
    fn the_key_continues_across_reads_and_undoes_itself() {
        let a = args(&[("key", "01ff")]);
        assert_eq!(same_over_every_split("xor", &a, b"\x00\x00\x10\x10\x20"), b"\x01\xff\x11\xef\x21");
        let text = b"a stream of bytes, any length";
        let once = same_over_every_split("xor", &a, text);
        assert_eq!(same_over_every_split("xor", &a, &once), text);
        assert_eq!(same_over_every_split("xor", &a, b""), b"");
    }

    #[test]
    fn keys_are_checked() {
        for key in ["", "1", "zz", &"ab".repeat(65)] {
            assert!(crate::build("xor", &args(&[("key", key)])).is_err(), "{key:?}");
        }
        assert!(crate::build("xor", &args(&[])).is_err());
    }
}
