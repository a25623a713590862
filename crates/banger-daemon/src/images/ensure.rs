//! "Make image X present", the way `vm run` needs it: an installed image is
//! used as is; otherwise the catalog's signed bundle is pulled; only when
//! the catalog cannot supply it (no entry, server unreachable) and X is the
//! default image is it built locally. A bundle that fails verification is
//! an error, never silently replaced by a build.

use std::sync::Arc;

use banger_proto::{EnsureEvent, EnsureSource, EnsureStep};
use banger_store::ImageRecord;

use crate::{Daemon, DaemonError};

impl Daemon {
    /// Makes image `name` present; `events` gets the steps and the pull's
    /// progress as they happen (the last event, done or failed, is the
    /// caller's to send from the result).
    pub async fn ensure_image(
        self: &Arc<Self>,
        name: &str,
        events: tokio::sync::mpsc::UnboundedSender<EnsureEvent>,
    ) -> Result<(ImageRecord, EnsureSource), DaemonError> {
        banger_core::names::validate_image_name(name)?;
        if let Ok(img) = self.store.get_image(name) {
            return Ok((img, EnsureSource::Present));
        }
        let _ = events.send(EnsureEvent::Step {
            step: EnsureStep::Catalog,
            message: format!(
                "image {name} is not present locally; pulling the signed catalog bundle"
            ),
        });
        let d = Arc::clone(self);
        let req = banger_proto::PullImageRequest {
            name: name.to_string(),
            catalog: None,
            local_name: None,
        };
        let tx = events.clone();
        let pulled = tokio::task::spawn_blocking(move || {
            d.pull_catalog_image(&req, &mut |progress| {
                let _ = tx.send(EnsureEvent::Progress { progress });
            })
        })
        .await
        .map_err(|e| DaemonError::internal(format!("pull worker failed: {e}")))?;
        let why = match pulled {
            Ok((img, _)) => return Ok((img, EnsureSource::Pulled)),
            Err(f) if f.unavailable => f.err.message,
            Err(f) => {
                let mut e = f.err;
                e.message = format!(
                    "{}\n(`banger image build {name}` builds the image locally instead)",
                    e.message
                );
                return Err(e);
            }
        };
        // Only the default image is what a local build produces.
        if name != banger_core::config::DEFAULT_IMAGE_NAME {
            return Err(DaemonError::not_found(format!(
                "no image named {name:?} here, and the catalog cannot supply it: {why}\n\
                 Build it (`banger image build {name}`), register one (`banger image register`), \
                 or pull an OCI image (`banger image pull REF --name {name}`)"
            )));
        }
        let _ = events.send(EnsureEvent::Step {
            step: EnsureStep::Build,
            message: format!(
                "no catalog bundle for {name} ({why}); building it locally with mmdebstrap instead"
            ),
        });
        let (img, _) = self
            .build_image(name.to_string(), banger_image::Profile::Full, None)
            .await?;
        Ok((img, EnsureSource::Built))
    }
}
