// Compiles one of bench/bpf's C programs for BPF with clang (CLANG overrides it), failing the
// build with a hint when clang cannot run. Shared by bench/build.rs and e2e/build.rs
// (`include!`), so both build a program the same way.

fn compile_bpf(src: &std::path::Path, out: &std::path::Path, defines: &[&str]) {
    println!("cargo:rerun-if-changed={}", src.display());
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch_include = format!("/usr/include/{}-linux-gnu", std::env::var("CARGO_CFG_TARGET_ARCH").unwrap());
    let status = std::process::Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .args(defines.iter().map(|d| format!("-D{d}")))
        .arg(format!("-I{arch_include}"))
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {clang} ({e}); install clang and libbpf-dev"));
    assert!(status.success(), "{clang} failed to compile {}", src.display());
}
