//! Apply image layers, in order, to one directory tree, as an unprivileged
//! process could: file contents and the tree's shape go to disk; owners,
//! modes the unpacking user could lock itself out with, device nodes,
//! fifos and xattrs are remembered and handed to the ext4 step
//! ([`Flattened::fixups`], [`Flattened::xattrs`]).
//!
//! Layers stream through (`Read` in, 256 KiB buffers); memory grows with the
//! number of paths (one small record each), never with file sizes.
//!
//! Every entry is checked before anything is written; hostile input stops
//! the flatten with [`Error::Hostile`] naming the layer and entry.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use banger_image::ext4::{Ext4Fixups, NodeKind};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};

/// Size caps for untrusted layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single file, in bytes.
    pub max_entry_size: u64,
    /// Most bytes all layers may expand to (decompressed tar streams,
    /// summed). This is what stops decompression bombs.
    pub max_total_size: u64,
    /// Most tar entries over all layers.
    pub max_entries: u64,
    /// Most bytes of extended attributes (names and values) one layer may
    /// carry: they are kept in memory until the ext4 is built.
    pub max_xattr_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entry_size: 8 << 30,
            max_total_size: 32 << 30,
            max_entries: 4_000_000,
            max_xattr_bytes: 16 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Node {
        kind: NodeKind,
        major: u32,
        minor: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    kind: Kind,
    /// Permission bits incl. setuid/setgid/sticky (no type bits).
    perm: u32,
    uid: u32,
    gid: u32,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    fn default_dir() -> Self {
        Meta {
            kind: Kind::Dir,
            perm: 0o755,
            uid: 0,
            gid: 0,
            xattrs: Vec::new(),
        }
    }
}

/// What one layer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    pub entries: u64,
    /// Bytes of the decompressed tar stream.
    pub uncompressed: u64,
    pub whiteouts: u64,
}

/// The result of [`Flattener::finish`].
#[derive(Debug, Clone, Default)]
pub struct Flattened {
    /// Owners, modes, device nodes and fifos for [`banger_image::ext4::make_ext4`].
    pub fixups: Ext4Fixups,
    /// `(guest path, name, value)`, applied after the ext4 is built.
    pub xattrs: Vec<(String, String, Vec<u8>)>,
    /// Bytes of regular-file content in the tree.
    pub file_bytes: u64,
    /// Paths in the tree (all kinds).
    pub paths: u64,
}

pub struct Flattener {
    root: PathBuf,
    limits: Limits,
    meta: BTreeMap<String, Meta>,
    total: u64,
    /// Bytes declared by entry headers in the layer being applied.
    in_layer: u64,
    /// Extended-attribute bytes in the layer being applied.
    xattrs_in_layer: u64,
    entries: u64,
}

/// Guest path of a relative tree path (`a/b` → `/a/b`, `` → `/`).
fn guest(rel: &str) -> String {
    format!("/{rel}")
}

