//! Running the network tools (`ip`, `nsenter`, `nft`): stdin fed, stderr kept as the error,
//! and the Debian package named when a tool is missing.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::{Error, Result};

/// The Debian package that provides `program`.
fn package_of(program: &str) -> &'static str {
    match program {
        "ip" => "iproute2",
        "nft" => "nftables",
        "nsenter" => "util-linux",
        _ => "the package that provides it",
    }
}

/// Runs `program args` with `stdin` (if any) as its input; its stderr becomes the error.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: program.to_string(),
            package: package_of(program),
            source,
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(Error::Failed {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS`.
pub fn ip(args: &[&str]) -> Result<()> {
    run("ip", args, None).map(drop)
}

/// Whether a link of this name exists on the host.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_names_its_package_and_a_failure_its_stderr() {
        let missing = run("nft-not-installed-here", &[], None).unwrap_err();
        assert!(matches!(missing, Error::Spawn { .. }), "{missing}");
        assert_eq!(package_of("nft"), "nftables");
        let failed = run("sh", &["-c", "echo boom >&2; exit 3"], None).unwrap_err();
        assert_eq!(failed.to_string(), "sh -c echo boom >&2; exit 3: boom");
        assert_eq!(run("cat", &[], Some("fed")).unwrap(), "fed");
    }
}
