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
//! never writes through a symlink).

use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use banger_agent::client::AgentClient;
use banger_proto::agent::ExecRequest;
use tar::EntryType;

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

/// Writes `src` (not followed if a symlink) as a tar whose single top-level
/// entry is `name`.
fn pack_as<W: std::io::Write>(src: &Path, name: &str, out: W) -> std::io::Result<W> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    if std::fs::symlink_metadata(src)?.is_dir() {
        b.append_dir_all(name, src)?;
    } else {
        b.append_path_with_name(src, name)?;
    }
    b.into_inner()
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
    let packer = std::thread::spawn(move || pack_as(&src_owned, &name_owned, writer).map(drop));
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
        unpack_to(&mut spool, &shape, &dst)
    })
    .await??;
    eprintln!(
        "banger: copied {} entries ({} bytes)",
        summary.entries, summary.bytes
    );
    Ok(())
}

/// What a checked archive holds: one top-level entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Shape {
    pub name: String,
    pub is_dir: bool,
}

/// Checks a tar stream from a guest before anything is written: one
/// top-level entry, every path relative without `..`, links pointing inside
/// the copied tree, only files, directories and links.
pub fn check_archive<R: Read>(r: R) -> anyhow::Result<Shape> {
    let mut archive = tar::Archive::new(r);
    let mut shape: Option<Shape> = None;
    for entry in archive.entries().context("reading the tar stream")? {
        let entry = entry.context("reading the tar stream")?;
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            continue;
        }
        let raw = entry.path().context("reading an entry name")?.into_owned();
        let rel = banger_agent::unpack::contained_relative(&raw)?;
        let mut comps = rel.components();
        let Some(Component::Normal(top)) = comps.next() else {
            bail!(
                "refusing entry {:?}: it names the destination itself",
                raw.display()
            );
        };
        let top = top.to_string_lossy().into_owned();
        let is_top = comps.next().is_none();
        match &shape {
            None => {
                if !is_top {
                    bail!(
                        "refusing entry {:?}: the first entry must be the copied path itself",
                        raw.display()
                    );
                }
                shape = Some(Shape {
                    name: top,
                    is_dir: kind.is_dir(),
                });
            }
            Some(s) if s.name != top || !s.is_dir => bail!(
                "refusing entry {:?}: it is outside the copied path {:?}",
                raw.display(),
                s.name
            ),
            Some(_) => {}
        }
        match kind {
            EntryType::Directory
            | EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse => {}
            EntryType::Symlink | EntryType::Link => {
                let target = entry
                    .link_name()
                    .context("reading a link target")?
                    .with_context(|| format!("link {:?} has no target", raw.display()))?
                    .into_owned();
                let ok = if kind == EntryType::Symlink {
                    // Relative to the link's own directory.
                    let base = rel.parent().unwrap_or(Path::new(""));
                    link_stays_inside(base, &target)
                } else {
                    // Hard links name another entry of the archive, by
                    // its full name: it must be under the same top.
                    let name = shape.as_ref().map(|s| s.name.as_str()).unwrap_or_default();
                    link_stays_inside(Path::new(""), &target)
                        && target.components().next()
                            == Some(Component::Normal(std::ffi::OsStr::new(name)))
                };
                if !ok {
                    bail!(
                        "refusing link {:?} -> {:?}: it points outside the copied path (copy its target instead)",
                        raw.display(),
                        target.display()
                    );
                }
            }
            other => bail!(
                "refusing entry {:?}: type {other:?} is not supported (only files, directories and links)",
                raw.display()
            ),
        }
    }
    shape.context("the guest sent an empty archive")
}

