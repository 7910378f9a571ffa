//! Compiles the lossy-link tc program the pipes tests put on a pod's interface (the stream
//! benchmark's, at 5 % loss) with clang, as bench/build.rs does.

use std::env;
use std::path::PathBuf;

include!("../bench/bpf/clang.rs");

fn main() {
    let src = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../bench/bpf/loss.bpf.c");
    println!("cargo:rerun-if-changed=../bench/bpf/clang.rs");
    compile_bpf(&src, &PathBuf::from(env::var("OUT_DIR").unwrap()).join("loss5.bpf.o"), &["LOSS_PPM=50000"]);
}
