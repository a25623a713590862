//! `banger image pull`: fetch a catalog bundle over HTTP(S), verify it
//! (pin, signature, sizes, digests) and install it atomically.
//!
//! Order of trust: the manifest's sha256 must equal the catalog's pin, then
//! its signature must verify with the catalog's key; only then are file
//! names, sizes and digests from it believed. Each file is downloaded into
//! `<downloads>/<compressed sha256>.zst.part` (resumed with HTTP Range when
//! a connection drops), capped at its declared size, hashed while
//! streaming, then decompressed into a temp dir beside the store (size and
//! sha256 checked again) and renamed into place. On any failure the temp
//! dirs and `.part` files of this pull are removed and nothing is
//! installed. A `.part` left by a killed process is resumed by the next
//! pull of the same file.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::bundle::{self, BundleFile, BundleManifest, MANIFEST, SIGNATURE};
use crate::catalog::CatalogEntry;
use crate::error::{Error, IoContext, Result};
use crate::kernel::{self, INITRD, KernelRecord, VMLINUX, VMLINUZ};
use crate::store::{self, ImageManifest, ImageRecord, Installed, ROOTFS, SparseWriter};

/// Where a pull puts things and how it reports progress.
pub struct PullOptions<'a> {
    pub images_dir: PathBuf,
    pub kernels_dir: PathBuf,
    pub downloads_dir: PathBuf,
    /// Called often during downloads; the CLI draws its bar from it.
    pub progress: Option<&'a mut dyn FnMut(&Progress)>,
    /// Connection attempts per file (resuming with Range after the first).
    pub max_attempts: u32,
    /// Per-read timeout: a stalled server fails the attempt.
    pub read_timeout: Duration,
}

