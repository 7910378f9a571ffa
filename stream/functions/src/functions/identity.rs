//! `identity`: the stream unchanged (no arguments). The baseline of the benchmarks: what a
//! stream hop costs by itself.

use crate::{Args, FunctionError, StreamFunction};

struct Identity;

pub fn build(args: &Args) -> Result<Box<dyn StreamFunction>, FunctionError> {
    crate::arg("identity", args, &[], "")?;
    Ok(Box::new(Identity))
}

impl StreamFunction for Identity {
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), FunctionError> {
        out.extend_from_slice(input);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::*;

    #[test]
    fn passes_everything_and_nothing() {
        let a = args(&[]);
        assert_eq!(same_over_every_split("identity", &a, b"abc\0\xff"), b"abc\0\xff");
        assert_eq!(same_over_every_split("identity", &a, b""), b"");
        assert!(crate::build("identity", &args(&[("x", "1")])).is_err(), "no arguments");
    }
}
