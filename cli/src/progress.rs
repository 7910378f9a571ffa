//! A long operation's progress on one line of stderr, on a terminal only: scripts (stderr a pipe
//! or a file) see nothing of it.

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    what: &'static str,
    total: usize,
    done: usize,
    start: Instant,
    shown: bool,
}

impl Progress {
    pub fn new(what: &'static str, total: usize) -> Self {
        Progress { what, total, done: 0, start: Instant::now(), shown: std::io::stderr().is_terminal() }
    }

    /// The next step has started: `doing` names it.
    pub fn step(&mut self, doing: &str) {
        self.done = (self.done + 1).min(self.total);
        if self.shown {
            eprint!("\r\x1b[2K{}", self.line(doing));
            let _ = std::io::stderr().flush();
        }
    }

    fn line(&self, doing: &str) -> String {
        format!("{} [{}/{}] {doing} ({:.1}s)", self.what, self.done, self.total, self.start.elapsed().as_secs_f64())
    }
}

impl Drop for Progress {
    /// The line goes away, whether the operation ended or failed (its error is printed next).
    fn drop(&mut self) {
        if self.shown {
            eprint!("\r\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_steps_up_to_the_total() {
        let mut p = Progress::new("lab up", 2);
        p.shown = false;
        p.step("node n1");
        assert!(p.line("node n1").starts_with("lab up [1/2] node n1 ("));
        p.step("node n2");
        p.step("one too many");
        assert!(p.line("x").starts_with("lab up [2/2] x"), "never beyond the total");
    }
}
