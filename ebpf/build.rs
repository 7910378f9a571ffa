//! Compiles the C datapath with clang (no nightly Rust, no bpf-linker): one object, three programs.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("srv6pipes.bpf.o");
    let src = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("bpf");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=CLANG");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch_include = format!("/usr/include/{}-linux-gnu", env::var("CARGO_CFG_TARGET_ARCH").unwrap());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Werror"])
        .arg(format!("-I{arch_include}"))
        .arg("-c")
        .arg(src.join("srv6pipes.bpf.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {clang} to build the eBPF datapath ({e}); install clang, llvm and libbpf-dev"));
    assert!(status.success(), "{clang} failed to compile ebpf/bpf/srv6pipes.bpf.c");
}
