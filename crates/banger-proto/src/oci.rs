//! `POST /v1/images/oci-pull`: any registry image as a banger image. The
//! answer is a newline-delimited JSON stream of [`OciPullEvent`]s.

use serde::{Deserialize, Serialize};

use crate::agent::ExecRequest;
use crate::{ApiError, ImageInfo};

/// Body of `POST /v1/images/oci-pull`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciPullRequest {
    /// Any registry reference: `busybox`, `python:3.12-slim`,
    /// `127.0.0.1:5000/team/app@sha256:…`.
    pub reference: String,
    /// Local image name; default: derived from the reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Answer at once with the installed image when one was pulled from
    /// this reference before (what `vm run --image <ref>` wants), instead of
    /// asking the registry whether it changed.
    #[serde(default)]
    pub if_missing: bool,
}

/// What `vm run -- CMD` honours from the image's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciRunConfig {
    /// `KEY=value`, in order.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Applied per command: the agent resolves it in the guest and runs
    /// the command as that user.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
}

impl OciRunConfig {
    /// The image's `Env` as exec environment pairs (entries without '='
    /// are skipped, as docker does).
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Applies `Env` and `WorkingDir` to a command about to run in the
    /// guest, and `User` (resolved by the agent in the guest). What the
    /// request already says wins.
    pub fn apply(&self, req: &mut ExecRequest) {
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

/// One line of the `POST /v1/images/oci-pull` answer: progress lines, then
/// exactly one `done` or `failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum OciPullEvent {
    Progress {
        /// 0-based layer index (`layers` for the final ext4 step).
        layer: usize,
        layers: usize,
        digest: String,
        /// `downloading`, `cached`, `extracting`, `done` or `ext4`.
        phase: String,
        done: u64,
        total: u64,
    },
    Done {
        image: ImageInfo,
        #[serde(default)]
        config: OciRunConfig,
        /// False when the installed image was current (nothing pulled).
        #[serde(default)]
        pulled: bool,
    },
    Failed {
        error: ApiError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn events_are_tagged_lines() {
        let ev = OciPullEvent::Failed {
            error: ApiError::new(ErrorKind::Conflict, "x"),
        };
        let s = serde_json::to_string(&ev).expect("json");
        assert!(s.starts_with("{\"event\":\"failed\""), "{s}");
        let back: OciPullEvent = serde_json::from_str(&s).expect("parse");
        assert_eq!(back, ev);
        let done = r#"{"event":"done","image":{"name":"bb","digest":"sha256:ab","kernel":"k","size_bytes":1,"origin":"oci:x@sha256:cd","created_at":0},"config":{"env":["A=b"],"working_dir":null,"user":null,"entrypoint":null,"cmd":["sh"]},"pulled":true}"#;
        match serde_json::from_str::<OciPullEvent>(done).expect("done") {
            OciPullEvent::Done {
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
            serde_json::from_str::<OciPullEvent>(p).expect("progress"),
            OciPullEvent::Progress { layer: 1, .. }
        ));
    }

    #[test]
    fn image_env_and_workdir_apply_under_explicit_ones() {
        let cfg = OciRunConfig {
            env: vec!["PATH=/opt/bin:/bin".into(), "A=1=2".into(), "JUNK".into()],
            working_dir: Some("/srv".into()),
            ..Default::default()
        };
        let mut req = ExecRequest::new(["sh"]);
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
        let mut req = ExecRequest::new(["sh"]);
        req.cwd = Some("/root/repo".into());
        cfg.apply(&mut req);
        assert_eq!(req.cwd.as_deref(), Some("/root/repo"), "workspace cwd wins");
    }
}