/// Whether `target`, resolved lexically from `base` (a relative directory
/// whose first component is the copied tree's top), stays inside that tree.
fn link_stays_inside(base: &Path, target: &Path) -> bool {
    let mut stack: Vec<&std::ffi::OsStr> = Vec::new();
    for c in base.components() {
        if let Component::Normal(p) = c {
            stack.push(p);
        }
    }
    for c in target.components() {
        match c {
            Component::Normal(p) => stack.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                stack.pop();
                if stack.is_empty() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    !stack.is_empty()
}

/// Unpacks a checked archive at `dst` with `cp -r` semantics.
pub fn unpack_to<R: Read>(
    r: R,
    shape: &Shape,
    dst: &Path,
) -> anyhow::Result<banger_proto::agent::UploadSummary> {
    let trailing_slash = dst.as_os_str().to_string_lossy().ends_with('/');
    match std::fs::metadata(dst) {
        // An existing directory (or a symlink to one, the user's own
        // choice): the copy goes inside it.
        Ok(m) if m.is_dir() => {
            return Ok(banger_agent::unpack::unpack_contained(r, dst)?);
        }
        Ok(_) if trailing_slash => bail!("{} is not a directory", dst.display()),
        Ok(_) if shape.is_dir => bail!(
            "cannot overwrite non-directory {} with a directory",
            dst.display()
        ),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if trailing_slash {
                bail!("directory {} does not exist", dst.display());
            }
        }
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", dst.display())),
    }
    // A new name (or a file to replace): unpack into a staging directory
    // next to it, then rename, so a failed copy leaves nothing half-written.
    let name = dst
        .file_name()
        .with_context(|| format!("{} does not name a file or directory", dst.display()))?;
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        bail!("directory {} does not exist", parent.display());
    }
    let staging = tempfile::Builder::new()
        .prefix(".banger-cp-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a staging directory in {}", parent.display()))?;
    let summary = banger_agent::unpack::unpack_contained(r, staging.path())?;
    std::fs::rename(staging.path().join(&shape.name), parent.join(name))
        .with_context(|| format!("cannot move the copy into place at {}", dst.display()))?;
    Ok(summary)
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

    fn header(kind: EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_mtime(0);
        h
    }

    /// A tar built entry by entry with raw names (the `tar` builder refuses
    /// `..`, so names are written straight into the header).
    fn archive(entries: &[(&str, EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut h = header(*kind, 0);
            {
                let gnu = h.as_gnu_mut().expect("gnu");
                gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            }
            match kind {
                EntryType::Symlink | EntryType::Link => {
                    h.set_link_name_literal(data).expect("link");
                    h.set_cksum();
                    b.append(&h, std::io::empty()).expect("append");
                }
                _ => {
                    h.set_size(data.len() as u64);
                    h.set_cksum();
                    b.append(&h, data.as_bytes()).expect("append");
                }
            }
        }
        b.into_inner().expect("finish")
    }

    use EntryType::{Directory as D, Link as H, Regular as F, Symlink as L};

    #[test]
    fn check_accepts_a_contained_tree() {
        let a = archive(&[
            ("t", D, ""),
            ("t/a", F, "hello"),
            ("t/sub", D, ""),
            ("t/sub/l", L, "../a"),
            ("t/h", H, "t/a"),
        ]);
        assert_eq!(
            check_archive(&a[..]).expect("ok"),
            Shape {
                name: "t".into(),
                is_dir: true
            }
        );
        let f = archive(&[("f", F, "x")]);
        assert!(!check_archive(&f[..]).expect("ok").is_dir);
        // a copied symlink itself may point next to it, in the destination
        let l = archive(&[("l", L, "x")]);
        assert!(!check_archive(&l[..]).expect("ok").is_dir);
    }

    #[test]
    fn check_refuses_escapes() {
        let cases: &[&[(&str, EntryType, &str)]] = &[
            &[("t", D, ""), ("t/../x", F, "")],
            &[("/etc", D, "")],
            &[("t", D, ""), ("other", F, "")],
            &[("t", D, ""), ("t/l", L, "/etc/passwd")],
            &[("t", D, ""), ("t/l", L, "../../x")],
            &[("t", D, ""), ("t/l", L, "../x")],
            &[("t", D, ""), ("t/h", H, "other/x")],
            &[("t", D, ""), ("t/h", H, "../x")],
            &[("l", L, "../x")],
            &[("l", L, "/etc/passwd")],
            &[("f", F, ""), ("f/x", F, "")],
            &[("t", D, ""), ("t/fifo", EntryType::Fifo, "")],
            &[],
        ];
        for c in cases {
            let a = archive(c);
            assert!(check_archive(&a[..]).is_err(), "accepted {c:?}");
        }
    }

    #[test]
    fn unpack_follows_cp_r_and_stays_inside() {
        let tmp = tempfile::tempdir().expect("tmp");
        let a = archive(&[("t", D, ""), ("t/a", F, "hello"), ("t/l", L, "a")]);
        let shape = check_archive(&a[..]).expect("ok");

        // into an existing directory: under its own name
        let into = tmp.path().join("into");
        std::fs::create_dir(&into).expect("mkdir");
        unpack_to(&a[..], &shape, &into).expect("unpack");
        assert_eq!(
            std::fs::read_to_string(into.join("t/a")).expect("r"),
            "hello"
        );
        assert_eq!(
            std::fs::read_link(into.join("t/l")).expect("l"),
            Path::new("a")
        );

        // to a new name: renamed, no staging left behind
        let new = tmp.path().join("renamed");
        unpack_to(&a[..], &shape, &new).expect("unpack");
        assert_eq!(std::fs::read_to_string(new.join("a")).expect("r"), "hello");
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            left.iter().all(|n| !n.starts_with(".banger-cp-")),
            "{left:?}"
        );

        // a directory never replaces a file; a file replaces a file
        let file = tmp.path().join("file");
        std::fs::write(&file, "old").expect("w");
        assert!(unpack_to(&a[..], &shape, &file).is_err());
        let f = archive(&[("g", F, "new")]);
        let fshape = check_archive(&f[..]).expect("ok");
        unpack_to(&f[..], &fshape, &file).expect("replace");
        assert_eq!(std::fs::read_to_string(&file).expect("r"), "new");

        // missing parent, trailing slash on a missing directory
        assert!(unpack_to(&f[..], &fshape, &tmp.path().join("no/such")).is_err());
        let slash = PathBuf::from(format!("{}/nodir/", tmp.path().display()));
        assert!(unpack_to(&f[..], &fshape, &slash).is_err());
    }

    #[test]
    fn unpack_never_writes_through_a_planted_symlink() {
        // Even if the destination already holds a symlink where the tree
        // goes, the contained unpacker refuses to write through it.
        let tmp = tempfile::tempdir().expect("tmp");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        let dst = tmp.path().join("dst");
        std::fs::create_dir(&dst).expect("mkdir");
        std::os::unix::fs::symlink(&outside, dst.join("t")).expect("symlink");
        let a = archive(&[("t", D, ""), ("t/a", F, "x")]);
        let shape = check_archive(&a[..]).expect("ok");
        let _ = unpack_to(&a[..], &shape, &dst);
        assert!(!outside.join("a").exists(), "wrote through the symlink");
    }

    #[test]
    fn pack_names_the_top_entry() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = tmp.path().join("d");
        std::fs::create_dir_all(d.join("s")).expect("mkdir");
        std::fs::write(d.join("s/f"), "x").expect("w");
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).expect("symlink");
        let out = pack_as(&d, "renamed", Vec::new()).expect("pack");
        let mut names: Vec<(String, bool)> = tar::Archive::new(&out[..])
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.path()
                        .expect("p")
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join("/"),
                    e.header().entry_type().is_symlink(),
                )
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ("renamed".to_string(), false),
                ("renamed/link".to_string(), true),
                ("renamed/s".to_string(), false),
                ("renamed/s/f".to_string(), false),
            ]
        );
        assert_eq!(host_name(Path::new("/a/b")).expect("name"), "b");
    }
}
