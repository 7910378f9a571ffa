//! `srv6pipes wait CHAIN`: polls a chain's Ready condition until it is True or the timeout ends.
//! On a terminal it shows progress on one line of stderr; in a script (stderr not a terminal) it
//! prints only the outcome.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// A duration as `kubectl wait --timeout` takes it: `90s`, `2m`, `500ms`, `1h`, or seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().map_err(|_| format!("{text:?}: want a duration such as 90s, 2m or 500ms"))?;
    let seconds = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{text:?}: unit {unit:?} is not one of ms, s, m, h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// What one poll saw: Ready's (status, reason, message), or None before the operator reported.
pub type Seen = Option<(bool, String, String)>;

/// A probe's error that a later poll may not have (the API server did not answer, or answered
/// 5xx): the wait goes on, showing it.
#[derive(Debug)]
pub struct NoAnswer(pub String);

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no answer: {}", self.0)
    }
}

impl std::error::Error for NoAnswer {}

/// The progress line for what was seen (or why nothing was) after `elapsed`.
pub fn describe(chain: &str, seen: &Result<Seen, String>, elapsed: Duration) -> String {
    let state = match seen {
        Err(why) => format!("no answer ({why})"),
        Ok(None) => "not reported yet".to_string(),
        Ok(Some((true, reason, _))) => format!("Ready ({reason})"),
        Ok(Some((false, reason, message))) if message.is_empty() => format!("not Ready ({reason})"),
        Ok(Some((false, reason, message))) => format!("not Ready ({reason}: {message})"),
    };
    format!("{chain}: {state} after {:.1}s", elapsed.as_secs_f64())
}

/// Polls `probe` every `every` until Ready or `timeout`; Ok(true) when Ready. A probe that fails
/// with [`NoAnswer`] is polled again; any other error ends the wait.
pub fn wait(chain: &str, timeout: Duration, every: Duration, mut probe: impl FnMut() -> anyhow::Result<Seen>) -> anyhow::Result<bool> {
    let start = Instant::now();
    let terminal = std::io::stderr().is_terminal();
    loop {
        let seen = match probe() {
            Ok(seen) => Ok(seen),
            Err(e) => Err(e.downcast::<NoAnswer>()?.0),
        };
        let line = describe(chain, &seen, start.elapsed());
        let ready = matches!(seen, Ok(Some((true, ..))));
        if ready || start.elapsed() >= timeout {
            if terminal {
                eprint!("\r\x1b[2K");
            }
            println!("{line}");
            return Ok(ready);
        }
        if terminal {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        }
        std::thread::sleep(every.min(timeout.saturating_sub(start.elapsed())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_kubectl_takes_them() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5 minutes").unwrap_err().contains("unit"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn waits_until_ready_and_gives_up_with_the_last_reason() {
        let mut polls =
            vec![None, Some((false, "NoReplicas".to_string(), String::new())), Some((true, "Programmed".to_string(), String::new()))];
        polls.reverse();
        let ready = wait("default/c", Duration::from_secs(5), Duration::from_millis(1), || Ok(polls.pop().unwrap())).unwrap();
        assert!(ready && polls.is_empty(), "stops at the first Ready");

        let mut n = 0;
        let ready = wait("default/c", Duration::from_millis(30), Duration::from_millis(5), || {
            n += 1;
            Ok(Some((false, "NoReplicas".to_string(), "ids has no ready replica".to_string())))
        })
        .unwrap();
        assert!(!ready && n >= 2, "polled {n} times, then gave up");
        assert_eq!(
            describe("default/c", &Ok(Some((false, "NoReplicas".into(), "ids has no ready replica".into()))), Duration::from_millis(1500)),
            "default/c: not Ready (NoReplicas: ids has no ready replica) after 1.5s"
        );
    }

    #[test]
    fn an_api_server_that_does_not_answer_is_asked_again_and_other_errors_end_the_wait() {
        let mut polls: Vec<anyhow::Result<Seen>> =
            vec![Err(NoAnswer("connection refused".into()).into()), Ok(Some((true, "Programmed".to_string(), String::new())))];
        polls.reverse();
        assert!(wait("default/c", Duration::from_secs(5), Duration::from_millis(1), || polls.pop().unwrap()).unwrap());
        let err = wait("default/c", Duration::from_secs(5), Duration::from_millis(1), || Err(anyhow::anyhow!("no chain default/c")));
        assert_eq!(err.unwrap_err().to_string(), "no chain default/c");
        assert_eq!(
            describe("default/c", &Err("connection refused".into()), Duration::from_millis(500)),
            "default/c: no answer (connection refused) after 0.5s"
        );
    }
}
