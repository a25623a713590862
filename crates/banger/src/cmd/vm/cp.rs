//! `banger vm cp SRC DST`: copy files between the host and a VM over the
//! guest agent (one tar stream, no ssh).
//!
//! Exactly one side is `NAME:PATH` (a relative guest path is under `/root`).
//! A host path containing a colon can be written `./a:b`.
//!
//! Destination semantics follow `cp -r`: copying onto an existing directory
//! puts the source inside it under its own name; onto a path that does not
//! exist (whose parent does) creates it under that name; onto an existing
//! file replaces it (a directory never replaces a file).
//!
//! Symlinks are never followed, the named source included (as `cp -r` does
//! by default): a symlink is copied as a symlink. Copying out of a guest is
//! stricter, because a hostile guest chooses what it sends: every entry must
//! stay inside the copied tree (no absolute paths, no `..`), symlinks and
//! hard links must point inside it (a copied symlink itself: inside the
//! destination directory, relative), and only files, directories and links
//! are accepted. The whole stream is checked before anything is written to
//! the host, and then unpacked with the agent's contained unpacker (which
//! never writes through a symlink and masks setuid, setgid and
//! world-writable bits). Those rules live in `banger_agent::transfer`; this
//! module only plans the copy and drives the agent.

use std::fs::File;
use std::io::Seek;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use banger_agent::client::AgentClient;
use banger_agent::transfer::{check_archive, pack_path, unpack_to};
use banger_proto::agent::ExecRequest;

use super::ready::{agent_for, wait_running};
use crate::cli::VmCpArgs;
use crate::client::Client;

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Host(PathBuf),
    /// `path` is absolute (relative input is resolved under `/root`).
    Guest {
        vm: String,
        path: String,
    },
}

/// `NAME:PATH` is a guest path when NAME is a valid VM name; anything else
/// (`./a:b`, `/x:y`, a name with a slash) is a host path.
pub fn parse_endpoint(s: &str) -> Endpoint {
    if let Some((vm, path)) = s.split_once(':')
        && !vm.is_empty()
        && !vm.contains('/')
        && banger_core::names::validate_vm_name(vm).is_ok()
    {
        let path = if path.starts_with('/') {
            path.to_string()
        } else if path.is_empty() {
            "/root".to_string()
        } else {
            format!("/root/{path}")
        };
        return Endpoint::Guest {
            vm: vm.to_string(),
            path,
        };
    }
    Endpoint::Host(PathBuf::from(s))
}

/// The direction of a copy, with both ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    ToGuest {
        src: PathBuf,
        vm: String,
        dst: String,
    },
    FromGuest {
        vm: String,
        src: String,
        dst: PathBuf,
    },
}

pub fn plan(src: &str, dst: &str) -> anyhow::Result<Plan> {
    match (parse_endpoint(src), parse_endpoint(dst)) {
        (Endpoint::Host(src), Endpoint::Guest { vm, path }) => {
            Ok(Plan::ToGuest { src, vm, dst: path })
        }
        (Endpoint::Guest { vm, path }, Endpoint::Host(dst)) => {
            Ok(Plan::FromGuest { vm, src: path, dst })
        }
        (Endpoint::Host(_), Endpoint::Host(_)) => bail!(
            "neither {src:?} nor {dst:?} names a VM: write the guest side as NAME:PATH (e.g. `banger vm cp ./file box:/root/`)"
        ),
        (Endpoint::Guest { .. }, Endpoint::Guest { .. }) => bail!(
            "both {src:?} and {dst:?} are guest paths: copy through the host in two steps (one side must be a host path)"
        ),
    }
}

