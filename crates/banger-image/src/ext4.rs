//! ext4 images without mounting: `mkfs.ext4 -d <tree>` into a sparse file,
//! a `debugfs` script for what an unprivileged tree cannot carry (owners,
//! device nodes), `e2fsck -fn` as the gate; and in-place edits of an
//! existing image (per-VM host keys, authorized_keys, hostname, network).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::cmd;
use crate::error::{Error, IoContext, Result};

/// Kind of a special file for [`Ext4Fixups::mknod`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Char,
    Block,
    Fifo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fixup {
    SetOwner {
        path: String,
        uid: u32,
        gid: u32,
    },
    /// `mode` is the full st_mode, file-type bits included (debugfs sets the
    /// whole field).
    SetMode {
        path: String,
        mode: u32,
    },
    Mknod {
        path: String,
        kind: NodeKind,
        major: u32,
        minor: u32,
        perm: u32,
        uid: u32,
        gid: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
}

/// Metadata corrections applied to an ext4 image with `debugfs -w`. Used
/// after `mkfs.ext4 -d` from a tree an unprivileged process unpacked (owners
/// and device nodes lost), by the OCI flattener and by per-VM disks.
///
/// Paths are absolute guest paths. Order matters: entries run as added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ext4Fixups {
    entries: Vec<Fixup>,
}

impl Ext4Fixups {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn set_owner(&mut self, path: impl Into<String>, uid: u32, gid: u32) -> &mut Self {
        self.entries.push(Fixup::SetOwner {
            path: path.into(),
            uid,
            gid,
        });
        self
    }
    /// `mode` is the full st_mode including the file-type bits (e.g.
    /// `0o100644`, `0o040700`), as `Metadata::mode()` or a tar header gives.
    pub fn set_mode(&mut self, path: impl Into<String>, mode: u32) -> &mut Self {
        self.entries.push(Fixup::SetMode {
            path: path.into(),
            mode,
        });
        self
    }
    /// Create a device node or fifo (the path must not exist yet).
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &mut self,
        path: impl Into<String>,
        kind: NodeKind,
        major: u32,
        minor: u32,
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> &mut Self {
        self.entries.push(Fixup::Mknod {
            path: path.into(),
            kind,
            major,
            minor,
            perm,
            uid,
            gid,
        });
        self
    }
    /// Create a symlink (the path must not exist yet).
    pub fn symlink(&mut self, path: impl Into<String>, target: impl Into<String>) -> &mut Self {
        self.entries.push(Fixup::Symlink {
            path: path.into(),
            target: target.into(),
        });
        self
    }
    /// Keep only the entries `keep` accepts.
    pub fn retain(&mut self, keep: impl FnMut(&Fixup) -> bool) {
        self.entries.retain(keep);
    }
    pub fn extend(&mut self, other: Ext4Fixups) {
        self.entries.extend(other.entries);
    }
    pub fn entries(&self) -> &[Fixup] {
        &self.entries
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The debugfs script for these fixups.
    pub fn script(&self) -> Result<String> {
        let mut s = String::new();
        for e in &self.entries {
            match e {
                Fixup::SetOwner { path, uid, gid } => {
                    let p = quote(path)?;
                    let _ = writeln!(s, "sif {p} uid {uid}\nsif {p} gid {gid}");
                }
                Fixup::SetMode { path, mode } => {
                    if mode & 0o170000 == 0 {
                        return Err(Error::GuestPath {
                            path: path.clone(),
                            reason: "set_mode needs the file-type bits (e.g. 0o100644)",
                        });
                    }
                    let _ = writeln!(s, "sif {} mode 0{:o}", quote(path)?, mode);
                }
                Fixup::Mknod {
                    path,
                    kind,
                    major,
                    minor,
                    perm,
                    uid,
                    gid,
                } => {
                    let (parent, name) = split(path)?;
                    // debugfs's mknod takes the argument as a literal entry
                    // name in the current directory (an absolute path would
                    // become a name containing '/'), hence the cd.
                    let (spec, ty) = match kind {
                        NodeKind::Char => (format!("c {major} {minor}"), 0o020000),
                        NodeKind::Block => (format!("b {major} {minor}"), 0o060000),
                        NodeKind::Fifo => ("p".to_string(), 0o010000),
                    };
                    let p = quote(path)?;
                    let _ = writeln!(
                        s,
                        "cd {}\nmknod {} {spec}\ncd /\nsif {p} mode 0{:o}\nsif {p} uid {uid}\nsif {p} gid {gid}",
                        quote(&parent)?,
                        quote(&name)?,
                        ty | (perm & 0o7777)
                    );
                }
                Fixup::Symlink { path, target } => {
                    let _ = writeln!(s, "symlink {} {}", quote(path)?, quote(target)?);
                }
            }
        }
        Ok(s)
    }

    /// Apply to `image` (not mounted by anyone).
    pub fn apply(&self, image: &Path) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        debugfs_script(image, &self.script()?, &[])
    }
}

