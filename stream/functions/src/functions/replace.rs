//! `replace`: every occurrence of the literal byte string `from` (non-empty) becomes `to`
//! (possibly empty or of another length), scanning left to right without overlap, as `sed
//! 's/from/to/g'` on a stream would. Holds back at most `from`'s length less one byte: the
//! longest tail that could still begin an occurrence, let go when the sender pauses (an
//! occurrence split by a pause of its sender is then left as it is).

use crate::{Args, FunctionError, StreamFunction};

struct Replace {
    from: Vec<u8>,
    to: Vec<u8>,
    held: Vec<u8>,
}

pub fn build(args: &Args) -> Result<Box<dyn StreamFunction>, FunctionError> {
    let known = ["from", "to"];
    let from = crate::arg("replace", args, &known, "from")?.unwrap_or("");
    if from.is_empty() {
        return Err(FunctionError::BadArg { function: "replace", arg: "from".into(), why: "required, non-empty".into() });
    }
    let to = crate::arg("replace", args, &known, "to")?.ok_or_else(|| FunctionError::BadArg {
        function: "replace",
        arg: "to".into(),
        why: "required (may be empty)".into(),
    })?;
    Ok(Box::new(Replace { from: from.as_bytes().to_vec(), to: to.as_bytes().to_vec(), held: Vec::new() }))
}

impl Replace {
    /// Emits `held` up to the last position that cannot start an occurrence; `end`: all of it.
    fn emit(&mut self, out: &mut Vec<u8>, end: bool) {
        let (buf, n) = (&self.held, self.from.len());
        let mut i = 0;
        while i < buf.len() {
            if buf.len() - i < n {
                // A tail shorter than the pattern: keep it if it could begin an occurrence.
                if !end && self.from.starts_with(&buf[i..]) {
                    break;
                }
                out.push(buf[i]);
                i += 1;
            } else if buf[i..i + n] == self.from[..] {
                out.extend_from_slice(&self.to);
                i += n;
            } else {
                out.push(buf[i]);
                i += 1;
            }
        }
        self.held.drain(..i);
    }
}

impl StreamFunction for Replace {
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), FunctionError> {
        self.held.extend_from_slice(input);
        self.emit(out, false);
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), FunctionError> {
        self.emit(out, true);
        Ok(())
    }

    fn holds(&self) -> bool {
        !self.held.is_empty()
    }

    fn flush(&mut self, out: &mut Vec<u8>) -> Result<(), FunctionError> {
        self.emit(out, true);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::*;

    #[test]
    fn replaces_across_reads_without_overlap() {
        let a = args(&[("from", "RvZ3"), ("to", "NhdH")]);
        assert_eq!(same_over_every_split("replace", &a, b"SSBsb3ZlIGRvZ3Mh"), b"SSBsb3ZlIGNhdHMh");
        let aa = args(&[("from", "aa"), ("to", "b")]);
        assert_eq!(same_over_every_split("replace", &aa, b"aaaaa"), b"bba", "left to right, no overlap");
        let grow = args(&[("from", "ab"), ("to", "xyz!")]);
        assert_eq!(same_over_every_split("replace", &grow, b"aab-ab-a"), b"axyz!-xyz!-a", "another length");
        let cut = args(&[("from", "needle"), ("to", "")]);
        assert_eq!(same_over_every_split("replace", &cut, b"needneedleedle"), b"neededle");
        assert_eq!(same_over_every_split("replace", &cut, b""), b"");
    }

    #[test]
    fn holds_back_less_than_the_pattern() {
        let (_, mut f) = crate::build("replace", &args(&[("from", "abcd"), ("to", "-")])).unwrap();
        let mut out = Vec::new();
        f.push(&[b'x'; 10_000], &mut out).unwrap();
        assert_eq!(out.len(), 10_000, "nothing that cannot begin a match is held");
        f.push(b"abc", &mut out).unwrap();
        assert_eq!(out.len(), 10_000, "a possible beginning is");
        f.finish(&mut out).unwrap();
        assert!(out.ends_with(b"abc"));
        // A pause of the sender lets the held tail go: an occurrence it splits is not replaced.
        let (_, mut f) = crate::build("replace", &args(&[("from", "abcd"), ("to", "-")])).unwrap();
        let mut out = Vec::new();
        f.push(b"xxabc", &mut out).unwrap();
        f.flush(&mut out).unwrap();
        assert_eq!(out, b"xxabc");
        f.push(b"dabcd", &mut out).unwrap();
        assert_eq!(out, b"xxabcd-");
    }

    #[test]
    fn arguments_are_checked() {
        assert!(crate::build("replace", &args(&[("to", "x")])).is_err(), "from is required");
        assert!(crate::build("replace", &args(&[("from", "x")])).is_err(), "to is required");
        assert!(crate::build("replace", &args(&[("from", "x"), ("to", "y"), ("g", "1")])).is_err());
    }
}
