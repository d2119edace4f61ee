//! Images without a registry: `--image NAME=PATH` maps an image (every tag, or one) to a
//! directory of executables; a container's argv is resolved there, or the pull fails.

use std::path::{Path, PathBuf};

/// Where an image's executables come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A directory: `command[0]` is looked up there first, and a container without a
    /// command runs the executable named like the image repository's last component.
    Dir(PathBuf),
    /// The host's own tools (`busybox` by default): the command runs as given, and a
    /// container without one idles (the runtime's placeholder).
    Host,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    repository: String,
    /// None maps every tag.
    tag: Option<String>,
    source: Source,
}

/// The image mappings of a cluster, consulted by every kubelet when it starts a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageMap {
    entries: Vec<Entry>,
}

/// A container that cannot start because its image is not mapped: the container's
/// waiting reason is `ErrImagePull` with this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullError(pub String);

impl std::fmt::Display for PullError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `docker.io/library/busybox:1.36@sha256:…` → (`busybox`, Some(`1.36`)): the registry
/// and namespace Docker Hub implies are dropped, so both spellings match.
fn split_reference(image: &str) -> (String, Option<String>) {
    let image = image.split('@').next().unwrap_or_default();
    let (repo, tag) = match image.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
        _ => (image, None),
    };
    let repo = repo.strip_prefix("docker.io/").unwrap_or(repo);
    let repo = repo.strip_prefix("library/").unwrap_or(repo);
    (repo.to_string(), tag)
}

/// The directory holding Cairn's built binaries: where `storaged` is found beside this
/// executable (or in PATH), else this executable's own directory.
pub fn built_binaries_dir() -> PathBuf {
    crate::components::find_binary("storaged")
        .filter(|p| p.is_file())
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(Path::to_path_buf))
        })
        .unwrap_or_default()
}

impl ImageMap {
    /// The defaults: `cairn` (every tag) is the built binaries, `busybox` the host's tools.
    pub fn with_defaults() -> Self {
        let mut m = ImageMap::default();
        m.insert("cairn", Source::Dir(built_binaries_dir()));
        m.insert("busybox", Source::Host);
        m
    }

    /// Maps `name` (`repo` for every tag, or `repo:tag`); a later mapping of the same
    /// name replaces an earlier one.
    pub fn insert(&mut self, name: &str, source: Source) {
        let (repository, tag) = split_reference(name);
        self.entries
            .retain(|e| !(e.repository == repository && e.tag == tag));
        self.entries.push(Entry {
            repository,
            tag,
            source,
        });
    }

    /// Parses and applies one `--image NAME=PATH` flag; PATH must be a directory.
    pub fn add_flag(&mut self, flag: &str) -> Result<(), String> {
        let (name, path) = flag
            .split_once('=')
            .filter(|(n, p)| !n.is_empty() && !p.is_empty())
            .ok_or_else(|| format!("--image {flag:?}: expected NAME=PATH"))?;
        let path = std::path::absolute(path).map_err(|e| format!("--image {flag:?}: {e}"))?;
        if !path.is_dir() {
            return Err(format!(
                "--image {flag:?}: {} is not a directory",
                path.display()
            ));
        }
        self.insert(name, Source::Dir(path));
        Ok(())
    }

    /// The mapping for `image`: one for its exact tag before one for every tag.
    pub fn source(&self, image: &str) -> Option<&Source> {
        let (repo, tag) = split_reference(image);
        let tag = tag.unwrap_or_else(|| "latest".into());
        let exact = self
            .entries
            .iter()
            .find(|e| e.repository == repo && e.tag.as_deref() == Some(tag.as_str()));
        exact
            .or_else(|| {
                self.entries
                    .iter()
                    .find(|e| e.repository == repo && e.tag.is_none())
            })
            .map(|e| &e.source)
    }

    /// The argv a container runs: `argv` is its expanded command and args, `has_command`
    /// whether a command was given (else the image's entrypoint comes first).
    pub fn resolve(
        &self,
        image: &str,
        has_command: bool,
        mut argv: Vec<String>,
    ) -> Result<Vec<String>, PullError> {
        let source = self.source(image).ok_or_else(|| {
            let (repo, _) = split_reference(image);
            PullError(format!(
                "image \"{image}\" is not mapped to executables: start cairn-harness with --image {repo}=DIR (every tag) or --image {image}=DIR, DIR holding its executables"
            ))
        })?;
        let Source::Dir(dir) = source else {
            return Ok(argv);
        };
        if has_command && let Some(cmd) = argv.first_mut() {
            let found = Path::new(cmd.as_str())
                .file_name()
                .map(|n| dir.join(n))
                .filter(|p| p.is_file());
            if let Some(p) = found {
                *cmd = p.to_string_lossy().into_owned();
            }
        } else if !has_command {
            let (repo, _) = split_reference(image);
            let entry = repo.rsplit('/').next().unwrap_or(&repo);
            argv.insert(0, dir.join(entry).to_string_lossy().into_owned());
        }
        Ok(argv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn references_split_into_repository_and_tag() {
        assert_eq!(
            split_reference("registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.13.0"),
            (
                "registry.k8s.io/sig-storage/csi-node-driver-registrar".into(),
                Some("v2.13.0".into())
            )
        );
        assert_eq!(
            split_reference("localhost:5000/x"),
            ("localhost:5000/x".into(), None)
        );
        assert_eq!(
            split_reference("docker.io/library/busybox:1.36@sha256:ab"),
            ("busybox".into(), Some("1.36".into()))
        );
    }

    #[test]
    fn entrypoint_is_the_repository_name_and_commands_are_found_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("csi-node-driver-registrar"), "").unwrap();
        std::fs::write(dir.path().join("cairn-csi"), "").unwrap();
        let mut m = ImageMap::default();
        m.insert(
            "registry.k8s.io/sig-storage/csi-node-driver-registrar",
            Source::Dir(dir.path().into()),
        );
        m.insert("cairn:dev", Source::Dir(dir.path().into()));
        let reg = m
            .resolve(
                "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.13.0",
                false,
                s(&["--v=5"]),
            )
            .unwrap();
        let d = dir.path().display();
        assert_eq!(
            reg,
            s(&[&format!("{d}/csi-node-driver-registrar"), "--v=5"])
        );
        let csi = m
            .resolve("cairn:dev", true, s(&["/cairn-csi", "node"]))
            .unwrap();
        assert_eq!(csi, s(&[&format!("{d}/cairn-csi"), "node"]));
        // Not in the directory: the command runs as given.
        let sh = m
            .resolve("cairn:dev", true, s(&["/bin/sh", "-c", "x"]))
            .unwrap();
        assert_eq!(sh, s(&["/bin/sh", "-c", "x"]));
        // Only that tag is mapped.
        let err = m.resolve("cairn:other", false, vec![]).unwrap_err();
        assert!(err.0.contains("--image cairn=DIR"), "{err}");
    }

    #[test]
    fn host_images_run_commands_as_given_and_flags_need_a_directory() {
        let mut m = ImageMap::with_defaults();
        assert_eq!(
            m.resolve("busybox:1.36", true, s(&["sh", "-c", "true"])),
            Ok(s(&["sh", "-c", "true"]))
        );
        assert_eq!(m.resolve("busybox", false, vec![]), Ok(vec![]));
        assert!(m.add_flag("nodir").is_err());
        assert!(
            m.add_flag("x=/nonexistent/dir")
                .unwrap_err()
                .contains("not a directory")
        );
        m.add_flag("busybox=/tmp").unwrap();
        assert_eq!(m.source("busybox"), Some(&Source::Dir("/tmp".into())));
    }
}
