//! Compiles the benchmark's XDP generator and sink, and its lossy-link program, with clang (as ebpf/build.rs does the datapath).

use std::env;
use std::path::PathBuf;

include!("bpf/clang.rs");

fn main() {
    let (out, dir) = (PathBuf::from(env::var("OUT_DIR").unwrap()), PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()));
    println!("cargo:rerun-if-changed=bpf/clang.rs");
    for name in ["bench", "loss"] {
        compile_bpf(&dir.join(format!("bpf/{name}.bpf.c")), &out.join(format!("{name}.bpf.o")), &[]);
    }
}
