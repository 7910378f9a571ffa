//! The operator's binary runs on jemalloc with the options of `memory::MALLOC_CONF` (the
//! resident memory at 100,000 chains depends on them: docs/performance.md). jemalloc prints
//! the options it runs with at exit when its environment asks for its statistics.

use std::process::Command;

#[test]
fn the_operator_runs_on_jemalloc_with_its_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_srv6pipes-operator"))
        .arg("--help")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("run srv6pipes-operator --help");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats = String::from_utf8_lossy(&out.stderr);
    let conf = srv6pipes_operator::memory::MALLOC_CONF.to_str().unwrap();
    assert!(stats.contains(&format!("Global variable malloc_conf: \"{conf}\"")), "jemalloc did not read the operator's options:\n{stats}");
    for option in conf.split(',') {
        let (name, value) = option.split_once(':').unwrap();
        assert!(stats.contains(&format!("opt.{name}: {value}")), "opt.{name} is not {value}:\n{stats}");
    }
}