impl<'a> PullOptions<'a> {
    pub fn new(images_dir: PathBuf, kernels_dir: PathBuf, downloads_dir: PathBuf) -> Self {
        PullOptions {
            images_dir,
            kernels_dir,
            downloads_dir,
            progress: None,
            max_attempts: 4,
            read_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Download,
    Decompress,
    Install,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    pub file: String,
    /// Bytes of this file so far (compressed while downloading).
    pub done: u64,
    pub total: u64,
    /// Over all files of the bundle (compressed bytes).
    pub all_done: u64,
    pub all_total: u64,
}

/// What a successful pull installed.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub image: ImageRecord,
    pub kernel: KernelRecord,
    pub manifest: BundleManifest,
    /// Bytes received over the network (less than the bundle when resumed).
    pub bytes_downloaded: u64,
    /// How many times a dropped connection was resumed with Range.
    pub resumes: u32,
    pub elapsed: Duration,
}

/// Pull `entry` into the store. See the module docs for the checks.
pub fn pull(entry: &CatalogEntry, mut opts: PullOptions<'_>) -> Result<Pulled> {
    let start = Instant::now();
    let pin = entry.pin()?.to_ascii_lowercase();
    let key = bundle::parse_public_key(&entry.public_key)?;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(opts.read_timeout)
        .build();

    let manifest_url = entry.file_url(MANIFEST);
    let manifest_bytes = get_small(&agent, &manifest_url, bundle::MAX_MANIFEST_BYTES)?;
    let actual = bundle::sha256_hex(&manifest_bytes);
    if actual != pin {
        return Err(Error::PinMismatch {
            expected: pin,
            actual,
        });
    }
    let sig = get_small(&agent, &entry.file_url(SIGNATURE), 4096)?;
    bundle::verify(&manifest_bytes, &String::from_utf8_lossy(&sig), &key)?;
    let manifest = BundleManifest::parse(&manifest_bytes)?;

    fs::create_dir_all(&opts.downloads_dir).ctx("create", &opts.downloads_dir)?;
    let mut parts = PartGuard(Vec::new());
    let all_total: u64 = manifest.files.iter().map(|f| f.compressed_size).sum();
    let mut all_done = 0u64;
    let mut stats = (0u64, 0u32);
    let mut noop = |_: &Progress| {};
    let progress: &mut dyn FnMut(&Progress) = match opts.progress.take() {
        Some(p) => p,
        None => &mut noop,
    };
    for f in &manifest.files {
        let part = opts
            .downloads_dir
            .join(format!("{}.zst.part", f.compressed_sha256));
        parts.0.push(part.clone());
        let url = entry.file_url(&format!("{}.zst", f.path));
        let mut dl = Download {
            agent: &agent,
            url: &url,
            part: &part,
            file: f,
            progress: &mut *progress,
            all_done,
            all_total,
            received: 0,
        };
        let resumes = dl.run(opts.max_attempts)?;
        stats.0 += dl.received;
        stats.1 += resumes;
        all_done += f.compressed_size;
    }

    // Everything downloaded and verified: decompress into temp dirs beside
    // the store so the final renames are atomic.
    let img_tmp = store::temp_dir_in(&opts.images_dir)?;
    let ker_tmp = store::temp_dir_in(&opts.kernels_dir)?;
    let part_of = |f: &BundleFile| {
        opts.downloads_dir
            .join(format!("{}.zst.part", f.compressed_sha256))
    };
    let rootfs_file = manifest
        .file(ROOTFS)
        .ok_or_else(|| Error::Manifest("no rootfs".into()))?;
    let mut report = |file: &BundleFile, phase: Phase| {
        progress(&Progress {
            phase,
            file: file.path.clone(),
            done: 0,
            total: file.size,
            all_done: all_total,
            all_total,
        });
    };
    report(rootfs_file, Phase::Decompress);
    decompress_verified(
        &part_of(rootfs_file),
        rootfs_file,
        &img_tmp.path().join(ROOTFS),
    )?;
    let k = &manifest.kernel;
    let mut kfiles: Vec<(&BundleFile, &str)> = Vec::new();
    let lookup = |n: &str| {
        manifest
            .file(n)
            .ok_or_else(|| Error::Manifest(format!("missing {n}")))
    };
    kfiles.push((lookup(&k.vmlinuz)?, VMLINUZ));
    if let Some(i) = &k.initrd {
        kfiles.push((lookup(i)?, INITRD));
    }
    if let Some(v) = &k.vmlinux {
        kfiles.push((lookup(v)?, VMLINUX));
    }
    for (f, dst) in &kfiles {
        report(f, Phase::Decompress);
        decompress_verified(&part_of(f), f, &ker_tmp.path().join(dst))?;
    }
    report(rootfs_file, Phase::Install);

    // Kernel record from what is really there.
    let kdir_final = opts.kernels_dir.join(&k.name);
    let vmlinux = k.vmlinux.as_ref().map(|_| kdir_final.join(VMLINUX));
    let pvh = match &k.vmlinux {
        Some(_) => {
            let elf =
                fs::read(ker_tmp.path().join(VMLINUX)).ctx("read", ker_tmp.path().join(VMLINUX))?;
            if elf.get(0..4) != Some(b"\x7fELF".as_slice()) {
                return Err(Error::Manifest(
                    "bundle's vmlinux is not an ELF file".into(),
                ));
            }
            kernel::has_pvh_note(&elf)
        }
        None => false,
    };
    let krec = KernelRecord {
        name: k.name.clone(),
        version: k.version.clone(),
        vmlinuz: kdir_final.join(VMLINUZ),
        initrd: k.initrd.as_ref().map(|_| kdir_final.join(INITRD)),
        has_vmlinux: vmlinux.is_some(),
        vmlinux,
        pvh,
        boot_args: manifest.boot_args.clone(),
    };
    kernel::save_record(ker_tmp.path(), &krec)?;
    let img_manifest = ImageManifest {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        arch: manifest.arch.clone(),
        sha256: rootfs_file.sha256.clone(),
        size: crate::ext4::FileSize::of(&img_tmp.path().join(ROOTFS))?,
        kernel: k.name.clone(),
        boot_args: manifest.boot_args.clone(),
        source: format!("bundle:{}", entry.url),
        created: store::now(),
    };
    store::write_json(&img_tmp.path().join(store::IMAGE_MANIFEST), &img_manifest)?;

    // A kernel of the same name must be the same kernel.
    if kdir_final.exists() {
        let have = store::sha256_file(&kdir_final.join(VMLINUZ)).ok();
        let want = lookup(&k.vmlinuz)?.sha256.clone();
        if have.as_deref() != Some(want.as_str()) {
            return Err(Error::Manifest(format!(
                "a different kernel named {:?} is already installed; delete it (banger kernel delete) and pull again",
                k.name
            )));
        }
    }
    let kernel_new = store::install_dir(ker_tmp, &kdir_final)? == Installed::New;
    let img_dir = opts.images_dir.join(&rootfs_file.sha256);
    if let Err(e) = store::install_dir(img_tmp, &img_dir) {
        if kernel_new {
            let _ = fs::remove_dir_all(&kdir_final);
        }
        return Err(e);
    }
    // The compressed downloads are no longer needed.
    drop(parts);
    Ok(Pulled {
        image: ImageRecord::load(&img_dir)?,
        kernel: KernelRecord::load(&kdir_final)?,
        manifest,
        bytes_downloaded: stats.0,
        resumes: stats.1,
        elapsed: start.elapsed(),
    })
}

/// Removes this pull's `.part` files however it ends (success: no longer
/// needed; failure: nothing left behind).
struct PartGuard(Vec<PathBuf>);
impl Drop for PartGuard {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

fn transport(url: &str, e: impl std::fmt::Display) -> Error {
    Error::Download {
        url: url.to_string(),
        reason: e.to_string(),
    }
}

fn call(req: ureq::Request, url: &str) -> Result<ureq::Response> {
    match req.call() {
        Ok(r) => Ok(r),
        Err(ureq::Error::Status(code, r)) => Err(transport(
            url,
            format!("server answered {code} {}", r.status_text()),
        )),
        Err(e) => Err(transport(url, e)),
    }
}

/// GET a small document, refusing more than `max` bytes.
fn get_small(agent: &ureq::Agent, url: &str, max: u64) -> Result<Vec<u8>> {
    let resp = call(agent.get(url), url)?;
    let mut buf = Vec::new();
    resp.into_reader()
        .take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| transport(url, e))?;
    if buf.len() as u64 > max {
        return Err(transport(url, format!("larger than {max} bytes; refusing")));
    }
    Ok(buf)
}

struct Download<'a> {
    agent: &'a ureq::Agent,
    url: &'a str,
    part: &'a Path,
    file: &'a BundleFile,
    progress: &'a mut dyn FnMut(&Progress),
    all_done: u64,
    all_total: u64,
    received: u64,
}