/// Check a guest path: absolute, no `..`, nothing debugfs's parser would
/// misread.
pub fn check_guest_path(path: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::GuestPath {
            path: path.to_string(),
            reason,
        })
    };
    if !path.starts_with('/') {
        return bad("must be absolute");
    }
    if path
        .chars()
        .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        return bad("contains a quote, backslash or control character");
    }
    if Path::new(path)
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return bad("contains '.' or '..'");
    }
    Ok(())
}

fn quote(path: &str) -> Result<String> {
    if path
        .chars()
        .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        return Err(Error::GuestPath {
            path: path.to_string(),
            reason: "contains a quote, backslash or control character",
        });
    }
    Ok(format!("\"{path}\""))
}

fn split(path: &str) -> Result<(String, String)> {
    check_guest_path(path)?;
    let p = Path::new(path);
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => Ok((
            parent.to_string_lossy().into_owned(),
            name.to_string_lossy().into_owned(),
        )),
        _ => Err(Error::GuestPath {
            path: path.to_string(),
            reason: "has no file name",
        }),
    }
}

/// debugfs exits 0 even when commands fail, so errors are read from stderr.
/// `tolerated` are message prefixes that are expected (e.g. rm of a file
/// that may not exist).
fn debugfs_script(image: &Path, script: &str, tolerated: &[&str]) -> Result<()> {
    let mut file = tempfile::NamedTempFile::new().ctx("create debugfs script for", image)?;
    file.write_all(script.as_bytes())
        .ctx("write debugfs script for", image)?;
    let mut c = std::process::Command::new("debugfs");
    c.arg("-w")
        .arg("-f")
        .arg(file.path())
        .arg(image)
        .env("DEBUGFS_PAGER", "__none__")
        .stdin(std::process::Stdio::null());
    let out = c.output().map_err(|source| Error::Spawn {
        program: "debugfs".into(),
        source,
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.starts_with("debugfs "))
        .filter(|l| !tolerated.iter().any(|t| l.starts_with(t)))
        .collect();
    if !errors.is_empty() || !out.status.success() {
        return Err(Error::Command {
            program: "debugfs".into(),
            status: out.status.to_string(),
            stderr: errors.join("\n"),
        });
    }
    Ok(())
}

/// Sizes of a sparse file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileSize {
    /// What `ls -l` shows.
    pub apparent: u64,
    /// What the file really occupies on disk (`du`).
    pub allocated: u64,
}

impl FileSize {
    pub fn of(path: &Path) -> Result<Self> {
        let m = fs::metadata(path).ctx("stat", path)?;
        Ok(FileSize {
            apparent: m.len(),
            allocated: m.blocks() * 512,
        })
    }
}

/// Build `image` (created or replaced, sparse, `size` bytes) from `tree`,
/// apply `fixups`, and check it with `e2fsck -fn`.
pub fn make_ext4(tree: &Path, image: &Path, size: u64, fixups: &Ext4Fixups) -> Result<FileSize> {
    let f = fs::File::create(image).ctx("create", image)?;
    f.set_len(size).ctx("size", image)?;
    drop(f);
    let result = (|| {
        cmd::run(
            "mkfs.ext4",
            [
                "-q".as_ref(),
                "-F".as_ref(),
                "-m".as_ref(),
                "0".as_ref(),
                "-E".as_ref(),
                "root_owner=0:0".as_ref(),
                "-d".as_ref(),
                tree.as_os_str(),
                image.as_os_str(),
            ],
        )?;
        fixups.apply(image)?;
        fsck(image)?;
        FileSize::of(image)
    })();
    if result.is_err() {
        let _ = fs::remove_file(image);
    }
    result
}

