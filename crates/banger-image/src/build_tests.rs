use super::*;

#[test]
fn wanted_by_reads_the_install_section() {
    assert_eq!(
        wanted_by("[Install]\nWantedBy=sockets.target\n"),
        "sockets.target"
    );
    assert_eq!(
        wanted_by("[Install]\nWantedBy=default.target multi-user.target\n"),
        "default.target"
    );
    assert_eq!(wanted_by("[Service]\nExecStart=/x\n"), "multi-user.target");
    // A hostile value cannot become a path.
    assert_eq!(
        wanted_by("[Install]\nWantedBy=../../etc.target\n"),
        "multi-user.target"
    );
}

#[test]
fn mirror_and_profile_validation() {
    assert!(validate_mirror("http://deb.debian.org/debian").is_ok());
    assert!(validate_mirror("file:///srv/mirror").is_ok());
    assert!(validate_mirror("deb http://x bookworm main").is_err());
    assert!(validate_mirror("ftp://x").is_err());
    assert_eq!("minimal".parse::<Profile>().ok(), Some(Profile::Minimal));
    assert!("tiny".parse::<Profile>().is_err());
    assert!(!Profile::Minimal.packages().contains(&"docker.io"));
    assert!(Profile::Full.packages().contains(&"docker.io"));
    assert!(
        Profile::Minimal
            .masked_units()
            .contains(&"systemd-logind.service")
    );
    assert!(
        !Profile::Full
            .masked_units()
            .contains(&"systemd-logind.service")
    );
}

#[test]
fn subid_ranges_by_name_or_uid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("subuid");
    std::fs::write(&f, "alice:100000:65536\n1001:200000:1000\n").expect("write");
    assert_eq!(subid_range(&f, 1000, Some("alice")), Some(65536));
    assert_eq!(subid_range(&f, 1001, Some("bob")), Some(1000));
    assert_eq!(subid_range(&f, 1002, Some("carol")), None);
}

#[test]
fn inputs_key_tracks_inputs() {
    let a = BuildOptions::new("x", Profile::Minimal, PathBuf::new());
    let mut b = a.clone();
    assert_eq!(inputs_key(&a).expect("key"), inputs_key(&b).expect("key"));
    b.mirror = "http://other/debian".into();
    assert_ne!(inputs_key(&a).expect("key"), inputs_key(&b).expect("key"));
}

#[test]
fn customize_writes_the_guest_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = dir.path();
    std::fs::create_dir_all(t.join("etc/ssh")).expect("mkdir");
    std::fs::write(t.join("etc/ssh/ssh_host_ed25519_key"), "k").expect("write");
    std::fs::write(
        t.join("etc/ssh/sshd_config"),
        "Include /etc/ssh/sshd_config.d/*.conf\n",
    )
    .expect("write");
    let bin = t.join("agent-bin");
    std::fs::write(&bin, "bin").expect("write");
    let agent = AgentPayload {
        binary: bin,
        unit: "[Install]\nWantedBy=multi-user.target\n".into(),
    };
    let created = customize(t, Profile::Minimal, Some(&agent)).expect("customize");
    assert!(!t.join("etc/ssh/ssh_host_ed25519_key").exists());
    assert!(t.join("etc/ssh/sshd_config.d/banger.conf").is_file());
    assert_eq!(
        std::fs::read_link(
            t.join("etc/systemd/system/multi-user.target.wants/banger-vsock-agent.service")
        )
        .expect("enabled"),
        Path::new(AGENT_UNIT)
    );
    assert_eq!(
        std::fs::read_link(t.join("etc/systemd/system/dbus.service")).expect("masked"),
        Path::new("/dev/null")
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(t.join("root")).expect("root").mode() & 0o7777,
        0o700
    );
    assert!(
        created
            .iter()
            .any(|p| p == "/etc/systemd/system/ssh.service.d")
    );
    assert!(created.iter().any(|p| p == AGENT_INSTALL_PATH));
}
