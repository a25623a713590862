//! A small driver for the banger-image library, for the bench script and
//! for maintainers before the `banger` CLI wires it in:
//!
//! ```text
//! image-tool build --profile minimal|full --out DIR [--name N] [--mirror URL]
//!                  [--agent BIN --agent-unit FILE] [--size BYTES]
//! image-tool keygen SECRET_FILE PUBLIC_FILE
//! image-tool bundle BUILT_DIR --key SECRET_FILE --out DIR
//! image-tool serve DIR PORT                   (127.0.0.1 only; Ctrl-C to stop)
//! image-tool pull NAME --catalog FILE --store DIR
//! image-tool vmlinux BZIMAGE OUT
//! image-tool write IMAGE GUEST_PATH HOST_FILE OCTAL_PERM   (debugfs, no mount)
//! ```
//! Each prints one JSON object with what it did and how long it took.

#[path = "../tests/it/server.rs"]
mod server;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use banger_image::build::{self, AgentPayload, BuildOptions, BuiltImage, Profile};
use banger_image::catalog::Catalog;
use banger_image::store::ImageRecord;
use banger_image::{bundle, kernel, pull};

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn need(args: &[String], name: &str) -> Result<String, String> {
    flag(args, name).ok_or_else(|| format!("missing {name}"))
}

fn run(args: Vec<String>) -> Result<serde_json::Value, String> {
    let cmd = args.first().cloned().unwrap_or_default();
    let rest = &args[1.min(args.len())..];
    let e = |e: banger_image::Error| e.to_string();
    let t = Instant::now();
    match cmd.as_str() {
        "build" => {
            let profile: Profile = flag(rest, "--profile")
                .unwrap_or_else(|| "minimal".into())
                .parse()
                .map_err(e)?;
            let name = flag(rest, "--name").unwrap_or_else(|| "debian-bookworm".into());
            let mut o = BuildOptions::new(name, profile, PathBuf::from(need(rest, "--out")?));
            if let Some(m) = flag(rest, "--mirror") {
                o.mirror = m;
            }
            if let Some(s) = flag(rest, "--size") {
                o.size = Some(s.parse().map_err(|_| "bad --size".to_string())?);
            }
            if let Some(bin) = flag(rest, "--agent") {
                let unit_path = need(rest, "--agent-unit")?;
                let unit =
                    std::fs::read_to_string(&unit_path).map_err(|x| format!("{unit_path}: {x}"))?;
                o.agent = Some(AgentPayload {
                    binary: bin.into(),
                    unit,
                });
            }
            let b = build::build_image(&o).map_err(e)?;
            let size = b.size().map_err(e)?;
            Ok(serde_json::json!({
                "dir": b.dir, "seconds": t.elapsed().as_secs_f64(),
                "stages": b.build.stages, "mode": b.build.mode,
                "apparent_bytes": size.apparent, "allocated_bytes": size.allocated,
                "kernel": b.kernel.version, "pvh": b.kernel.pvh, "has_vmlinux": b.kernel.has_vmlinux,
            }))
        }
        "keygen" => {
            let (s, p) = (
                rest.first().ok_or("missing SECRET_FILE")?,
                rest.get(1).ok_or("missing PUBLIC_FILE")?,
            );
            let vk = bundle::generate_key(s.as_ref(), p.as_ref()).map_err(e)?;
            Ok(serde_json::json!({ "public_key": bundle::public_key_base64(&vk) }))
        }
        "bundle" => {
            let dir = PathBuf::from(rest.first().ok_or("missing BUILT_DIR")?);
            let b = BuiltImage::load(&dir).map_err(e)?;
            let key = bundle::load_signing_key(need(rest, "--key")?.as_ref()).map_err(e)?;
            let img = ImageRecord {
                dir: b.dir.clone(),
                rootfs: b.rootfs.clone(),
                manifest: b.manifest.clone(),
            };
            let out =
                bundle::bundle(&img, &b.kernel, &key, need(rest, "--out")?.as_ref()).map_err(e)?;
            Ok(serde_json::json!({
                "dir": out.dir, "manifest_sha256": out.manifest_sha256,
                "public_key": out.public_key, "seconds": t.elapsed().as_secs_f64(),
                "files": out.manifest.files,
            }))
        }
        "serve" => {
            let dir = PathBuf::from(rest.first().ok_or("missing DIR")?);
            let port: u16 = rest
                .get(1)
                .ok_or("missing PORT")?
                .parse()
                .map_err(|_| "bad PORT")?;
            let s = server::FileServer::start_on(dir, port);
            println!("{}", serde_json::json!({ "addr": s.addr.to_string() }));
            loop {
                std::thread::park();
            }
        }
        "pull" => {
            let name = rest.first().ok_or("missing NAME")?;
            let cat = Catalog::load(need(rest, "--catalog")?.as_ref()).map_err(e)?;
            let entry = cat.find(name).map_err(e)?;
            let store = PathBuf::from(need(rest, "--store")?);
            let opts = pull::PullOptions::new(
                store.join("images"),
                store.join("kernels"),
                store.join("downloads"),
            );
            let p = pull::pull(entry, opts).map_err(e)?;
            let secs = p.elapsed.as_secs_f64();
            let compressed: u64 = p.manifest.files.iter().map(|f| f.compressed_size).sum();
            let raw: u64 = p.manifest.files.iter().map(|f| f.size).sum();
            Ok(serde_json::json!({
                "image": p.image.dir, "kernel": p.kernel.name, "seconds": secs,
                "compressed_bytes": compressed, "uncompressed_bytes": raw,
                "mb_per_s_uncompressed": raw as f64 / secs / 1e6, "resumes": p.resumes,
            }))
        }
        "vmlinux" => {
            let src = PathBuf::from(rest.first().ok_or("missing BZIMAGE")?);
            let dst = PathBuf::from(rest.get(1).ok_or("missing OUT")?);
            let v = kernel::extract_vmlinux(&src).map_err(e)?;
            std::fs::write(&dst, &v.elf).map_err(|x| format!("{}: {x}", dst.display()))?;
            Ok(
                serde_json::json!({ "compression": v.compression, "pvh": v.pvh, "bytes": v.elf.len() }),
            )
        }
        "write" => {
            let [img, guest, host, perm] = rest else {
                return Err("usage: image-tool write IMAGE GUEST_PATH HOST_FILE OCTAL_PERM".into());
            };
            let contents = std::fs::read(host).map_err(|x| format!("{host}: {x}"))?;
            let perm = u32::from_str_radix(perm, 8).map_err(|_| "bad OCTAL_PERM")?;
            banger_image::ext4::write_files(
                img.as_ref(),
                &[banger_image::GuestEntry::file(guest.clone(), contents, perm)],
            )
            .map_err(e)?;
            Ok(serde_json::json!({ "written": guest }))
        }
        _ => Err(
            "usage: image-tool build|keygen|bundle|serve|pull|vmlinux|write … (see the source header)"
                .into(),
        ),
    }
}

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("image-tool: {msg}");
            ExitCode::FAILURE
        }
    }
}
