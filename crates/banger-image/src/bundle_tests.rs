use super::*;

fn manifest() -> BundleManifest {
    let f = |p: &str| BundleFile {
        path: p.into(),
        size: 1,
        sha256: "a".repeat(64),
        compressed_size: 1,
        compressed_sha256: "b".repeat(64),
    };
    BundleManifest {
        format: FORMAT,
        name: "debian-bookworm".into(),
        version: "1".into(),
        arch: "x86_64".into(),
        description: String::new(),
        files: vec![f(ROOTFS), f(VMLINUZ)],
        kernel: BundleKernel {
            name: "k1".into(),
            version: "6.1".into(),
            vmlinuz: VMLINUZ.into(),
            initrd: None,
            vmlinux: None,
            pvh: false,
        },
        boot_args: String::new(),
    }
}

#[test]
fn manifest_validation() {
    manifest().validate().expect("valid");
    for bad in ["../x", "a/b", ".x", "", "..", "x\\y"] {
        let mut m = manifest();
        m.files[1].path = bad.into();
        assert!(m.validate().is_err(), "{bad:?} must be refused");
    }
    let mut m = manifest();
    m.files.remove(0);
    assert!(m.validate().is_err(), "rootfs required");
    let mut m = manifest();
    m.kernel.initrd = Some("initrd.img".into());
    assert!(m.validate().is_err(), "kernel files must be listed");
    let mut m = manifest();
    m.files[0].sha256 = "A".repeat(64);
    assert!(m.validate().is_err(), "digests are lowercase hex");
    let mut m = manifest();
    m.format = 2;
    assert!(m.validate().is_err());
    let json = serde_json::to_string(&manifest()).expect("json");
    let extra = json.replacen('{', "{\"surprise\":1,", 1);
    assert!(
        BundleManifest::parse(extra.as_bytes()).is_err(),
        "unknown fields refused"
    );
}

#[test]
fn sign_verify_and_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, p) = (dir.path().join("k"), dir.path().join("k.pub"));
    let vk = generate_key(&s, &p).expect("keygen");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&s).expect("meta").mode() & 0o777, 0o600);
    let sk = load_signing_key(&s).expect("load");
    let pk = parse_public_key(&std::fs::read_to_string(&p).expect("read")).expect("parse");
    assert_eq!(pk, vk);
    let sig = sign(b"manifest", &sk);
    verify(b"manifest", &sig, &pk).expect("verifies");
    assert!(matches!(
        verify(b"manifesT", &sig, &pk),
        Err(Error::BadSignature)
    ));
    assert!(matches!(
        verify(b"manifest", "garbage", &pk),
        Err(Error::BadSignature)
    ));
    assert!(
        generate_key(&s, &p).is_err(),
        "never overwrites a secret key"
    );
    std::fs::write(&s, "c2hvcnQ=").expect("write");
    assert!(load_signing_key(&s).is_err());
}
