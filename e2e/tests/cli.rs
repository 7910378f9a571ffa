//! The CLI as users install it (no root): shell completions that their shells accept, man pages
//! for every subcommand, and `kubectl srv6pipes` through a `kubectl-srv6pipes` link.

use std::process::{Command, Output};

mod common;
use common::{target_dir, tempdir};

fn srv6pipes(args: &[&str]) -> Output {
    Command::new(target_dir().join("srv6pipes")).args(args).output().expect("run srv6pipes")
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

#[test]
fn completions_for_every_shell_name_the_subcommands() {
    for (shell, marker) in [("bash", "_srv6pipes()"), ("zsh", "#compdef srv6pipes"), ("fish", "complete -c srv6pipes")] {
        let script = ok(srv6pipes(&["completion", shell]));
        assert!(script.contains(marker), "{shell}: {marker:?} missing");
        for sub in ["lab", "trace", "stats", "wait", "completion"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
        // The shell itself parses it, where it is installed.
        if have(shell) {
            let dir = tempdir("cli-completion");
            let file = dir.join(shell);
            std::fs::write(&file, &script).unwrap();
            let check = Command::new(shell).arg("-n").arg(&file).output().unwrap();
            assert!(check.status.success(), "{shell} -n: {}", String::from_utf8_lossy(&check.stderr));
        } else {
            eprintln!("{shell} is not installed: its completion script is checked for content only");
        }
    }
    let bad = srv6pipes(&["completion", "tcsh"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("possible values"));
}

#[test]
fn man_pages_for_every_subcommand() {
    let dir = tempdir("cli-man");
    ok(srv6pipes(&["man", dir.to_str().unwrap()]));
    for page in ["srv6pipes.1", "srv6pipes-lab.1", "srv6pipes-lab-up.1", "srv6pipes-lab-exec.1", "srv6pipes-trace.1", "srv6pipes-wait.1"] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie \\n(.g .ds Aq") || text.contains(".TH "), "{page} is no man page:\n{text}");
    }
    let trace = std::fs::read_to_string(dir.join("srv6pipes-trace.1")).unwrap();
    assert!(trace.contains("mermaid") && trace.contains("Graphviz"), "the page carries the --help text:\n{trace}");
    if have("man") {
        let out =
            Command::new("man").arg("-l").arg(dir.join("srv6pipes-wait.1")).env("MANPAGER", "cat").env("MANWIDTH", "100").output().unwrap();
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && shown.contains("--timeout"), "man -l: {shown}{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn kubectl_runs_it_as_a_plugin() {
    if !have("kubectl") {
        eprintln!("SKIPPED: kubectl is not installed");
        return;
    }
    let dir = tempdir("cli-plugin");
    std::os::unix::fs::symlink(target_dir().join("srv6pipes"), dir.join("kubectl-srv6pipes")).unwrap();
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let kubectl = |args: &[&str]| Command::new("kubectl").args(args).env("PATH", &path).output().unwrap();
    let list = String::from_utf8_lossy(&kubectl(&["plugin", "list"]).stdout).into_owned();
    assert!(list.contains("kubectl-srv6pipes"), "kubectl plugin list: {list}");
    let help = ok(kubectl(&["srv6pipes", "--help"]));
    assert!(help.contains("Usage: kubectl srv6pipes <COMMAND>") && help.contains("trace"), "{help}");
    // Errors name the plugin as it was invoked.
    let bad = kubectl(&["srv6pipes", "trace"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("kubectl srv6pipes trace"), "{}", String::from_utf8_lossy(&bad.stderr));
}