pub async fn vm_cp(client: &Client, a: VmCpArgs) -> anyhow::Result<ExitCode> {
    match plan(&a.src, &a.dst)? {
        Plan::ToGuest { src, vm, dst } => {
            let agent = agent_for(&wait_running(client, &vm).await?)?;
            to_guest(&agent, &vm, &src, &dst)
                .await
                .with_context(|| format!("copying {} to {vm}:{dst}", src.display()))?;
        }
        Plan::FromGuest { vm, src, dst } => {
            let agent = agent_for(&wait_running(client, &vm).await?)?;
            from_guest(&agent, &src, &dst)
                .await
                .with_context(|| format!("copying {vm}:{src} to {}", dst.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What is at a guest path, as far as `cp -r` semantics care.
#[derive(Debug, PartialEq, Eq)]
enum GuestKind {
    Dir,
    Other,
    Missing,
    NoParent,
}

async fn probe_guest(agent: &AgentClient, path: &str) -> anyhow::Result<GuestKind> {
    // Fixed script; the paths reach it as arguments, never as shell text.
    const SCRIPT: &str = r#"if [ -d "$1" ]; then echo dir; elif [ -e "$1" ] || [ -L "$1" ]; then echo other; elif [ -d "$2" ]; then echo missing; else echo noparent; fi"#;
    let parent = guest_parent(path);
    let req = ExecRequest::new(["sh", "-c", SCRIPT, "sh", path, &parent]);
    let out = agent.exec_capture(&req, b"").await?;
    if !out.status.success() {
        bail!(
            "cannot inspect {path} in the guest: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(match String::from_utf8_lossy(&out.stdout).trim() {
        "dir" => GuestKind::Dir,
        "other" => GuestKind::Other,
        "missing" => GuestKind::Missing,
        _ => GuestKind::NoParent,
    })
}

fn guest_parent(path: &str) -> String {
    Path::new(path)
        .parent()
        .map(|p| p.display().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into())
}

/// Where a host → guest copy lands: the directory to unpack into and the
/// name of the top-level entry.
fn guest_target(
    vm: &str,
    src_is_dir: bool,
    src_name: &str,
    dst: &str,
    kind: GuestKind,
) -> anyhow::Result<(String, String)> {
    let trailing_slash = dst.len() > 1 && dst.ends_with('/');
    match kind {
        GuestKind::Dir => Ok((dst.to_string(), src_name.to_string())),
        GuestKind::NoParent => bail!(
            "the guest directory {} does not exist (create it first, e.g. `banger vm exec {vm} -- mkdir -p {}`)",
            guest_parent(dst),
            guest_parent(dst)
        ),
        _ if trailing_slash => bail!("{dst} is not a directory in the guest"),
        GuestKind::Other if src_is_dir => {
            bail!("cannot overwrite non-directory {dst} in the guest with a directory")
        }
        GuestKind::Other | GuestKind::Missing => {
            let name = Path::new(dst)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .with_context(|| format!("{dst} does not name a file or directory"))?;
            Ok((guest_parent(dst), name))
        }
    }
}

/// The name a host path is copied under (`.` and `dir/..` resolve to the
/// directory's real name).
fn host_name(src: &Path) -> anyhow::Result<String> {
    if let Some(n) = src.file_name() {
        return Ok(n.to_string_lossy().into_owned());
    }
    let canon = src
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", src.display()))?;
    canon
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| {
            format!(
                "cannot copy {} itself; name a directory under it",
                src.display()
            )
        })
}

async fn to_guest(agent: &AgentClient, vm: &str, src: &Path, dst: &str) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(src)
        .with_context(|| format!("cannot read {} on the host", src.display()))?;
    let name = host_name(src)?;
    let kind = probe_guest(agent, dst).await?;
    let (dir, name) = guest_target(vm, meta.is_dir(), &name, dst, kind)?;

    // Stream through a pipe: a packing thread writes, the upload reads, so a
    // large tree is never staged on disk.
    let (reader, writer) = std::io::pipe().context("cannot create a pipe")?;
    let src_owned = src.to_path_buf();
    let name_owned = name.clone();
    let packer =
        std::thread::spawn(move || pack_path(&src_owned, Path::new(&name_owned), writer).map(drop));
    let file = tokio::fs::File::from_std(File::from(std::os::fd::OwnedFd::from(reader)));
    let upload = agent.upload_tar(file, &dir).await;
    let packed = packer
        .join()
        .map_err(|_| anyhow::anyhow!("the packing thread panicked"))?;
    // A packing failure (unreadable file) truncates the stream; report that
    // cause rather than the guest's complaint about the short tar.
    packed.with_context(|| format!("cannot pack {}", src.display()))?;
    let summary = upload?;
    eprintln!(
        "banger: copied {} entries ({} bytes) to {}",
        summary.entries,
        summary.bytes,
        Path::new(&dir).join(&name).display()
    );
    Ok(())
}

async fn from_guest(agent: &AgentClient, src: &str, dst: &Path) -> anyhow::Result<()> {
    // Spool first: the stream is checked as a whole before anything lands
    // on the host, and the shape (file or directory) decides the target.
    let mut spool = tempfile::tempfile().context("cannot create a temporary file")?;
    {
        let mut stream = agent.download(src).await?;
        let mut out = tokio::fs::File::from_std(spool.try_clone()?);
        tokio::io::copy(&mut stream, &mut out)
            .await
            .with_context(|| format!("downloading {src}"))?;
        use tokio::io::AsyncWriteExt;
        out.flush().await?;
    }
    let dst = dst.to_path_buf();
    let summary = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        spool.rewind()?;
        let shape = check_archive(&mut spool)?;
        spool.rewind()?;
        Ok(unpack_to(&mut spool, &shape, &dst)?)
    })
    .await??;
    eprintln!(
        "banger: copied {} entries ({} bytes)",
        summary.entries, summary.bytes
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(vm: &str, path: &str) -> Endpoint {
        Endpoint::Guest {
            vm: vm.into(),
            path: path.into(),
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(parse_endpoint("box:/etc/hosts"), g("box", "/etc/hosts"));
        assert_eq!(parse_endpoint("box:src"), g("box", "/root/src"));
        assert_eq!(parse_endpoint("box:"), g("box", "/root"));
        assert_eq!(parse_endpoint("./a:b"), Endpoint::Host("./a:b".into()));
        assert_eq!(parse_endpoint("/x:y"), Endpoint::Host("/x:y".into()));
        assert_eq!(parse_endpoint("plain"), Endpoint::Host("plain".into()));
        assert_eq!(parse_endpoint(":x"), Endpoint::Host(":x".into()));
        // Not a valid VM name: a host path.
        assert_eq!(
            parse_endpoint("Bad Name:x"),
            Endpoint::Host("Bad Name:x".into())
        );
    }

    #[test]
    fn plans_need_exactly_one_guest_side() {
        assert_eq!(
            plan("./f", "box:/tmp").expect("plan"),
            Plan::ToGuest {
                src: "./f".into(),
                vm: "box".into(),
                dst: "/tmp".into()
            }
        );
        assert_eq!(
            plan("box:/tmp/f", ".").expect("plan"),
            Plan::FromGuest {
                vm: "box".into(),
                src: "/tmp/f".into(),
                dst: ".".into()
            }
        );
        let e = plan("a", "b").expect_err("two host paths").to_string();
        assert!(e.contains("NAME:PATH"), "{e}");
        let e = plan("a:/x", "b:/y").expect_err("two guests").to_string();
        assert!(e.contains("one side must be a host path"), "{e}");
    }

    #[test]
    fn guest_targets_follow_cp_r() {
        let t = |is_dir, dst, kind| guest_target("box", is_dir, "src", dst, kind);
        assert_eq!(
            t(false, "/root", GuestKind::Dir).expect("ok"),
            ("/root".into(), "src".into())
        );
        assert_eq!(
            t(true, "/root/new", GuestKind::Missing).expect("ok"),
            ("/root".into(), "new".into())
        );
        assert_eq!(
            t(false, "/root/f", GuestKind::Other).expect("ok"),
            ("/root".into(), "f".into())
        );
        assert_eq!(
            t(false, "/f", GuestKind::Missing).expect("ok"),
            ("/".into(), "f".into())
        );
        assert!(t(true, "/root/f", GuestKind::Other).is_err());
        assert!(t(false, "/root/new/", GuestKind::Missing).is_err());
        let e = t(false, "/nope/x", GuestKind::NoParent)
            .expect_err("no parent")
            .to_string();
        assert!(e.contains("/nope does not exist"), "{e}");
        assert!(e.contains("banger vm exec box -- mkdir -p /nope"), "{e}");
    }

    #[test]
    fn host_names() {
        assert_eq!(host_name(Path::new("/a/b")).expect("name"), "b");
        assert_eq!(host_name(Path::new("a/b/")).expect("name"), "b");
    }
}
