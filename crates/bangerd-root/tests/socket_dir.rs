//! The helper refuses a socket directory the owner (or anyone) can write:
//! it chowns and chmods the socket by path, and a swap there would hand
//! any file to the owner. Needs root; fails before touching the network.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn helper(sock: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bangerd-root"))
        .arg("--socket")
        .arg(sock)
        .args(["--owner-uid", "65534"])
        .output()
        .expect("run bangerd-root")
}

#[test]
fn a_socket_directory_the_owner_can_write_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root");
        return;
    }
    let base = tempfile::tempdir().expect("tmp");
    let owners = base.path().join("owners");
    std::fs::create_dir(&owners).expect("mkdir");
    std::os::unix::fs::chown(&owners, Some(65534), None).expect("chown");
    let world = base.path().join("world");
    std::fs::create_dir(&world).expect("mkdir");
    std::fs::set_permissions(&world, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    for dir in [&owners, &world] {
        let out = helper(&dir.join("root.sock"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: {err}", dir.display());
        assert!(err.contains("can be written by uid 65534"), "{err}");
        assert!(!dir.join("root.sock").exists(), "no socket was made");
    }
}
