//! Compiles the benchmark's XDP generator and sink, and its lossy-link program, with clang (as ebpf/build.rs does the datapath).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    for name in ["bench", "loss"] {
        compile(name);
    }
}

fn compile(name: &str) {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join(format!("{name}.bpf.o"));
    let src = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join(format!("bpf/{name}.bpf.c"));
    println!("cargo:rerun-if-changed={}", src.display());
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch_include = format!("/usr/include/{}-linux-gnu", env::var("CARGO_CFG_TARGET_ARCH").unwrap());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{arch_include}"))
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {clang} ({e}); install clang and libbpf-dev"));
    assert!(status.success(), "{clang} failed to compile {}", src.display());
}
