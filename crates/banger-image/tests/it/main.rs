//! One integration-test binary for banger-image (faster to build than one
//! per file). Real parts throughout: ext4 images checked with e2fsck and
//! debugfs, a real HTTP server on 127.0.0.1, real mmdebstrap builds.

mod boot;
mod build;
mod ext4;
mod kernel;
mod pull;
mod server;
mod store;
mod support;
