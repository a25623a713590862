//! Name rules. A VM name becomes a DNS label (`<name>.vm`), a directory name
//! and part of a tap name, so it is held to the strictest of those.

use rand::Rng;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error(
        "invalid VM name {0:?}: {1} (use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit, like \"sandbox-1\")"
    )]
    Vm(String, &'static str),
    #[error(
        "invalid image name {0:?}: {1} (use 1-64 lowercase letters, digits, '.', '_' and '-', starting with a letter or digit, like \"debian-bookworm\")"
    )]
    Image(String, &'static str),
    #[error(
        "invalid kernel name {0:?}: {1} (use 1-64 lowercase letters, digits, '.', '_' and '-', starting with a letter or digit)"
    )]
    Kernel(String, &'static str),
}

/// Checks a VM name: a lowercase DNS label (RFC 1123).
pub fn validate_vm_name(name: &str) -> Result<(), NameError> {
    let bad = |why| Err(NameError::Vm(name.to_string(), why));
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 63 {
        return bad("it is longer than 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("it has a character other than a-z, 0-9 and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("it starts or ends with '-'");
    }
    Ok(())
}

fn check_store_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 64 {
        return Err("it is longer than 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("it has a character other than a-z, 0-9, '.', '_' and '-'");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("it does not start with a letter or digit");
    }
    Ok(())
}

/// Image names that are also the daemon's action paths under `/v1/images/`
/// (`POST /v1/images/build`): an image of that name could not be shown or
/// deleted.
const RESERVED_IMAGE_NAMES: &[&str] = &["build", "register", "pull", "bundle", "oci-pull"];
/// The same for `/v1/kernels/`.
const RESERVED_KERNEL_NAMES: &[&str] = &["register"];

const RESERVED: &str = "it is reserved for one of banger's commands";

/// Checks an image name (a local store name, not an OCI reference).
pub fn validate_image_name(name: &str) -> Result<(), NameError> {
    check_store_name(name)
        .and_then(|()| match RESERVED_IMAGE_NAMES.contains(&name) {
            true => Err(RESERVED),
            false => Ok(()),
        })
        .map_err(|why| NameError::Image(name.to_string(), why))
}

/// Checks a kernel name.
pub fn validate_kernel_name(name: &str) -> Result<(), NameError> {
    check_store_name(name)
        .and_then(|()| match RESERVED_KERNEL_NAMES.contains(&name) {
            true => Err(RESERVED),
            false => Ok(()),
        })
        .map_err(|why| NameError::Kernel(name.to_string(), why))
}

const ADJECTIVES: &[&str] = &[
    "amber", "brave", "calm", "deft", "eager", "fair", "glad", "hardy", "keen", "lucid", "merry",
    "nimble", "proud", "quick", "sly", "tidy", "vivid", "witty", "young", "zesty",
];
const NOUNS: &[&str] = &[
    "badger", "cedar", "dune", "ember", "falcon", "grove", "heron", "iris", "juniper", "kestrel",
    "lynx", "maple", "otter", "pine", "quail", "raven", "sparrow", "thistle", "willow", "yak",
];

/// A fresh name such as `nimble-otter-3f2a`; always a valid VM name.
pub fn random_vm_name() -> String {
    let mut rng = rand::thread_rng();
    format!(
        "{}-{}-{:04x}",
        ADJECTIVES[rng.gen_range(0..ADJECTIVES.len())],
        NOUNS[rng.gen_range(0..NOUNS.len())],
        rng.gen_range(0..0x10000u32)
    )
}

/// Whether an image argument is an OCI registry reference (`busybox:1`,
/// `ghcr.io/org/app`) rather than a store or catalog name: store names
/// never hold '/' or ':'.
pub fn is_oci_reference(s: &str) -> bool {
    s.contains('/') || s.contains(':')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn vm_name_table() {
        for ok in ["a", "sandbox", "sandbox-1", "x1", &"a".repeat(63)] {
            assert!(validate_vm_name(ok).is_ok(), "{ok} should be valid");
        }
        let cases = [
            ("", "it is empty"),
            ("Sandbox", "it has a character other than a-z, 0-9 and '-'"),
            ("a_b", "it has a character other than a-z, 0-9 and '-'"),
            ("a.vm", "it has a character other than a-z, 0-9 and '-'"),
            ("../x", "it has a character other than a-z, 0-9 and '-'"),
            ("-a", "it starts or ends with '-'"),
            ("a-", "it starts or ends with '-'"),
        ];
        for (bad, why) in cases {
            assert_eq!(validate_vm_name(bad), Err(NameError::Vm(bad.into(), why)));
        }
        assert!(validate_vm_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn image_names() {
        assert!(validate_image_name("debian-bookworm").is_ok());
        assert!(validate_image_name("python_3.12").is_ok());
        assert!(validate_image_name(".hidden").is_err());
        assert!(validate_image_name("a/b").is_err());
        assert!(validate_image_name("..").is_err());
        assert!(validate_image_name("i6?").is_err());
        // names that are the daemon's own action paths
        assert_eq!(
            validate_image_name("build"),
            Err(NameError::Image("build".into(), RESERVED))
        );
        assert!(validate_image_name("builder").is_ok());
        assert!(validate_kernel_name("register").is_err());
        assert!(validate_kernel_name("build").is_ok());
    }

    proptest! {
        #[test]
        fn random_names_are_valid(_ in 0..200u32) {
            prop_assert!(validate_vm_name(&random_vm_name()).is_ok());
        }

        #[test]
        fn valid_names_are_dns_labels(name in "[a-z0-9-]{1,70}") {
            if validate_vm_name(&name).is_ok() {
                prop_assert!(name.len() <= 63);
                prop_assert!(!name.starts_with('-') && !name.ends_with('-'));
                prop_assert!(!name.contains('/') && !name.contains('.'));
            }
        }
    }

    #[test]
    fn oci_references_versus_store_names() {
        assert!(is_oci_reference("busybox:latest"));
        assert!(is_oci_reference("127.0.0.1:5000/t/bb:1"));
        assert!(is_oci_reference("library/busybox"));
        assert!(!is_oci_reference("debian-bookworm"));
        assert!(!is_oci_reference("python-3.12-slim"));
    }
}