impl Flattener {
    /// Flatten into `root` (created; should be empty).
    pub fn new(root: &Path, limits: Limits) -> Result<Self> {
        fs::create_dir_all(root).ctx("create", root)?;
        // The tree root becomes the ext4 root: mkfs -d copies its mode.
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).ctx("chmod", root)?;
        let mut meta = BTreeMap::new();
        meta.insert("/".to_string(), Meta::default_dir());
        Ok(Flattener {
            root: root.to_path_buf(),
            limits,
            meta,
            total: 0,
            in_layer: 0,
            xattrs_in_layer: 0,
            entries: 0,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Apply one layer blob (gzip, zstd or plain tar; detected from the
    /// bytes). `diff_id` is the config's `rootfs.diff_ids` entry: the
    /// decompressed stream must hash to it.
    pub fn apply_layer<R: Read>(
        &mut self,
        layer: &str,
        blob: R,
        diff_id: Option<&str>,
    ) -> Result<LayerStats> {
        let mut buffered = BufReader::with_capacity(256 * 1024, blob);
        let magic = buffered
            .fill_buf()
            .map_err(|e| layer_err(layer, format!("read: {e}")))?
            .to_vec();
        let decoded: Box<dyn Read + '_> = if magic.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::MultiGzDecoder::new(buffered))
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Box::new(
                zstd::stream::read::Decoder::with_buffer(buffered)
                    .map_err(|e| layer_err(layer, format!("zstd: {e}")))?,
            )
        } else {
            Box::new(buffered)
        };
        let budget = self.limits.max_total_size.saturating_sub(self.total);
        let mut counted = Counted {
            inner: decoded,
            hasher: Sha256::new(),
            count: 0,
            budget,
            over: false,
        };
        let mut stats = LayerStats::default();
        self.in_layer = 0;
        self.xattrs_in_layer = 0;
        let mut current: HashSet<String> = HashSet::new();
        let result = (|| -> Result<()> {
            {
                // Oversized PAX / GNU long name headers fail here, before the
                // tar crate would read them whole into memory.
                let mut archive =
                    tar::Archive::new(banger_proto::tar_guard::TarGuard::new(&mut counted));
                let entries = archive
                    .entries()
                    .map_err(|e| layer_err(layer, format!("not a tar stream: {e}")))?;
                for entry in entries {
                    let entry =
                        entry.map_err(|e| layer_err(layer, format!("bad tar entry: {e}")))?;
                    self.apply_entry(layer, entry, &mut current, &mut stats)?;
                }
            }
            // The rest of the stream (end blocks, padding) is part of the
            // diff_id and may hide a bomb too.
            io::copy(&mut counted, &mut io::sink())
                .map_err(|e| layer_err(layer, format!("read: {e}")))?;
            Ok(())
        })();
        if counted.over {
            return Err(Error::Hostile {
                layer: layer.to_string(),
                entry: "(stream)".into(),
                reason: format!(
                    "layers expand to more than the {} byte total size cap (decompression bomb?)",
                    self.limits.max_total_size
                ),
            });
        }
        result?;
        self.total += counted.count;
        stats.uncompressed = counted.count;
        if let Some(want) = diff_id {
            let got = format!("sha256:{}", hex::encode(counted.hasher.finalize()));
            if got != want {
                return Err(layer_err(
                    layer,
                    format!(
                        "decompressed content hashes to {got}, the image config says {want}; refusing the image"
                    ),
                ));
            }
        }
        Ok(stats)
    }

    fn apply_entry<R: Read>(
        &mut self,
        layer: &str,
        mut entry: tar::Entry<'_, R>,
        current: &mut HashSet<String>,
        stats: &mut LayerStats,
    ) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let hostile = |reason: String| Error::Hostile {
            layer: layer.to_string(),
            entry: shown.clone(),
            reason,
        };
        self.entries += 1;
        stats.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(hostile(format!(
                "more than {} entries in the image",
                self.limits.max_entries
            )));
        }
        let rel = normalize(&raw).map_err(&hostile)?;
        let ty = entry.header().entry_type();
        if matches!(
            ty,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader | tar::EntryType::GNULongName
        ) {
            return Ok(());
        }
        let name = rel.rsplit('/').next().unwrap_or("");
        if let Some(target) = name.strip_prefix(".wh.") {
            stats.whiteouts += 1;
            let dir = parent_of(&rel);
            if !self.check_parents(&rel, Missing::Skip).map_err(&hostile)? {
                // Its directory is not in the tree: nothing to delete.
                if target.is_empty() || target == "." || target == ".." {
                    return Err(hostile(
                        "whiteout names something outside its directory".into(),
                    ));
                }
                return Ok(());
            }
            if target == ".wh..opq" {
                self.opaque(dir, current).map_err(&hostile)?;
            } else if target.starts_with(".wh.") {
                // Other aufs bookkeeping (.wh..wh.plnk…): nothing to apply.
            } else {
                if target.is_empty() || target == "." || target == ".." {
                    return Err(hostile(
                        "whiteout names something outside its directory".into(),
                    ));
                }
                let victim = join(dir, target);
                if !current.contains(&victim) {
                    self.remove(&victim).map_err(&hostile)?;
                }
            }
            return Ok(());
        }
        if rel.is_empty() {
            // "./": the root directory's own metadata.
            if ty == tar::EntryType::Directory {
                let m = self.header_meta(&mut entry, Kind::Dir).map_err(&hostile)?;
                self.meta.insert("/".into(), m);
            }
            return Ok(());
        }
        for a in ancestors(&rel) {
            current.insert(a.to_string());
        }
        current.insert(rel.clone());
        self.check_parents(&rel, Missing::Create)
            .map_err(&hostile)?;
        let size = entry.header().size().unwrap_or(0);
        if size > self.limits.max_entry_size {
            return Err(hostile(format!(
                "entry is {size} bytes, over the {} byte per-entry cap",
                self.limits.max_entry_size
            )));
        }
        self.in_layer = self.in_layer.saturating_add(size);
        if self.total.saturating_add(self.in_layer) > self.limits.max_total_size {
            return Err(hostile(format!(
                "entry of {size} bytes would take the image past the {} byte total size cap",
                self.limits.max_total_size
            )));
        }
        let disk = self.root.join(&rel);
        match ty {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&disk) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => self.remove(&rel).map_err(&hostile)?,
                    Err(_) => {
                        self.meta.remove(&guest(&rel));
                    }
                }
                if !disk.exists() {
                    fs::create_dir(&disk).ctx("create", &disk)?;
                }
                let m = self.header_meta(&mut entry, Kind::Dir).map_err(&hostile)?;
                set_perm(&disk, (m.perm & 0o777) | 0o700)?;
                self.meta.insert(guest(&rel), m);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.remove(&rel).map_err(&hostile)?;
                let m = self.header_meta(&mut entry, Kind::File).map_err(&hostile)?;
                // O_EXCL: never opens anything that is already there (a
                // symlink raced in would fail the create, not be followed).
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&disk)
                    .ctx("create", &disk)?;
                let cap = self.limits.max_entry_size;
                let mut limited = (&mut entry).take(cap + 1);
                let n =
                    copy_buf(&mut limited, &mut out).map_err(|e| hostile(format!("read: {e}")))?;
                if n > cap {
                    return Err(hostile(format!(
                        "entry expands past the {cap} byte per-entry cap"
                    )));
                }
                // Sparse entries expand beyond their stored size: count
                // what was really written against the total cap too.
                self.in_layer = self.in_layer.saturating_add(n.saturating_sub(size));
                if self.total.saturating_add(self.in_layer) > self.limits.max_total_size {
                    return Err(hostile(format!(
                        "entry expands past the {} byte total size cap",
                        self.limits.max_total_size
                    )));
                }
                set_perm(&disk, (m.perm & 0o777) | 0o600)?;
                self.meta.insert(guest(&rel), m);
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| hostile("symlink without a target".into()))?
                    .into_owned();
                let target = String::from_utf8(target)
                    .map_err(|_| hostile("symlink target is not UTF-8".into()))?;
                if target.is_empty() || target.contains('\0') {
                    return Err(hostile("symlink target is empty".into()));
                }
                self.remove(&rel).map_err(&hostile)?;
                std::os::unix::fs::symlink(&target, &disk).ctx("create symlink", &disk)?;
                let m = self
                    .header_meta(&mut entry, Kind::Symlink)
                    .map_err(&hostile)?;
                self.meta.insert(guest(&rel), m);
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| hostile("hardlink without a target".into()))?
                    .into_owned();
                let trel = normalize(&target).map_err(|r| {
                    hostile(format!("hardlink target points outside the tree: {r}"))
                })?;
                if trel.is_empty() {
                    return Err(hostile("hardlink to the root directory".into()));
                }
                if trel == rel {
                    return Ok(());
                }
                self.check_parents(&trel, Missing::Fail)
                    .map_err(|r| hostile(format!("hardlink target: {r}")))?;
                let tdisk = self.root.join(&trel);
                let tmeta = self.meta.get(&guest(&trel)).cloned();
                match (fs::symlink_metadata(&tdisk), tmeta) {
                    (Ok(md), Some(tm)) if !md.is_dir() => {
                        self.remove(&rel).map_err(&hostile)?;
                        fs::hard_link(&tdisk, &disk).ctx("hardlink", &disk)?;
                        self.meta.insert(guest(&rel), tm);
                    }
                    (Ok(_), _) => {
                        return Err(hostile(format!("hardlink target {trel:?} is a directory")));
                    }
                    (Err(_), Some(tm)) if matches!(tm.kind, Kind::Node { .. }) => {
                        // Nodes exist only as fixups: the link becomes a
                        // second node with the same numbers.
                        self.remove(&rel).map_err(&hostile)?;
                        self.meta.insert(guest(&rel), tm);
                    }
                    _ => {
                        return Err(hostile(format!(
                            "hardlink target {trel:?} does not exist in this or an earlier layer"
                        )));
                    }
                }
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let kind = match ty {
                    tar::EntryType::Char => NodeKind::Char,
                    tar::EntryType::Block => NodeKind::Block,
                    _ => NodeKind::Fifo,
                };
                let h = entry.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                self.remove(&rel).map_err(&hostile)?;
                let m = self
                    .header_meta(&mut entry, Kind::Node { kind, major, minor })
                    .map_err(&hostile)?;
                self.meta.insert(guest(&rel), m);
            }
            other => {
                return Err(hostile(format!(
                    "unsupported tar entry type {other:?} in an image layer"
                )));
            }
        }
        Ok(())
    }

    fn header_meta<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: Kind,
    ) -> Result<Meta, String> {
        let h = entry.header();
        let perm = h.mode().map_err(|e| format!("bad mode: {e}"))? & 0o7777;
        let uid = h.uid().map_err(|e| format!("bad uid: {e}"))?;
        let gid = h.gid().map_err(|e| format!("bad gid: {e}"))?;
        let uid = u32::try_from(uid).map_err(|_| format!("uid {uid} out of range"))?;
        let gid = u32::try_from(gid).map_err(|_| format!("gid {gid} out of range"))?;
        let mut xattrs = Vec::new();
        if let Some(exts) = entry
            .pax_extensions()
            .map_err(|e| format!("bad pax header: {e}"))?
        {
            for ext in exts {
                let ext = ext.map_err(|e| format!("bad pax header: {e}"))?;
                let Ok(key) = ext.key() else { continue };
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    let ns_ok = ["user.", "trusted.", "security."]
                        .iter()
                        .any(|p| name.starts_with(p) && name.len() > p.len());
                    if !ns_ok || name.len() > 255 || name.chars().any(|c| c.is_control()) {
                        return Err(format!("unsupported xattr name {name:?}"));
                    }
                    if ext.value_bytes().len() > 64 * 1024 {
                        return Err(format!("xattr {name} is larger than 64 KiB"));
                    }
                    self.xattrs_in_layer += (name.len() + ext.value_bytes().len()) as u64;
                    if self.xattrs_in_layer > self.limits.max_xattr_bytes {
                        return Err(format!(
                            "the layer's extended attributes exceed {} bytes (an xattr bomb?)",
                            self.limits.max_xattr_bytes
                        ));
                    }
                    xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
        Ok(Meta {
            kind,
            perm,
            uid,
            gid,
            xattrs,
        })
    }

    /// Every proper ancestor of `rel` must be a real directory (not a
    /// symlink, not a file). Missing ones are created with docker's
    /// defaults, root:root 0755, refused, or reported (`Ok(false)`),
    /// according to `missing`.
    fn check_parents(&mut self, rel: &str, missing: Missing) -> Result<bool, String> {
        for a in ancestors(rel) {
            let disk = self.root.join(a);
            match fs::symlink_metadata(&disk) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(format!(
                        "would write through the symlink /{a} (from this or an earlier layer)"
                    ));
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(format!("parent /{a} is not a directory")),
                Err(_) => {
                    if self
                        .meta
                        .get(&guest(a))
                        .is_some_and(|m| matches!(m.kind, Kind::Node { .. }))
                    {
                        return Err(format!("parent /{a} is a device node or fifo"));
                    }
                    match missing {
                        Missing::Create => {}
                        Missing::Skip => return Ok(false),
                        Missing::Fail => return Err(format!("parent /{a} does not exist")),
                    }
                    fs::create_dir(&disk).map_err(|e| format!("create /{a}: {e}"))?;
                    fs::set_permissions(&disk, fs::Permissions::from_mode(0o755))
                        .map_err(|e| format!("chmod /{a}: {e}"))?;
                    self.meta.insert(guest(a), Meta::default_dir());
                }
            }
        }
        Ok(true)
    }

    /// Delete `rel` (and what is under it) from the tree and the records.
    /// Never follows a symlink: the link itself goes.
    fn remove(&mut self, rel: &str) -> Result<(), String> {
        let disk = self.root.join(rel);
        match fs::symlink_metadata(&disk) {
            Ok(m) if m.is_dir() => {
                fs::remove_dir_all(&disk).map_err(|e| format!("remove /{rel}: {e}"))?
            }
            Ok(_) => fs::remove_file(&disk).map_err(|e| format!("remove /{rel}: {e}"))?,
            Err(_) => {}
        }
        let g = guest(rel);
        let sub = format!("{g}/");
        self.meta.remove(&g);
        let under: Vec<String> = self
            .meta
            .range(sub.clone()..)
            .take_while(|(k, _)| k.starts_with(&sub))
            .map(|(k, _)| k.clone())
            .collect();
        for k in under {
            self.meta.remove(&k);
        }
        Ok(())
    }

    /// `.wh..wh..opq` in `dir`: hide everything lower layers put under it.
    /// What this layer itself adds there (before or after the marker) stays.
    fn opaque(&mut self, dir: &str, current: &HashSet<String>) -> Result<(), String> {
        let disk = self.root.join(dir);
        match fs::symlink_metadata(&disk) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("opaque marker in /{dir}, which is not a directory")),
            Err(_) => return Ok(()),
        }
        let mut stack = vec![dir.to_string()];
        while let Some(d) = stack.pop() {
            let ddisk = self.root.join(&d);
            let rd = fs::read_dir(&ddisk).map_err(|e| format!("list /{d}: {e}"))?;
            for e in rd {
                let e = e.map_err(|e| format!("list /{d}: {e}"))?;
                let name = e.file_name();
                let Some(name) = name.to_str() else {
                    return Err(format!("non-UTF-8 name under /{d}"));
                };
                let child = join(&d, name);
                if !current.contains(&child) {
                    self.remove(&child)?;
                } else if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(child);
                }
            }
            // Device nodes live only in the records.
            let sub = format!("{}/", guest(&d).trim_end_matches('/'));
            let stale: Vec<String> = self
                .meta
                .range(sub.clone()..)
                .take_while(|(k, _)| k.starts_with(&sub))
                .filter(|(k, m)| {
                    matches!(m.kind, Kind::Node { .. })
                        && !k[sub.len()..].contains('/')
                        && !current.contains(&k[1..])
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in stale {
                self.meta.remove(&k);
            }
        }
        Ok(())
    }

    /// Compare the tree with the records and produce what the ext4 step
    /// must still apply.
    pub fn finish(self) -> Result<Flattened> {
        let mut out = Flattened::default();
        for (path, m) in &self.meta {
            out.paths += 1;
            for (name, value) in &m.xattrs {
                out.xattrs.push((path.clone(), name.clone(), value.clone()));
            }
            if let Kind::Node { kind, major, minor } = m.kind {
                out.fixups
                    .mknod(path.clone(), kind, major, minor, m.perm, m.uid, m.gid);
                continue;
            }
            let disk = self.root.join(path.trim_start_matches('/'));
            let md = fs::symlink_metadata(&disk).ctx("stat", &disk)?;
            if md.is_file() {
                out.file_bytes += md.len();
            }
            if (md.uid(), md.gid()) != (m.uid, m.gid) {
                out.fixups.set_owner(path.clone(), m.uid, m.gid);
            }
            if m.kind != Kind::Symlink && md.mode() & 0o7777 != m.perm {
                let ty = if m.kind == Kind::Dir {
                    0o040000
                } else {
                    0o100000
                };
                out.fixups.set_mode(path.clone(), ty | m.perm);
            }
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    Create,
    Skip,
    Fail,
}

fn layer_err(layer: &str, reason: String) -> Error {
    Error::Layer {
        layer: layer.to_string(),
        reason,
    }
}

fn set_perm(path: &Path, perm: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(perm)).ctx("chmod", path)
}

