//! The images users install, as the cluster e2e and kind load them: `images/build` writes
//! docker-archive tarballs that a real containerd (a private instance: own root, state and
//! socket) imports with `ctr images import` and runs. Needs root, containerd, runc and
//! busybox-static (scripts/deps installs them); skips, saying why, without.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

mod common;
use common::{is_root, repo_root, tempdir};

/// A containerd of the test's own, removed with everything it made when dropped.
struct Containerd {
    dir: PathBuf,
    child: Child,
}

impl Containerd {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("srv6pipes-ctrd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n[grpc]\n  address = \"{d}/sock\"\n[ttrpc]\n  address = \"{d}/sock.ttrpc\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_apparmor = true\n  restrict_oom_score_adj = true\n"
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Self { dir, child };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                std::time::Instant::now() < deadline,
                "containerd did not start: {}",
                std::fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr").arg("--address").arg(self.dir.join("sock")).args(["-n", "k8s.io"]).args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(out.status.success(), "ctr {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `command` in a fresh container of `image` and returns its output.
    fn run(&self, image: &str, name: &str, command: &[&str]) -> String {
        let mut args = vec!["run", "--rm", image, name];
        args.extend_from_slice(command);
        self.ok(&args)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        // Snapshots of containers that did not end leave overlay mounts behind.
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let prefix = self.dir.display().to_string();
        for m in
            mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&prefix)).collect::<Vec<_>>().iter().rev()
        {
            let _ = nix::mount::umount2(*m, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn missing() -> Option<String> {
    if !is_root() {
        return Some("not root".into());
    }
    for tool in ["containerd", "ctr", "runc", "busybox", "python3", "nft"] {
        if !Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success()) {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

#[test]
fn built_images_import_into_containerd_and_run() {
    if let Some(why) = missing() {
        eprintln!("SKIPPED: the images test needs {why}");
        return;
    }
    let out = tempdir("images");
    let build = Command::new(repo_root().join("images/build")).arg(&*out).output().unwrap();
    assert!(build.status.success(), "images/build: {}", String::from_utf8_lossy(&build.stderr));
    let version = env!("CARGO_PKG_VERSION");

    let c = Containerd::start();
    for image in ["srv6pipes-node", "srv6pipes-operator", "srv6pipes-stream", "srv6pipes-testbox"] {
        c.ok(&["images", "import", out.join(format!("{image}.tar")).to_str().unwrap()]);
    }
    let tags = c.ok(&["images", "ls", "-q"]);
    for tag in [
        format!("localhost/srv6pipes-node:{version}"),
        "localhost/srv6pipes-node:latest".into(),
        format!("localhost/srv6pipes-operator:{version}"),
        "localhost/srv6pipes-operator:latest".into(),
        format!("localhost/srv6pipes-stream:{version}"),
        "localhost/srv6pipes-stream:latest".into(),
        "localhost/srv6pipes-testbox:latest".into(),
    ] {
        assert!(tags.lines().any(|l| l == tag), "{tag} imported: {tags}");
    }

    // Each binary runs with the libraries its image carries.
    assert_eq!(
        c.run("localhost/srv6pipes-node:latest", "node", &["/usr/bin/srv6pipes-node", "--version"]).trim(),
        format!("srv6pipes-node {version}")
    );
    // The daemon opens pods' netns by the path the runtime gave: /var/run is /run in its image.
    assert_eq!(c.run("localhost/srv6pipes-node:latest", "node-var-run", &["/bin/readlink", "/var/run"]).trim(), "../run");
    assert_eq!(
        c.run("localhost/srv6pipes-operator:latest", "operator", &["/usr/bin/srv6pipes-operator", "--version"]).trim(),
        format!("srv6pipes-operator {version}")
    );
    assert_eq!(
        c.run("localhost/srv6pipes-stream:latest", "stream", &["/usr/bin/srv6pipes-stream", "--version"]).trim(),
        format!("srv6pipes-stream {version}")
    );
    // The node image carries the CNI plugin its init container installs: this build's.
    let release = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".cache/srv6pipes/target"))
        .join("release/srv6pipes-cni");
    let inside = c.run("localhost/srv6pipes-node:latest", "cni", &["sha256sum", "/opt/srv6pipes/cni/srv6pipes-cni"]);
    assert_eq!(inside.split_whitespace().next(), Some(sha256(&release).as_str()), "the image's plugin is {}", release.display());
    // The test image: busybox applets for e2e pods, and nft with the libraries it loads.
    let said = c.run(
        "localhost/srv6pipes-testbox:latest",
        "box",
        &["sh", "-c", "echo hello; for a in nc ping ip sleep wget; do test -x /bin/$a && echo $a; done; /usr/sbin/nft --version"],
    );
    let said: Vec<&str> = said.lines().collect();
    assert_eq!(said[..6], ["hello", "nc", "ping", "ip", "sleep", "wget"], "{said:?}");
    assert!(said.len() == 7 && said[6].starts_with("nftables v"), "{said:?}");
}

#[test]
fn mkimage_is_reproducible_and_refuses_a_tag_without_a_version() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: mkimage needs python3");
        return;
    }
    let dir = tempdir("mkimage");
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::write(rootfs.join("bin/hello"), "#!/bin/sh\necho hello\n").unwrap();
    std::os::unix::fs::symlink("hello", rootfs.join("bin/hi")).unwrap();
    let mkimage = repo_root().join("images/mkimage");
    let build = |out: &str, tag: &str| Command::new(&mkimage).arg(&rootfs).arg(dir.join(out)).args(["--tag", tag]).output().unwrap();
    let first = build("a.tar", "localhost/t:1");
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    // Touch the files: mtimes must not reach the image.
    std::fs::write(rootfs.join("bin/hello"), "#!/bin/sh\necho hello\n").unwrap();
    let second = build("b.tar", "localhost/t:1");
    assert!(second.status.success());
    assert_eq!(sha256(&dir.join("a.tar")), sha256(&dir.join("b.tar")), "same rootfs, same image");
    let id = |o: &Output| String::from_utf8_lossy(&o.stdout).split_whitespace().last().unwrap_or_default().to_string();
    assert!(id(&first).starts_with("sha256:") && id(&first) == id(&second));
    // The symlink stays a symlink, owned by root.
    let listing = Command::new("sh")
        .arg("-c")
        .arg(format!("tar -xOf {} --wildcards '*/layer.tar' | tar -tvf -", dir.join("a.tar").display()))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("lrwx") && l.contains("bin/hi -> hello") && (l.contains(" 0/0 ") || l.contains(" root/root "))),
        "{listing}"
    );

    let bad = build("c.tar", "localhost/t");
    assert_eq!(bad.status.code(), Some(2), "a tag without :TAG is refused");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("has no :TAG"));
    assert!(!dir.join("c.tar").exists());
}
