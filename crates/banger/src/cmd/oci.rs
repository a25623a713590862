//! OCI references on the command line: `banger image pull <ref>` and
//! `vm run --image <ref>` (pulled on demand), through the daemon's
//! `POST /v1/images/oci-pull` stream.

use std::process::ExitCode;

use anyhow::bail;
use banger_proto::{ImageInfo, OciPullEvent as Event, OciPullRequest, OciRunConfig};

use crate::client::Client;

pub(crate) struct Pulled {
    pub image: ImageInfo,
    pub config: OciRunConfig,
    /// False when an installed image was used as is.
    pub pulled: bool,
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}

/// One progress line per layer and phase (not per chunk: the output is
/// readable in CI logs as well as on a terminal).
#[derive(Default)]
struct Lines {
    last: Option<(usize, String)>,
}

impl Lines {
    fn show(
        &mut self,
        layer: usize,
        layers: usize,
        digest: &str,
        phase: &str,
        done: u64,
        total: u64,
    ) {
        let key = (layer, phase.to_string());
        if self.last.as_ref() == Some(&key) {
            return;
        }
        self.last = Some(key);
        // bangerd numbers layers from 0; people count from 1.
        let layer = layer + 1;
        match phase {
            "ext4" => eprintln!("building and checking the ext4 image ({layers} layers)"),
            "downloading" => eprintln!(
                "layer {layer}/{layers} {}: downloading {}",
                short(digest),
                mib(total)
            ),
            "cached" => eprintln!("layer {layer}/{layers} {}: cached", short(digest)),
            "done" => eprintln!(
                "layer {layer}/{layers} {}: done ({})",
                short(digest),
                mib(done.max(total))
            ),
            other => eprintln!("layer {layer}/{layers} {}: {other}", short(digest)),
        }
    }
}

/// Pulls `reference` through the daemon, one progress line per layer and
/// phase on stderr. With `if_missing`, an image pulled from it before is
/// used as is.
pub(crate) async fn pull(
    client: &Client,
    reference: &str,
    name: Option<&str>,
    if_missing: bool,
) -> anyhow::Result<Pulled> {
    let req = OciPullRequest {
        reference: reference.to_string(),
        name: name.map(str::to_string),
        if_missing,
    };
    let mut lines = Lines::default();
    let mut result: Option<anyhow::Result<Pulled>> = None;
    client
        .post_lines(
            "/v1/images/oci-pull",
            &req,
            |line| match serde_json::from_slice::<Event>(line) {
                Ok(Event::Progress {
                    layer,
                    layers,
                    digest,
                    phase,
                    done,
                    total,
                }) => lines.show(layer, layers, &digest, &phase, done, total),
                Ok(Event::Done {
                    image,
                    config,
                    pulled,
                }) => {
                    result = Some(Ok(Pulled {
                        image,
                        config,
                        pulled,
                    }))
                }
                Ok(Event::Failed { error }) => result = Some(Err(anyhow::anyhow!(error.message))),
                Err(e) => {
                    result = Some(Err(anyhow::anyhow!(
                        "bangerd sent an unreadable pull event: {e}"
                    )))
                }
            },
        )
        .await?;
    result
        .unwrap_or_else(|| bail!("bangerd ended the pull without saying how it went; see its log"))
}

/// `banger image pull <reference> [--name NAME]`.
pub(crate) async fn run_pull(
    client: &Client,
    reference: &str,
    name: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let p = pull(client, reference, name, false).await?;
    let verb = if p.pulled { "pulled" } else { "up to date:" };
    outln!(
        "{verb} image {} ({}, {})",
        p.image.name,
        p.image.origin,
        mib(p.image.size_bytes)
    )?;
    Ok(ExitCode::SUCCESS)
}

/// For `vm run --image <reference>`: the local image for it, pulled now if
/// it is not here yet, and the config commands should run with.
pub(crate) async fn ensure(client: &Client, reference: &str) -> anyhow::Result<Pulled> {
    let p = pull(client, reference, None, true).await?;
    if p.pulled {
        eprintln!(
            "banger: pulled {} as image {}",
            p.image.origin, p.image.name
        );
    }
    Ok(p)
}
