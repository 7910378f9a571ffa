//! Compiles the lossy-link tc program the pipes tests put on a pod's interface (the stream
//! benchmark's, at 5 % loss) with clang, as bench/build.rs does.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../bench/bpf/loss.bpf.c");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("loss5.bpf.o");
    println!("cargo:rerun-if-changed={}", src.display());
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch_include = format!("/usr/include/{}-linux-gnu", env::var("CARGO_CFG_TARGET_ARCH").unwrap());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-DLOSS_PPM=50000"])
        .arg(format!("-I{arch_include}"))
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {clang} ({e}); install clang and libbpf-dev"));
    assert!(status.success(), "{clang} failed to compile {}", src.display());
}