enum Attempt {
    Done,
    /// The connection failed mid-way: try again from where the file ends.
    Retry(String),
}

impl Download<'_> {
    /// Download with resume; returns how many resumes it took.
    fn run(&mut self, max_attempts: u32) -> Result<u32> {
        let mut resumes = 0;
        let mut last = String::new();
        for attempt in 0..max_attempts.max(1) {
            match self.attempt()? {
                Attempt::Done => return Ok(resumes),
                Attempt::Retry(why) => {
                    tracing::warn!(
                        url = self.url,
                        attempt,
                        "download interrupted: {why}; resuming"
                    );
                    last = why;
                    resumes += 1;
                }
            }
        }
        Err(transport(
            self.url,
            format!("gave up after {max_attempts} attempts: {last}"),
        ))
    }

    fn attempt(&mut self) -> Result<Attempt> {
        let name = format!("{}.zst", self.file.path);
        let declared = self.file.compressed_size;
        let mut have = fs::metadata(self.part).map(|m| m.len()).unwrap_or(0);
        if have > declared {
            fs::remove_file(self.part).ctx("remove", self.part)?;
            have = 0;
        }
        let mut hash = Sha256::new();
        if have > 0 {
            // Resuming: the digest covers the whole file.
            let mut f = fs::File::open(self.part).ctx("open", self.part)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut left = have;
            while left > 0 {
                let n = f.read(&mut buf).ctx("read", self.part)?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                left = left.saturating_sub(n as u64);
            }
        }
        if have < declared {
            let mut req = self.agent.get(self.url);
            if have > 0 {
                req = req.set("Range", &format!("bytes={have}-"));
            }
            let resp = match req.call() {
                Ok(r) => r,
                Err(ureq::Error::Status(416, _)) => {
                    // Our .part does not fit the server's file: start over.
                    fs::remove_file(self.part).ctx("remove", self.part)?;
                    return Ok(Attempt::Retry("server refused the range".into()));
                }
                Err(ureq::Error::Status(code, r)) => {
                    return Err(transport(
                        self.url,
                        format!("server answered {code} {}", r.status_text()),
                    ));
                }
                Err(e) => return Ok(Attempt::Retry(e.to_string())),
            };
            let mut out = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.part)
                .ctx("open", self.part)?;
            if have > 0 && resp.status() != 206 {
                // Server ignored the Range: the body is the whole file.
                out.set_len(0).ctx("truncate", self.part)?;
                out.seek(SeekFrom::Start(0)).ctx("seek", self.part)?;
                have = 0;
                hash = Sha256::new();
            }
            let mut reader = resp.into_reader();
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        out.sync_data().ctx("sync", self.part)?;
                        return Ok(Attempt::Retry(e.to_string()));
                    }
                };
                if have + n as u64 > declared {
                    return Err(Error::Oversized {
                        file: name,
                        declared,
                    });
                }
                out.write_all(&buf[..n]).ctx("write", self.part)?;
                hash.update(&buf[..n]);
                have += n as u64;
                self.received += n as u64;
                (self.progress)(&Progress {
                    phase: Phase::Download,
                    file: self.file.path.clone(),
                    done: have,
                    total: declared,
                    all_done: self.all_done + have,
                    all_total: self.all_total,
                });
            }
            out.sync_data().ctx("sync", self.part)?;
        }
        if have < declared {
            return Err(Error::Truncated {
                file: name,
                got: have,
                declared,
            });
        }
        let actual = hex::encode(hash.finalize());
        if actual != self.file.compressed_sha256 {
            return Err(Error::Mismatch {
                file: name,
                what: "sha256",
                expected: self.file.compressed_sha256.clone(),
                actual,
            });
        }
        Ok(Attempt::Done)
    }
}

