//! OCI references on the command line: `banger image pull <ref>` and
//! `vm run --image <ref>` (pulled on demand), through the daemon's
//! `POST /v1/images/oci-pull` stream.

use std::process::ExitCode;

use anyhow::bail;
use banger_proto::{ApiError, ImageInfo};
use serde::{Deserialize, Serialize};

use crate::client::Client;

/// Whether an `--image` / `image pull` argument is a registry reference
/// rather than a local or catalog name (store names have neither '/' nor
/// ':').
pub(crate) fn is_reference(s: &str) -> bool {
    s.contains('/') || s.contains(':')
}

/// Mirrors bangerd's `oci::OciPullRequest`.
#[derive(Debug, Serialize)]
struct OciPullRequest<'a> {
    reference: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    if_missing: bool,
}

/// What `vm run -- CMD` honours from the image's config (bangerd's
/// `oci::OciRunConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct RunConfig {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
}

impl RunConfig {
    /// The image's `Env` as exec environment pairs (entries without '='
    /// are skipped, as docker does).
    pub(crate) fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Applies `Env` and `WorkingDir` to a command about to run in the
    /// guest, and `User` (resolved by the agent in the guest).
    pub(crate) fn apply(&self, req: &mut banger_proto::agent::ExecRequest) {
        let mut env = self.env_pairs();
        env.append(&mut req.env);
        req.env = env;
        if req.cwd.is_none() {
            req.cwd = self.working_dir.clone().filter(|d| !d.is_empty());
        }
        if req.user.is_none() {
            req.user = self.user.clone().filter(|u| !u.is_empty());
        }
    }
}

/// Mirrors bangerd's `oci::OciPullEvent`.
#[derive(Debug, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    Progress {
        layer: usize,
        layers: usize,
        digest: String,
        phase: String,
        done: u64,
        total: u64,
    },
    Done {
        image: ImageInfo,
        #[serde(default)]
        config: RunConfig,
        #[serde(default)]
        pulled: bool,
    },
    Failed {
        error: ApiError,
    },
}

pub(crate) struct Pulled {
    pub image: ImageInfo,
    pub config: RunConfig,
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
        reference,
        name,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_versus_store_names() {
        assert!(is_reference("busybox:latest"));
        assert!(is_reference("127.0.0.1:5000/t/bb:1"));
        assert!(is_reference("library/busybox"));
        assert!(!is_reference("debian-bookworm"));
        assert!(!is_reference("python-3.12-slim"));
    }

    #[test]
    fn image_env_and_workdir_apply_under_explicit_ones() {
        let cfg = RunConfig {
            env: vec!["PATH=/opt/bin:/bin".into(), "A=1=2".into(), "JUNK".into()],
            working_dir: Some("/srv".into()),
            ..Default::default()
        };
        let mut req = banger_proto::agent::ExecRequest::new(["sh"]);
        req.env.push(("A".into(), "mine".into()));
        cfg.apply(&mut req);
        // later entries win in the agent: the explicit one comes last
        assert_eq!(
            req.env,
            vec![
                ("PATH".to_string(), "/opt/bin:/bin".to_string()),
                ("A".to_string(), "1=2".to_string()),
                ("A".to_string(), "mine".to_string()),
            ]
        );
        assert_eq!(req.cwd.as_deref(), Some("/srv"));
        let mut req = banger_proto::agent::ExecRequest::new(["sh"]);
        req.cwd = Some("/root/repo".into());
        cfg.apply(&mut req);
        assert_eq!(req.cwd.as_deref(), Some("/root/repo"), "workspace cwd wins");
    }

    #[test]
    fn events_parse_as_bangerd_writes_them() {
        let done = r#"{"event":"done","image":{"name":"bb","digest":"sha256:ab","kernel":"k","size_bytes":1,"origin":"oci:x@sha256:cd","created_at":0},"config":{"env":["A=b"],"working_dir":null,"user":null,"entrypoint":null,"cmd":["sh"]},"pulled":true}"#;
        match serde_json::from_str::<Event>(done).expect("done") {
            Event::Done {
                image,
                config,
                pulled,
            } => {
                assert_eq!(image.name, "bb");
                assert_eq!(config.env, ["A=b"]);
                assert!(pulled);
            }
            other => panic!("{other:?}"),
        }
        let p = r#"{"event":"progress","layer":1,"layers":2,"digest":"sha256:ab","phase":"downloading","done":0,"total":5}"#;
        assert!(matches!(
            serde_json::from_str::<Event>(p).expect("progress"),
            Event::Progress { layer: 1, .. }
        ));
    }
}
