//! Kernels: the ELF `vmlinux` Firecracker needs, pulled out of a bzImage,
//! and the record the daemon stores for each kernel.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// Kernel command line for Firecracker with this image's kernel. No
/// `nomodule`: Debian's kernel has virtio_mmio, virtio_blk and vsock as
/// modules (loaded from the initramfs). The daemon appends `ip=…`.
pub const DEFAULT_FIRECRACKER_BOOT_ARGS: &str =
    "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw quiet loglevel=3";

/// Same for the qemu microvm driver (which adds `tsc_early_khz=` itself).
pub const DEFAULT_QEMU_BOOT_ARGS: &str =
    "console=ttyS0 reboot=t panic=-1 root=/dev/vda rw quiet loglevel=3";

pub const VMLINUX: &str = "vmlinux";
pub const VMLINUZ: &str = "vmlinuz";
pub const INITRD: &str = "initrd.img";
pub const KERNEL_RECORD: &str = "kernel.json";

/// Upper bound for a decompressed kernel: refuses decompression bombs.
const MAX_VMLINUX: u64 = 512 << 20;

/// What the daemon registers for a kernel directory `<kernels>/<name>/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelRecord {
    pub name: String,
    /// `uname -r` of the kernel, e.g. `6.1.0-28-cloud-amd64`.
    pub version: String,
    pub vmlinuz: PathBuf,
    pub initrd: Option<PathBuf>,
    pub vmlinux: Option<PathBuf>,
    pub has_vmlinux: bool,
    /// The ELF carries the Xen PVH entry note (Firecracker then boots it
    /// through PVH).
    pub pvh: bool,
    pub boot_args: String,
}

impl KernelRecord {
    /// Read `<dir>/kernel.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let p = dir.join(KERNEL_RECORD);
        let text = fs::read(&p).ctx("read", &p)?;
        let rec: KernelRecord =
            serde_json::from_slice(&text).map_err(|source| Error::Json { path: p, source })?;
        // Paths are rebuilt from where the directory is now: it was written
        // in a temp dir and renamed.
        Ok(relocate(&rec, dir))
    }
}

/// Compression of a bzImage payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Xz,
    Zstd,
    Lzma,
    /// The legacy LZ4 frame `lz4 -l` writes (Debian's cloud kernel).
    Lz4,
}

/// The result of [`extract_vmlinux`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vmlinux {
    pub elf: Vec<u8>,
    pub compression: Compression,
    pub pvh: bool,
}

fn kerr(path: &Path, reason: impl Into<String>) -> Error {
    Error::Kernel {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..off + 8).map(|s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

/// The version string a bzImage carries in its setup header (boot protocol
/// ≥ 2.00: `kernel_version` at 0x20e points, relative to 0x200, at a NUL
/// terminated string such as "6.1.0-28-cloud-amd64 (debian-kernel@…) #1 …").
/// Returns the first word, i.e. what `uname -r` says. For `kernel register`.
pub fn bzimage_version(bzimage: &Path) -> Result<String> {
    let data = fs::read(bzimage).ctx("read", bzimage)?;
    if data.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        return Err(kerr(bzimage, "not a bzImage (no HdrS setup header)"));
    }
    let ptr = u16_at(&data, 0x20e).unwrap_or(0) as usize;
    let start = ptr + 0x200;
    let text = data
        .get(start..)
        .filter(|_| ptr != 0)
        .and_then(|t| t.split(|b| *b == 0).next())
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .ok_or_else(|| kerr(bzimage, "no kernel_version string in the setup header"))?;
    text.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| kerr(bzimage, "empty kernel_version string"))
}