/// `e2fsck -fn`: a read-only full check; any finding is an error.
pub fn fsck(image: &Path) -> Result<()> {
    let out = std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            program: "e2fsck".into(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Fsck {
            path: image.to_path_buf(),
            output: cmd::tail(&out.stdout, &out.stderr),
        })
    }
}

/// One change to an existing image, for [`write_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestEntry {
    /// Create the directory (and missing parents, root-owned 0755) if
    /// absent, then set its owner and permissions.
    Dir {
        path: String,
        perm: u32,
        uid: u32,
        gid: u32,
    },
    /// Write or replace a regular file.
    File {
        path: String,
        contents: Vec<u8>,
        perm: u32,
        uid: u32,
        gid: u32,
    },
    /// Remove a file if present (e.g. stale host keys).
    Remove { path: String },
}

impl GuestEntry {
    pub fn file(path: impl Into<String>, contents: impl Into<Vec<u8>>, perm: u32) -> Self {
        GuestEntry::File {
            path: path.into(),
            contents: contents.into(),
            perm,
            uid: 0,
            gid: 0,
        }
    }
    pub fn dir(path: impl Into<String>, perm: u32) -> Self {
        GuestEntry::Dir {
            path: path.into(),
            perm,
            uid: 0,
            gid: 0,
        }
    }
}

/// Write, replace or remove files inside an ext4 image without mounting it:
/// how the daemon puts per-VM ssh host keys, authorized_keys, hostname and
/// network config into a guest's root disk. The image must not be in use by
/// a running guest. Ends with `e2fsck -fn`.
pub fn write_files(image: &Path, entries: &[GuestEntry]) -> Result<()> {
    // debugfs's mkdir on an existing name leaves an orphaned inode behind
    // and its rm/write fail on missing/existing names, so look first.
    let mut wanted: Vec<String> = Vec::new();
    for e in entries {
        let path = match e {
            GuestEntry::Dir { path, .. }
            | GuestEntry::File { path, .. }
            | GuestEntry::Remove { path } => path,
        };
        check_guest_path(path)?;
        wanted.extend(ancestors(path));
        wanted.push(path.clone());
    }
    wanted.sort();
    wanted.dedup();
    let mut existing = existing_paths(image, &wanted)?;

    let staging = tempfile::tempdir().ctx("create staging dir for", image)?;
    let mut s = String::new();
    let mkdir_p = |s: &mut String, path: &str, existing: &mut BTreeSet<String>| -> Result<()> {
        for d in ancestors(path).into_iter().chain([path.to_string()]) {
            if existing.insert(d.clone()) {
                let _ = writeln!(s, "mkdir {}", quote(&d)?);
            }
        }
        Ok(())
    };
    for (i, e) in entries.iter().enumerate() {
        match e {
            GuestEntry::Dir {
                path,
                perm,
                uid,
                gid,
            } => {
                mkdir_p(&mut s, path, &mut existing)?;
                let p = quote(path)?;
                let _ = writeln!(
                    s,
                    "sif {p} mode 0{:o}\nsif {p} uid {uid}\nsif {p} gid {gid}",
                    0o040000 | (perm & 0o7777)
                );
            }
            GuestEntry::File {
                path,
                contents,
                perm,
                uid,
                gid,
            } => {
                let (parent, _) = split(path)?;
                if parent != "/" {
                    mkdir_p(&mut s, &parent, &mut existing)?;
                }
                let host: PathBuf = staging.path().join(i.to_string());
                fs::write(&host, contents).ctx("write staging file", &host)?;
                let host_s = host.to_str().ok_or_else(|| Error::GuestPath {
                    path: host.display().to_string(),
                    reason: "staging path is not UTF-8",
                })?;
                let p = quote(path)?;
                if existing.contains(path) {
                    let _ = writeln!(s, "rm {p}");
                }
                existing.insert(path.clone());
                let _ = writeln!(
                    s,
                    "write {} {p}\nsif {p} mode 0{:o}\nsif {p} uid {uid}\nsif {p} gid {gid}",
                    quote(host_s)?,
                    0o100000 | (perm & 0o7777)
                );
            }
            GuestEntry::Remove { path } => {
                if existing.remove(path) {
                    let _ = writeln!(s, "rm {}", quote(path)?);
                }
            }
        }
    }
    debugfs_script(image, &s, &[])?;
    fsck(image)
}

