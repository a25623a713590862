//! Test fixtures: a fake but well-formed bzImage (real setup header, real
//! compressed ELF payload with a PVH note), a small ext4 image, a signed
//! bundle built from them.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use banger_image::bundle::{self, BundleOutput};
use banger_image::ext4::{self, Ext4Fixups};
use banger_image::kernel::{self, KernelRecord};
use banger_image::store::{self, ImageManifest, ImageRecord};

pub fn have(tool: &str) -> bool {
    banger_core::host::find_program(tool).is_some()
}

/// Print SKIP and return true when e2fsprogs is missing.
pub fn skip_without_e2fsprogs() -> bool {
    for t in ["mkfs.ext4", "debugfs", "e2fsck"] {
        if !have(t) {
            eprintln!("SKIP: {t} not found (apt-get install e2fsprogs)");
            return true;
        }
    }
    false
}

/// A minimal ELF64 with one PT_NOTE segment; with `pvh` the note is the
/// Xen PVH entry (type 18, name "Xen").
pub fn fake_elf(pvh: bool) -> Vec<u8> {
    let mut e = vec![0u8; 0x40];
    e[0..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // 64-bit
    e[5] = 1; // little endian
    e[6] = 1;
    e[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // x86_64
    e[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes()); // phoff
    e[0x34..0x36].copy_from_slice(&0x40u16.to_le_bytes()); // ehsize
    e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // phnum
    // Note: an unrelated "GNU" note first, then (maybe) Xen type 18.
    let mut notes = Vec::new();
    let mut note = |name: &[u8], ty: u32, desc: &[u8]| {
        notes.extend_from_slice(&(name.len() as u32).to_le_bytes());
        notes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        notes.extend_from_slice(&ty.to_le_bytes());
        notes.extend_from_slice(name);
        while notes.len() % 4 != 0 {
            notes.push(0);
        }
        notes.extend_from_slice(desc);
        while notes.len() % 4 != 0 {
            notes.push(0);
        }
    };
    note(b"GNU\0", 3, &[1, 2, 3, 4, 5, 6, 7, 8]);
    note(
        b"Xen\0",
        if pvh { 18 } else { 17 },
        &0x100_0000u32.to_le_bytes(),
    );
    let note_off = 0x40 + 56;
    let mut ph = vec![0u8; 56];
    ph[0..4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
    ph[0x08..0x10].copy_from_slice(&(note_off as u64).to_le_bytes());
    ph[0x20..0x28].copy_from_slice(&(notes.len() as u64).to_le_bytes());
    ph[0x28..0x30].copy_from_slice(&(notes.len() as u64).to_le_bytes());
    e.extend_from_slice(&ph);
    e.extend_from_slice(&notes);
    // Some body so the compressors have something to chew on.
    e.extend((0..64 * 1024u32).map(|i| (i % 251) as u8));
    e
}

#[derive(Clone, Copy, Debug)]
pub enum Comp {
    Gzip,
    Xz,
    Zstd,
    Lz4,
}

/// A bzImage with boot protocol 2.15 whose payload is `elf` compressed,
/// followed by the 4-byte size the kernel appends.
pub fn fake_bzimage(elf: &[u8], comp: Comp) -> Vec<u8> {
    let payload = match comp {
        Comp::Gzip => {
            let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            w.write_all(elf).expect("gzip");
            w.finish().expect("gzip")
        }
        Comp::Xz => {
            let mut w = xz2::write::XzEncoder::new(Vec::new(), 6);
            w.write_all(elf).expect("xz");
            w.finish().expect("xz")
        }
        Comp::Zstd => zstd::encode_all(elf, 3).expect("zstd"),
        Comp::Lz4 => {
            // Legacy frame (`lz4 -l`): magic, then length-prefixed blocks
            // of at most 8 MiB input; small blocks here to exercise several.
            let mut v = 0x184c_2102u32.to_le_bytes().to_vec();
            for chunk in elf.chunks(16 * 1024) {
                let c = lz4_flex::block::compress(chunk);
                v.extend_from_slice(&(c.len() as u32).to_le_bytes());
                v.extend_from_slice(&c);
            }
            v
        }
    };
    let setup_sects = 3usize;
    let pm_start = (setup_sects + 1) * 512;
    let decompressor_stub = 0x200usize; // bytes before the payload
    let mut img = vec![0u8; pm_start + decompressor_stub];
    img[0x1f1] = setup_sects as u8;
    img[0x1fe] = 0x55;
    img[0x1ff] = 0xaa;
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x248..0x24c].copy_from_slice(&(decompressor_stub as u32).to_le_bytes());
    img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    img.extend_from_slice(&payload);
    img.extend_from_slice(&(elf.len() as u32).to_le_bytes());
    img
}

/// A small ext4 image with a few files, e2fsck-clean.
pub fn small_ext4(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    fs::create_dir_all(tree.join("etc")).expect("mkdir");
    fs::write(tree.join("etc/hostname"), "test\n").expect("write");
    // Incompressible content so truncation/oversize tests have real bytes.
    let noise: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(tree.join("noise.bin"), noise).expect("write");
    let img = dir.join("rootfs.ext4");
    ext4::make_ext4(&tree, &img, 16 << 20, &Ext4Fixups::new()).expect("make_ext4");
    img
}

pub struct Fixture {
    pub _tmp: tempfile::TempDir,
    pub bundle: BundleOutput,
    /// The directory the server serves; the bundle is `<served>/b`.
    pub served: PathBuf,
    pub key: ed25519_dalek::SigningKey,
    pub image_sha256: String,
}

/// Build a small image + fake kernel, install them in a scratch store and
/// bundle them with a fresh key into `<served>/b`.
pub fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path().join("work");
    fs::create_dir_all(&work).expect("mkdir");
    let rootfs = small_ext4(&work);
    let image_sha256 = store::sha256_file(&rootfs).expect("hash");
    let bz = work.join("vmlinuz");
    fs::write(&bz, fake_bzimage(&fake_elf(true), Comp::Xz)).expect("write");
    let initrd = work.join("initrd.img");
    fs::write(&initrd, b"fake initrd").expect("write");
    let images = tmp.path().join("src-store/images");
    let kernels = tmp.path().join("src-store/kernels");
    let krec: KernelRecord =
        store::install_kernel(&kernels, "test-kernel-1", "6.1.0-test", &bz, Some(&initrd))
            .expect("install kernel");
    assert!(krec.has_vmlinux && krec.pvh);
    let img: ImageRecord = store::install_image(
        &images,
        &rootfs,
        ImageManifest {
            name: "test-image".into(),
            version: "1".into(),
            arch: "x86_64".into(),
            sha256: String::new(),
            size: ext4::FileSize {
                apparent: 0,
                allocated: 0,
            },
            kernel: krec.name.clone(),
            boot_args: kernel::DEFAULT_FIRECRACKER_BOOT_ARGS.into(),
            source: "test".into(),
            created: 0,
        },
    )
    .expect("install image");
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let served = tmp.path().join("served");
    fs::create_dir_all(&served).expect("mkdir");
    let bundle = bundle::bundle(&img, &krec, &key, &served.join("b")).expect("bundle");
    Fixture {
        _tmp: tmp,
        bundle,
        served,
        key,
        image_sha256,
    }
}

/// Names of everything under `dir` (recursively), for "nothing left" checks.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap_or(&p).display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// File names in an initramfs: concatenated newc cpio archives, each plain
/// or compressed (zstd/gzip/xz), as initramfs-tools writes them.
pub fn initrd_listing(data: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = data;
    loop {
        while let Some((&0, tail)) = rest.split_first() {
            rest = tail;
        }
        if rest.is_empty() {
            break;
        }
        if rest.starts_with(b"070701") {
            rest = parse_cpio(rest, &mut names);
            continue;
        }
        use std::io::Read;
        let mut out = Vec::new();
        if rest.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            zstd::stream::read::Decoder::new(rest)
                .expect("zstd")
                .read_to_end(&mut out)
                .expect("zstd initrd");
        } else if rest.starts_with(&[0x1f, 0x8b]) {
            flate2::read::GzDecoder::new(rest)
                .read_to_end(&mut out)
                .expect("gzip initrd");
        } else if rest.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            xz2::read::XzDecoder::new(rest)
                .read_to_end(&mut out)
                .expect("xz initrd");
        } else {
            panic!(
                "unknown initrd segment starting {:02x?}",
                &rest[..rest.len().min(8)]
            );
        }
        let mut tail = out.as_slice();
        while tail.starts_with(b"070701") {
            tail = parse_cpio(tail, &mut names);
            while let Some((&0, t)) = tail.split_first() {
                tail = t;
            }
        }
        break; // the compressed archive is the last segment
    }
    names
}

fn parse_cpio<'a>(mut d: &'a [u8], names: &mut Vec<String>) -> &'a [u8] {
    let hex = |b: &[u8]| {
        u32::from_str_radix(std::str::from_utf8(b).expect("hex"), 16).expect("hex") as usize
    };
    let pad = |n: usize| (4 - n % 4) % 4;
    while d.len() >= 110 && d.starts_with(b"070701") {
        let filesize = hex(&d[54..62]);
        let namesize = hex(&d[94..102]);
        let name = String::from_utf8_lossy(&d[110..110 + namesize - 1]).into_owned();
        let mut off = 110 + namesize;
        off += pad(off);
        off += filesize;
        off += pad(off);
        d = &d[off.min(d.len())..];
        if name == "TRAILER!!!" {
            break;
        }
        names.push(name);
    }
    d
}