/// Extract the ELF kernel from a bzImage: the setup header (boot protocol
/// ≥ 2.08) gives the compressed payload's offset and length; the payload is
/// gzip, xz, zstd or lzma.
pub fn extract_vmlinux(bzimage: &Path) -> Result<Vmlinux> {
    let data = fs::read(bzimage).ctx("read", bzimage)?;
    let bad = |r: &str| kerr(bzimage, r.to_string());
    if data.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        return Err(bad("not a bzImage (no HdrS setup header)"));
    }
    let version = u16_at(&data, 0x206).ok_or_else(|| bad("short setup header"))?;
    if version < 0x0208 {
        return Err(kerr(
            bzimage,
            format!("boot protocol {version:#x} is older than 2.08: no payload fields"),
        ));
    }
    let setup_sects = match data[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let pm_start = (setup_sects + 1) * 512;
    let payload_offset = u32_at(&data, 0x248).ok_or_else(|| bad("short setup header"))? as usize;
    let payload_length = u32_at(&data, 0x24c).ok_or_else(|| bad("short setup header"))? as usize;
    let start = pm_start + payload_offset;
    let payload = data
        .get(start..start + payload_length)
        .ok_or_else(|| bad("payload lies outside the file"))?;
    let (compression, elf) = decompress(payload).map_err(|r| kerr(bzimage, r))?;
    if elf.get(0..4) != Some(b"\x7fELF".as_slice()) {
        return Err(bad("decompressed payload is not an ELF file"));
    }
    let pvh = has_pvh_note(&elf);
    Ok(Vmlinux {
        elf,
        compression,
        pvh,
    })
}

fn decompress(payload: &[u8]) -> std::result::Result<(Compression, Vec<u8>), String> {
    let mut out = Vec::new();
    let (c, res) = if payload.starts_with(&[0x1f, 0x8b]) {
        let r = flate2::read::GzDecoder::new(payload);
        (Compression::Gzip, r.take(MAX_VMLINUX).read_to_end(&mut out))
    } else if payload.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        // Single stream: the kernel appends its decompressed size after it.
        let r = xz2::read::XzDecoder::new(payload);
        (Compression::Xz, r.take(MAX_VMLINUX).read_to_end(&mut out))
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let r = zstd::stream::read::Decoder::with_buffer(payload)
            .map_err(|e| e.to_string())?
            .single_frame();
        (Compression::Zstd, r.take(MAX_VMLINUX).read_to_end(&mut out))
    } else if payload.starts_with(&[0x5d, 0x00, 0x00]) {
        let stream =
            xz2::stream::Stream::new_lzma_decoder(MAX_VMLINUX).map_err(|e| e.to_string())?;
        let r = xz2::read::XzDecoder::new_stream(payload, stream);
        (Compression::Lzma, r.take(MAX_VMLINUX).read_to_end(&mut out))
    } else if payload.starts_with(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
        return lz4_legacy(payload).map(|elf| (Compression::Lz4, elf));
    } else {
        let head: Vec<String> = payload.iter().take(6).map(|b| format!("{b:02x}")).collect();
        return Err(format!(
            "unsupported payload compression (magic {}); banger handles gzip, xz, zstd, lzma and lz4",
            head.join(" ")
        ));
    };
    res.map_err(|e| format!("decompressing the {c:?} payload: {e}"))?;
    if out.len() as u64 >= MAX_VMLINUX {
        return Err(format!("decompressed kernel exceeds {MAX_VMLINUX} bytes"));
    }
    Ok((c, out))
}

const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Blocks of the legacy format decompress to at most 8 MiB.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// The legacy LZ4 format: magic, then (u32 compressed length, block)*.
/// The kernel appends its decompressed size after the last block, which
/// reads as a length running past the end: that ends the stream.
fn lz4_legacy(payload: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    let mut pos = 4;
    while let Some(len) = u32_at(payload, pos) {
        if len == LZ4_LEGACY_MAGIC {
            pos += 4;
            continue;
        }
        let start = pos + 4;
        let Some(chunk) = payload.get(start..start + len as usize) else {
            break;
        };
        let n = lz4_flex::block::decompress_into(chunk, &mut block)
            .map_err(|e| format!("decompressing the lz4 payload: {e}"))?;
        out.extend_from_slice(&block[..n]);
        if out.len() as u64 >= MAX_VMLINUX {
            return Err(format!("decompressed kernel exceeds {MAX_VMLINUX} bytes"));
        }
        pos = start + len as usize;
    }
    if out.is_empty() {
        return Err("empty lz4 payload".into());
    }
    Ok(out)
}