/// A relative, normalised tree path (`a/b`, or `` for the root). Leading
/// `./` and empty components are dropped; absolute paths and `..` refused.
fn normalize(raw: &[u8]) -> Result<String, String> {
    let s = std::str::from_utf8(raw).map_err(|_| "path is not UTF-8".to_string())?;
    if s.starts_with('/') {
        return Err("absolute path".into());
    }
    if s.chars().any(|c| c.is_control()) {
        return Err("path contains a control character".into());
    }
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("path contains a '..' component".into()),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

fn parent_of(rel: &str) -> &str {
    rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Proper ancestors, outermost first: `a/b/c` → `a`, `a/b`.
fn ancestors(rel: &str) -> impl Iterator<Item = &str> {
    rel.match_indices('/').map(move |(i, _)| &rel[..i])
}

fn copy_buf(r: &mut impl Read, w: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..k])?;
        n += k as u64;
    }
}

/// Counts and hashes the decompressed stream, and cuts it off at the
/// remaining total-size budget.
struct Counted<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    budget: u64,
    over: bool,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.budget {
            self.over = true;
            return Err(io::Error::other("total size cap exceeded"));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize(b"./a//b/").as_deref(), Ok("a/b"));
        assert_eq!(normalize(b"./").as_deref(), Ok(""));
        assert!(normalize(b"/etc/passwd").is_err());
        assert!(normalize(b"a/../../b").is_err());
        assert!(normalize(b"a\nb").is_err());
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), vec!["a", "a/b"]);
        assert_eq!(parent_of("a"), "");
    }
}