/// `/a/b/c` → `/a`, `/a/b`.
fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = PathBuf::from("/");
    let comps: Vec<_> = Path::new(path).components().skip(1).collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        cur.push(c);
        out.push(cur.to_string_lossy().into_owned());
    }
    out
}

/// Which of `paths` exist in the image (one debugfs run).
pub fn existing_paths(image: &Path, paths: &[String]) -> Result<BTreeSet<String>> {
    let mut script = String::new();
    for p in paths {
        let _ = writeln!(script, "stat {}", quote(p)?);
    }
    let mut file = tempfile::NamedTempFile::new().ctx("create debugfs script for", image)?;
    file.write_all(script.as_bytes())
        .ctx("write debugfs script for", image)?;
    let out = std::process::Command::new("debugfs")
        .arg("-f")
        .arg(file.path())
        .arg(image)
        .env("DEBUGFS_PAGER", "__none__")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            program: "debugfs".into(),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let missing: BTreeSet<&str> = stderr
        .lines()
        .filter_map(|l| {
            l.split_once(": File not found by ext2_lookup")
                .map(|(p, _)| p)
        })
        .collect();
    Ok(paths
        .iter()
        .filter(|p| !missing.contains(p.as_str()))
        .cloned()
        .collect())
}

/// Read a file out of an image (`debugfs cat`): for checks and tests.
pub fn read_file(image: &Path, path: &str) -> Result<Vec<u8>> {
    check_guest_path(path)?;
    let out = cmd::run(
        "debugfs",
        [
            "-R".as_ref(),
            format!("cat {}", quote(path)?).as_ref(),
            image.as_os_str(),
        ],
    )?;
    // debugfs prints lookup errors to stderr and still exits 0.
    let err = String::from_utf8_lossy(&out.stderr);
    if let Some(line) = err
        .lines()
        .find(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
    {
        return Err(Error::Command {
            program: "debugfs".into(),
            status: "cat".into(),
            stderr: line.to_string(),
        });
    }
    Ok(out.stdout)
}

/// Inode metadata as debugfs reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestStat {
    /// Full st_mode (type + permission bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
}

/// `stat` one path in an image; `Ok(None)` if it does not exist.
pub fn stat(image: &Path, path: &str) -> Result<Option<GuestStat>> {
    check_guest_path(path)?;
    let out = cmd::run(
        "debugfs",
        [
            "-R".as_ref(),
            format!("stat {}", quote(path)?).as_ref(),
            image.as_os_str(),
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "Inode: 15   Type: regular    Mode:  0600   Flags: 0x80000"
    // "User: 100000   Group:     0   Project:     0   Size: 5"
    let field = |key: &str| -> Option<&str> {
        let i = text.find(key)? + key.len();
        text[i..].split_whitespace().next()
    };
    let Some(ty) = text.find("Type: ").map(|i| &text[i + 6..]) else {
        return Ok(None);
    };
    let ty_bits = [
        ("regular", 0o100000),
        ("directory", 0o040000),
        ("symlink", 0o120000),
        ("character special", 0o020000),
        ("block special", 0o060000),
        ("FIFO", 0o010000),
        ("socket", 0o140000),
    ]
    .iter()
    .find(|(n, _)| ty.starts_with(n))
    .map(|(_, b)| *b)
    .unwrap_or(0);
    let parse = |key: &str| field(key).and_then(|v| v.parse::<u64>().ok());
    let perm = field("Mode: ").and_then(|v| u32::from_str_radix(v, 8).ok());
    match (perm, parse("User: "), parse("Group: ")) {
        (Some(perm), Some(uid), Some(gid)) => Ok(Some(GuestStat {
            mode: ty_bits | perm,
            uid: uid as u32,
            gid: gid as u32,
            size: parse("Size: ").unwrap_or(0),
        })),
        _ => Ok(None),
    }
}
