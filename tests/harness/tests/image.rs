//! The daemonless image build: `scripts/image.sh` writes the `cairn` OCI archive from the built
//! binaries; its layers are unpacked and its binaries and mkfs run from its root filesystem.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cairn_harness::components::find_binary;

/// Where the archive (and the script's root filesystem layer) is cached between runs: the script
/// rebuilds only what changed, so an unchanged tree costs a hash of the binaries.
const CACHE: &str = "/var/tmp/cairn-image-cache";
const TAG: &str = "dev";

/// The script's "cannot run here" exit codes: a tool is missing (69), no mirror (75).
const EX_UNAVAILABLE: i32 = 69;
const EX_TEMPFAIL: i32 = 75;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", text(&out));
    out
}

/// The layer blobs of the image tagged `tag` in an OCI layout, base first (index -> manifest -> layers).
fn layers(layout: &Path, tag: &str) -> Vec<PathBuf> {
    let read = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(
            &std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let blob = |digest: &serde_json::Value| {
        let d = digest.as_str().expect("digest");
        layout.join("blobs").join(d.replacen(':', "/", 1))
    };
    let index = read(layout.join("index.json"));
    let manifest = index["manifests"]
        .as_array()
        .expect("index.json lists manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no image tagged {tag} in {index}"));
    let manifest = read(blob(&manifest["digest"]));
    let config = read(blob(&manifest["config"]["digest"]));
    assert_eq!(config["os"], "linux", "image config: {config}");
    let layers: Vec<PathBuf> = manifest["layers"]
        .as_array()
        .expect("manifest lists layers")
        .iter()
        .map(|l| {
            assert_eq!(
                l["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
                "{l}"
            );
            blob(&l["digest"])
        })
        .collect();
    assert_eq!(
        layers.len(),
        2,
        "a Debian layer and a binaries layer: {manifest}"
    );
    layers
}

fn skipped(why: &str) {
    eprintln!("SKIPPED: image test: {why}");
}

#[test]
fn image_archive_runs_binaries_and_mkfs_from_its_rootfs() {
    if !nix::unistd::geteuid().is_root() {
        return skipped("needs root (chroot); run the tests as root");
    }
    let bin_dir = find_binary("storaged")
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .expect("storaged is built next to the tests (cargo test --workspace builds every binary)");
    let archive = Path::new(CACHE).join("cairn-image.oci.tar");

    let out = Command::new(repo_root().join("scripts/image.sh"))
        .args(["--name", &format!("cairn:{TAG}"), "--cache", CACHE])
        .arg("--out")
        .arg(&archive)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .output()
        .expect("run scripts/image.sh");
    match out.status.code() {
        Some(0) => eprint!("{}", String::from_utf8_lossy(&out.stderr)),
        Some(EX_UNAVAILABLE) | Some(EX_TEMPFAIL) => {
            return skipped(&format!(
                "scripts/image.sh cannot run here: {}fix: run scripts/deps.sh (installs mmdebstrap and umoci) \
                 and give the machine network to the Debian mirror (or set DEBIAN_MIRROR)",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        _ => panic!("scripts/image.sh failed: {}", text(&out)),
    }

    let dir = tempfile::tempdir_in("/var/tmp").expect("temp dir");
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout));
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    for layer in layers(&layout, TAG) {
        run(Command::new("tar")
            .arg("-xzf")
            .arg(&layer)
            .arg("-C")
            .arg(&rootfs));
    }
    let in_rootfs = |args: &[&str]| {
        // A clean environment: only what the image's own PATH finds.
        text(&run(Command::new("chroot")
            .arg(&rootfs)
            .args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )))
    };

    let version = env!("CARGO_PKG_VERSION");
    for bin in ["storaged", "cairn-csi", "cairnctl", "cairn-provisioner"] {
        let out = in_rootfs(&[bin, "--version"]);
        assert_eq!(
            out.trim(),
            format!("{bin} {version}"),
            "{bin} --version in the image"
        );
    }
    let mkfs = in_rootfs(&["mkfs.ext4", "-V"]);
    assert!(
        mkfs.starts_with("mke2fs "),
        "mkfs.ext4 -V in the image: {mkfs}"
    );
    for tool in [
        "mkfs.xfs",
        "mount",
        "umount",
        "blkid",
        "modprobe",
        "fusermount3",
    ] {
        let found = in_rootfs(&["sh", "-c", &format!("command -v {tool}")]);
        assert!(!found.trim().is_empty(), "{tool} in the image");
    }
}