/// Decompress a verified download, checking the uncompressed size (never
/// writing more than declared) and sha256. Disk images are written sparse.
fn decompress_verified(part: &Path, file: &BundleFile, dst: &Path) -> Result<()> {
    let input = fs::File::open(part).ctx("open", part)?;
    let mut dec = zstd::stream::read::Decoder::new(input)
        .ctx("decompress", part)?
        .take(file.size + 1);
    let mut out = SparseWriter::create(dst)?;
    let mut hash = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = dec.read(&mut buf).map_err(|e| Error::Mismatch {
            file: file.path.clone(),
            what: "zstd stream",
            expected: "valid zstd data".into(),
            actual: e.to_string(),
        })?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > file.size {
            return Err(Error::Oversized {
                file: file.path.clone(),
                declared: file.size,
            });
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n]).ctx("write", dst)?;
    }
    out.finish()?;
    if total != file.size {
        return Err(Error::Mismatch {
            file: file.path.clone(),
            what: "uncompressed size",
            expected: file.size.to_string(),
            actual: total.to_string(),
        });
    }
    let actual = hex::encode(hash.finalize());
    if actual != file.sha256 {
        return Err(Error::Mismatch {
            file: file.path.clone(),
            what: "uncompressed sha256",
            expected: file.sha256.clone(),
            actual,
        });
    }
    Ok(())
}
