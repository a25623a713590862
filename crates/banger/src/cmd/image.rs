//! `banger image …` and `banger kernel …`.

use std::process::ExitCode;

use anyhow::bail;
use banger_core::size::format_size;
use banger_proto::{ImageInfo, KernelInfo, PullEvent};

use crate::api_path;
use crate::cli::{ImageCommand, KernelCommand};
use crate::client::{Client, ClientError};
use crate::output;
use crate::terminal::ProgressView;

/// The daemon resolves paths itself; relative ones would mean its cwd.
fn absolute(p: &std::path::Path) -> anyhow::Result<String> {
    let abs = std::fs::canonicalize(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    Ok(abs.display().to_string())
}

/// An absolute path for a file the daemon will create: the parent must
/// exist, the path itself not.
fn absolute_new(p: &std::path::Path) -> anyhow::Result<String> {
    let name = p
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{}: not a file or directory name", p.display()))?;
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let parent =
        std::fs::canonicalize(parent).map_err(|e| anyhow::anyhow!("{}: {e}", parent.display()))?;
    let full = parent.join(name);
    if full.exists() {
        bail!(
            "{} already exists; choose a new --out directory",
            full.display()
        );
    }
    Ok(full.display().to_string())
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
                outln!(
                    "No images. Build the default one with `banger image build` (a few minutes, once), \
                     or just `banger vm run`, which builds it the first time."
                )?;
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
                )?;
            }
        }
        ImageCommand::Show(a) => {
            let i: ImageInfo = client.get(&api_path::image(&a.name)?).await?;
            if a.json.json {
                output::print_json(&i)?;
            } else {
                outln!(
                    "name     {}\ndigest   {}\nkernel   {}\nsize     {}\norigin   {}\ncreated  {}",
                    i.name,
                    i.digest,
                    i.kernel,
                    format_size(i.size_bytes),
                    i.origin,
                    output::age(i.created_at)
                )?;
            }
        }
        ImageCommand::Delete(n) => {
            let i: ImageInfo = client.delete(&api_path::image(&n.name)?).await?;
            outln!("deleted image {}", i.name)?;
        }
        ImageCommand::Pull(a) => {
            if banger_core::names::is_oci_reference(&a.reference) {
                return super::oci::run_pull(client, &a.reference, a.name.as_deref()).await;
            }
            let i = match pull(client, &a.reference, a.name).await {
                Ok(i) => i,
                Err(PullError::Client(e)) => return Err(e.into()),
                Err(PullError::Failed { message, .. }) => bail!(message),
            };
            outln!(
                "pulled image {} ({}, {})",
                i.name,
                short_digest(&i.digest),
                format_size(i.size_bytes)
            )?;
        }
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
            outln!(
                "built image {} ({}, {})",
                i.name,
                short_digest(&i.digest),
                format_size(i.size_bytes)
            )?;
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
            outln!("registered image {} ({})", i.name, short_digest(&i.digest))?;
        }
        ImageCommand::Bundle(a) => {
            // The daemon reads the key and writes the bundle: on a systemd
            // host only it can read the image store.
            let key = absolute(&a.key)?;
            let out = absolute_new(&a.out)?;
            eprintln!(
                "bundling image {} into {out} (zstd; a minute for a full image)",
                a.name
            );
            let b: banger_proto::BundleInfo = client
                .post(
                    "/v1/images/bundle",
                    &banger_proto::BundleImageRequest {
                        name: a.name.clone(),
                        key,
                        out,
                    },
                )
                .await?;
            outln!(
                "bundle written to {} ({})\n\nPublish that directory at a URL and add this catalog entry:\n{}",
                b.dir,
                format_size(b.size_bytes),
                serde_json::to_string_pretty(&serde_json::json!({
                    "name": a.name,
                    "url": "https://<where you publish it>/",
                    "manifest_sha256": b.manifest_sha256,
                    "public_key": b.public_key,
                }))?
            )?;
        }
        ImageCommand::Warm(a) => return super::warm::image_warm(client, a).await,
        ImageCommand::Keygen { secret, public } => {
            let vk = banger_image::bundle::generate_key(&secret, &public)?;
            outln!(
                "secret key: {} (keep it private)\npublic key: {} = {}",
                secret.display(),
                public.display(),
                banger_image::bundle::public_key_base64(&vk)
            )?;
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
                outln!(
                    "No kernels. They come with images (`banger image build`), or `banger kernel register`."
                )?;
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
                )?;
            }
        }
        KernelCommand::Delete(n) => {
            let k: KernelInfo = client.delete(&api_path::kernel(&n.name)?).await?;
            outln!("deleted kernel {}", k.name)?;
        }
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
            outln!(
                "registered kernel {} (vmlinux: {})",
                k.name,
                if k.has_vmlinux { "yes" } else { "no" }
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How a pull failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PullError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// `unavailable`: no such catalog entry or the server could not be
    /// reached, as opposed to a refused (tampered, corrupt) bundle.
    #[error("{message}")]
    Failed { message: String, unavailable: bool },
}

/// Pulls catalog entry `name` through the daemon, drawing progress on
/// stderr (a bar on a terminal, a line per phase otherwise).
pub(crate) async fn pull(
    client: &Client,
    name: &str,
    local_name: Option<String>,
) -> Result<ImageInfo, PullError> {
    let req = banger_proto::PullImageRequest {
        name: name.to_string(),
        catalog: None,
        local_name,
    };
    let mut view = ProgressView::new(name);
    let mut result = None;
    client
        .post_lines(
            "/v1/images/pull",
            &req,
            |line| match serde_json::from_slice::<PullEvent>(line) {
                Ok(PullEvent::Progress(p)) => view.update(&p),
                Ok(PullEvent::Done { image }) => result = Some(Ok(image)),
                Ok(PullEvent::Failed { error, unavailable }) => {
                    result = Some(Err(PullError::Failed {
                        message: error.message,
                        unavailable,
                    }))
                }
                Err(e) => {
                    result = Some(Err(PullError::Client(ClientError::BadAnswer {
                        status: hyper::StatusCode::OK,
                        detail: format!("unreadable pull event: {e}"),
                    })))
                }
            },
        )
        .await?;
    view.finish();
    result.unwrap_or_else(|| {
        Err(PullError::Failed {
            message: "bangerd ended the pull without saying how it went; see `journalctl -u bangerd` or its log".into(),
            unavailable: false,
        })
    })
}