/// Whether a 64-bit little-endian ELF has the Xen PVH entry note (type 18,
/// name "Xen") in a PT_NOTE segment.
pub fn has_pvh_note(elf: &[u8]) -> bool {
    const PT_NOTE: u32 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    if elf.get(0..4) != Some(b"\x7fELF".as_slice()) || elf.get(4) != Some(&2) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) =
        (u64_at(elf, 0x20), u16_at(elf, 0x36), u16_at(elf, 0x38))
    else {
        return false;
    };
    for i in 0..phnum as usize {
        let ph = phoff as usize + i * phentsize as usize;
        if u32_at(elf, ph) != Some(PT_NOTE) {
            continue;
        }
        let (Some(off), Some(size)) = (u64_at(elf, ph + 0x08), u64_at(elf, ph + 0x20)) else {
            continue;
        };
        let Some(notes) = elf.get(off as usize..(off as usize).saturating_add(size as usize))
        else {
            continue;
        };
        let mut p = 0usize;
        while p + 12 <= notes.len() {
            let (Some(namesz), Some(descsz), Some(ty)) =
                (u32_at(notes, p), u32_at(notes, p + 4), u32_at(notes, p + 8))
            else {
                break;
            };
            let name_start = p + 12;
            let name = notes.get(name_start..name_start + namesz as usize);
            if ty == XEN_ELFNOTE_PHYS32_ENTRY && name == Some(b"Xen\0".as_slice()) {
                return true;
            }
            let align = |n: u32| (n as usize).div_ceil(4) * 4;
            p = name_start + align(namesz) + align(descsz);
        }
    }
    false
}

/// Find `vmlinuz-<ver>` (and its `initrd.img-<ver>`) in a rootfs `/boot`.
/// Returns (version, vmlinuz, initrd); the newest version if several.
pub fn find_in_tree(root: &Path) -> Result<(String, PathBuf, Option<PathBuf>)> {
    let boot = root.join("boot");
    let mut versions: Vec<String> = fs::read_dir(&boot)
        .ctx("list", &boot)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_string)
        })
        .collect();
    versions.sort();
    let version = versions.pop().ok_or_else(|| {
        kerr(
            &boot,
            "no vmlinuz-* in the tree's /boot (is linux-image-cloud-amd64 installed?)",
        )
    })?;
    let vmlinuz = boot.join(format!("vmlinuz-{version}"));
    let initrd = boot.join(format!("initrd.img-{version}"));
    let initrd = initrd.is_file().then_some(initrd);
    Ok((version, vmlinuz, initrd))
}

/// Lay out a kernel directory: copy `vmlinuz` (+ `initrd.img`), extract
/// `vmlinux`, write `kernel.json`. `dir` is normally a temp dir that the
/// caller renames into place with [`crate::store::install_dir`].
/// What a file given as a kernel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// A compressed x86 bzImage (`vmlinuz`): the setup header's `HdrS`.
    BzImage,
    /// An uncompressed ELF `vmlinux` (x86_64).
    Elf,
}

/// Refuses a file that is not a kernel, before anything is copied:
/// `/etc/passwd` or a text file must not register as one.
pub fn check_kernel_file(path: &Path) -> Result<KernelFormat> {
    let mut head = [0u8; 0x206];
    let mut f = fs::File::open(path).ctx("open", path)?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]).ctx("read", path)? {
            0 => break,
            k => n += k,
        }
    }
    if n >= 20 && head[0..4] == *b"\x7fELF" {
        // ELFCLASS64, e_machine EM_X86_64 (62)
        if head[4] == 2 && u16::from_le_bytes([head[18], head[19]]) == 62 {
            return Ok(KernelFormat::Elf);
        }
        return Err(kerr(path, "an ELF file, but not an x86_64 kernel"));
    }
    if n == head.len() && head[0x202..0x206] == *b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(kerr(
        path,
        "not a Linux kernel (neither a bzImage with the HdrS setup header nor an x86_64 ELF vmlinux); \
         give the vmlinuz-* file from /boot of the system the image comes from",
    ))
}

