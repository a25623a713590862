//! Request paths that carry a name. A name typed by the user is data, never
//! URL syntax: it is checked with the daemon's own rule (banger-core's
//! `names`, the one home of those rules) before anything is sent, and
//! percent-encoded into its path segment, so `image delete 'i6?'` can never
//! turn into `DELETE /v1/images/i6` with a query string.

use banger_core::names::{NameError, validate_image_name, validate_kernel_name, validate_vm_name};

/// Percent-encodes one path segment: everything but RFC 3986's unreserved
/// characters is escaped, so a segment cannot add a `/`, `?` or `#`.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/v1/vms/NAME`.
pub fn vm(name: &str) -> Result<String, NameError> {
    validate_vm_name(name)?;
    Ok(format!("/v1/vms/{}", segment(name)))
}

/// `/v1/vms/NAME/ACTION` (`start`, `stop`, `logs`, …).
pub fn vm_action(name: &str, action: &str) -> Result<String, NameError> {
    Ok(format!("{}/{action}", vm(name)?))
}

/// `/v1/images/NAME`.
pub fn image(name: &str) -> Result<String, NameError> {
    validate_image_name(name)?;
    Ok(format!("/v1/images/{}", segment(name)))
}

/// `/v1/images/NAME/warm`.
pub fn image_warm(name: &str) -> Result<String, NameError> {
    Ok(format!("{}/warm", image(name)?))
}

/// `/v1/kernels/NAME`.
pub fn kernel(name: &str) -> Result<String, NameError> {
    validate_kernel_name(name)?;
    Ok(format!("/v1/kernels/{}", segment(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_become_url_syntax() {
        assert_eq!(vm("box-1").expect("valid"), "/v1/vms/box-1");
        assert_eq!(
            vm_action("box-1", "start").expect("valid"),
            "/v1/vms/box-1/start"
        );
        assert_eq!(
            image("python_3.12").expect("valid"),
            "/v1/images/python_3.12"
        );
        for bad in ["i6?", "i6#x", "a/b", "", "a b", "..", "%41"] {
            assert!(image(bad).is_err(), "{bad:?} refused");
            assert!(kernel(bad).is_err(), "{bad:?} refused");
            assert!(vm(bad).is_err(), "{bad:?} refused");
        }
        let e = vm("").expect_err("empty");
        assert!(e.to_string().contains("it is empty"), "{e}");
    }

    #[test]
    fn segments_escape_everything_reserved() {
        assert_eq!(segment("a?b#c/d e%"), "a%3Fb%23c%2Fd%20e%25");
        assert_eq!(segment("ok-1.2_~"), "ok-1.2_~");
        assert_eq!(segment("é"), "%C3%A9");
    }
}
