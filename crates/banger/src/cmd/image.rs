//! `banger image …` and `banger kernel …`.

use std::process::ExitCode;

use anyhow::bail;
use banger_core::size::format_size;
use banger_proto::{ImageInfo, KernelInfo};

use crate::cli::{ImageCommand, KernelCommand};
use crate::client::Client;
use crate::output;

/// The daemon resolves paths itself; relative ones would mean its cwd.
fn absolute(p: &std::path::Path) -> anyhow::Result<String> {
    let abs = std::fs::canonicalize(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    Ok(abs.display().to_string())
}

fn short_digest(d: &str) -> String {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    hex.chars().take(12).collect()
}

pub async fn run_image(client: &Client, c: ImageCommand) -> anyhow::Result<ExitCode> {
    match c {
        ImageCommand::List(j) => {
            let images: Vec<ImageInfo> = client.get("/v1/images").await?;
            if j.json {
                output::print_json(&images)?;
            } else if images.is_empty() {
                println!(
                    "No images. Fetch one with `banger image pull debian-bookworm` or build it with `banger image build`."
                );
            } else {
                output::print_table(
                    &["NAME", "DIGEST", "KERNEL", "SIZE", "ORIGIN", "CREATED"],
                    &images
                        .iter()
                        .map(|i| {
                            vec![
                                i.name.clone(),
                                short_digest(&i.digest),
                                i.kernel.clone(),
                                format_size(i.size_bytes),
                                i.origin.clone(),
                                output::age(i.created_at),
                            ]
                        })
                        .collect::<Vec<_>>(),
                );
            }
        }
        ImageCommand::Show(a) => {
            let i: ImageInfo = client.get(&format!("/v1/images/{}", a.name)).await?;
            if a.json.json {
                output::print_json(&i)?;
            } else {
                println!(
                    "name     {}\ndigest   {}\nkernel   {}\nsize     {}\norigin   {}\ncreated  {}",
                    i.name,
                    i.digest,
                    i.kernel,
                    format_size(i.size_bytes),
                    i.origin,
                    output::age(i.created_at)
                );
            }
        }
        ImageCommand::Delete(n) => {
            let i: ImageInfo = client.delete(&format!("/v1/images/{}", n.name)).await?;
            println!("deleted image {}", i.name);
        }
        ImageCommand::Pull(_) => bail!("`banger image pull` is not available in this build yet"),
        ImageCommand::Build(a) => {
            let profile = match a.profile {
                crate::cli::Profile::Full => "full",
                crate::cli::Profile::Minimal => "minimal",
            };
            eprintln!(
                "building image {} (profile {profile}) with mmdebstrap; this takes a few minutes",
                a.name
            );
            let i: ImageInfo = client
                .post(
                    "/v1/images/build",
                    &banger_proto::BuildImageRequest {
                        name: a.name,
                        profile: profile.into(),
                        mirror: a.mirror,
                    },
                )
                .await?;
            println!(
                "built image {} ({}, {})",
                i.name,
                short_digest(&i.digest),
                format_size(i.size_bytes)
            );
        }
        ImageCommand::Register(a) => {
            let rootfs = absolute(&a.rootfs)?;
            let i: ImageInfo = client
                .post(
                    "/v1/images/register",
                    &banger_proto::RegisterImageRequest {
                        name: a.name,
                        rootfs,
                        kernel: a.kernel,
                    },
                )
                .await?;
            println!("registered image {} ({})", i.name, short_digest(&i.digest));
        }
        ImageCommand::Bundle(_) => {
            bail!("`banger image bundle` is not available in this build yet")
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run_kernel(client: &Client, c: KernelCommand) -> anyhow::Result<ExitCode> {
    match c {
        KernelCommand::List(j) => {
            let ks: Vec<KernelInfo> = client.get("/v1/kernels").await?;
            if j.json {
                output::print_json(&ks)?;
            } else if ks.is_empty() {
                println!(
                    "No kernels. They come with images (`banger image pull`), or `banger kernel register`."
                );
            } else {
                output::print_table(
                    &["NAME", "VERSION", "VMLINUX", "PVH", "CREATED"],
                    &ks.iter()
                        .map(|k| {
                            vec![
                                k.name.clone(),
                                k.version.clone(),
                                if k.has_vmlinux { "yes" } else { "no" }.into(),
                                if k.pvh { "yes" } else { "no" }.into(),
                                output::age(k.created_at),
                            ]
                        })
                        .collect::<Vec<_>>(),
                );
            }
        }
        KernelCommand::Delete(n) => {
            let k: KernelInfo = client.delete(&format!("/v1/kernels/{}", n.name)).await?;
            println!("deleted kernel {}", k.name);
        }
        KernelCommand::Pull(_) => bail!("`banger kernel pull` is not available in this build yet"),
        KernelCommand::Register(a) => {
            let k: KernelInfo = client
                .post(
                    "/v1/kernels/register",
                    &banger_proto::RegisterKernelRequest {
                        name: a.name,
                        vmlinuz: absolute(&a.vmlinuz)?,
                        initrd: Some(absolute(&a.initrd)?),
                    },
                )
                .await?;
            println!(
                "registered kernel {} (vmlinux: {})",
                k.name,
                if k.has_vmlinux { "yes" } else { "no" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