/// Refuses an initrd that is neither a cpio archive nor a compressed one
/// (gzip, zstd, xz, lzma, lz4, bzip2), as the kernel would.
pub fn check_initrd(path: &Path) -> Result<()> {
    let mut head = [0u8; 6];
    let mut f = fs::File::open(path).ctx("open", path)?;
    let n = f.read(&mut head).ctx("read", path)?;
    let h = &head[..n];
    const MAGICS: &[&[u8]] = &[
        b"070701",
        b"070702",
        b"\x1f\x8b",
        b"\x28\xb5\x2f\xfd",
        b"\xfd7zXZ",
        b"\x5d\x00",
        b"\x02\x21\x4c\x18",
        b"BZh",
    ];
    if MAGICS.iter().any(|m| h.starts_with(m)) {
        Ok(())
    } else {
        Err(kerr(
            path,
            "not an initramfs (a cpio archive, plain or gzip/zstd/xz/lzma/lz4/bzip2-compressed); \
             give the initrd.img-* file that belongs to the kernel",
        ))
    }
}

pub fn write_kernel_dir(
    dir: &Path,
    name: &str,
    version: &str,
    vmlinuz: &Path,
    initrd: Option<&Path>,
) -> Result<KernelRecord> {
    fs::create_dir_all(dir).ctx("create", dir)?;
    let dst_z = dir.join(VMLINUZ);
    fs::copy(vmlinuz, &dst_z).ctx("copy kernel to", &dst_z)?;
    let dst_initrd = match initrd {
        Some(src) => {
            let d = dir.join(INITRD);
            fs::copy(src, &d).ctx("copy initrd to", &d)?;
            Some(d)
        }
        None => None,
    };
    let elf_given = matches!(check_kernel_file(vmlinuz), Ok(KernelFormat::Elf));
    let extracted = if elf_given {
        // Already the ELF Firecracker boots (QEMU boots it too).
        fs::read(vmlinuz)
            .ctx("read", vmlinuz)
            .map(|elf| (has_pvh_note(&elf), elf))
    } else {
        extract_vmlinux(vmlinuz).map(|v| (v.pvh, v.elf))
    };
    let (vmlinux, pvh) = match extracted {
        Ok((pvh, elf)) => {
            let p = dir.join(VMLINUX);
            fs::write(&p, &elf).ctx("write", &p)?;
            (Some(p), pvh)
        }
        Err(e) => {
            // The qemu driver still boots vmlinuz; Firecracker will refuse
            // this kernel with has_vmlinux = false.
            tracing::warn!("no vmlinux for kernel {name}: {e}");
            (None, false)
        }
    };
    let record = KernelRecord {
        name: name.to_string(),
        version: version.to_string(),
        vmlinuz: dst_z,
        initrd: dst_initrd,
        has_vmlinux: vmlinux.is_some(),
        vmlinux,
        pvh,
        boot_args: DEFAULT_FIRECRACKER_BOOT_ARGS.to_string(),
    };
    save_record(dir, &record)?;
    Ok(record)
}

pub(crate) fn save_record(dir: &Path, record: &KernelRecord) -> Result<()> {
    let p = dir.join(KERNEL_RECORD);
    let text = serde_json::to_vec_pretty(record).map_err(|source| Error::Json {
        path: p.clone(),
        source,
    })?;
    fs::write(&p, text).ctx("write", &p)
}

/// Rewrite the paths of a record after its directory was renamed.
pub fn relocate(record: &KernelRecord, new_dir: &Path) -> KernelRecord {
    let mv = |p: &Path| new_dir.join(p.file_name().unwrap_or_default());
    KernelRecord {
        vmlinuz: mv(&record.vmlinuz),
        initrd: record.initrd.as_deref().map(mv),
        vmlinux: record.vmlinux.as_deref().map(mv),
        ..record.clone()
    }
}
