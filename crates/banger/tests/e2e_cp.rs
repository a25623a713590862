//! `banger vm cp` against a real guest, both directions: the same harness as
//! e2e.rs (its own network namespace, root helper and daemon, the cached
//! minimal image with the static agent). Skips with a message where it
//! cannot run (not root, no qemu, no mmdebstrap).

mod common;

use common::guests::{
    GuestEnv, LONG, MINIMAL_IMAGE as IMAGE, SHORT, agent_binary, minimal_image, skip_reason,
};

use std::path::Path;

/// Every file, directory and symlink under `root`, with contents / targets,
/// relative and sorted: two trees are equal when these are.
fn snapshot(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).expect("prefix").display().to_string();
            let ft = e.file_type().expect("file type");
            if ft.is_symlink() {
                out.push((
                    rel,
                    format!("-> {}", std::fs::read_link(&p).expect("link").display()),
                ));
            } else if ft.is_dir() {
                out.push((rel, "dir".into()));
                stack.push(p);
            } else {
                out.push((
                    rel,
                    String::from_utf8_lossy(&std::fs::read(&p).expect("read")).into_owned(),
                ));
            }
        }
    }
    out.sort();
    out
}

// The agent's own real-guest test uploads 20,000 files and scripts/bench-agent
// times it; here the copy semantics matter, not the volume.
const TREE_FILES: usize = 2_000;

fn make_tree(root: &Path) {
    for i in 0..TREE_FILES {
        let d = root.join(format!("d{:03}", i % 100));
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join(format!("f{i:05}")), format!("file {i}\n")).expect("write");
    }
    std::fs::create_dir_all(root.join("empty")).expect("mkdir");
    std::os::unix::fs::symlink("../d000/f00000", root.join("d001/link")).expect("symlink");
}

#[test]
fn vm_cp_both_ways_with_a_real_guest() {
    if let Some(why) = skip_reason(&[]) {
        eprintln!("SKIP: real-guest vm cp test: {why}");
        return;
    }
    let agent = agent_binary();
    let built = minimal_image(&agent);
    let mut env = GuestEnv::start("e2ecp");
    std::fs::write(env.home().join(".config/banger/config.toml"), "").expect("config");
    // SAFETY: set before any thread of this test reads the environment.
    unsafe { std::env::set_var("BANGER_AGENT_BIN", &agent) };
    env.start_daemons();
    env.register_minimal(&built, "e2e-kernel");
    let (code, _, err) = env.banger(
        &[
            "vm", "create", "--name", "cpbox", "--image", IMAGE, "--vcpu", "2", "--memory", "1024",
        ],
        LONG,
    );
    assert_eq!(code, 0, "{err}");

    // bad arguments fail before touching any VM
    let (code, _, err) = env.banger(&["vm", "cp", "a", "b"], SHORT);
    assert_ne!(code, 0);
    assert!(err.contains("NAME:PATH"), "{err}");
    let (code, _, err) = env.banger(&["vm", "cp", "cpbox:/a", "cpbox:/b"], SHORT);
    assert_ne!(code, 0);
    assert!(err.contains("one side must be a host path"), "{err}");

    let tree = env.path("tree");
    make_tree(&tree);
    let tree_s = tree.display().to_string();
    let want = snapshot(&tree);

    // host -> guest: onto an existing directory (lands as /root/tree), while
    // the guest is possibly still booting (vm cp waits for readiness)
    let (code, _, err) = env.banger(&["vm", "cp", &tree_s, "cpbox:/root"], LONG);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = env.banger(&["vm", "exec", "cpbox", "--", "sh", "-c", "find /root/tree -type f | wc -l; cat /root/tree/d042/f00142; readlink /root/tree/d001/link"], SHORT);
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            TREE_FILES.to_string().as_str(),
            "file 142",
            "../d000/f00000"
        ]
    );
    // onto a new name: becomes that name (a relative guest path is under /root)
    let (code, _, err) = env.banger(&["vm", "cp", &tree_s, "cpbox:renamed"], LONG);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = env.banger(
        &[
            "vm",
            "exec",
            "cpbox",
            "--",
            "cat",
            "/root/renamed/d000/f00000",
        ],
        SHORT,
    );
    assert_eq!((code, out.as_str()), (0, "file 0\n"));
    // a single file to a new name, then onto an existing directory
    let f = env.path("note.txt");
    std::fs::write(&f, "note\n").expect("w");
    let f_s = f.display().to_string();
    let (code, _, err) = env.banger(&["vm", "cp", &f_s, "cpbox:/tmp/renamed.txt"], SHORT);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = env.banger(&["vm", "cp", &f_s, "cpbox:/tmp"], SHORT);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = env.banger(
        &[
            "vm",
            "exec",
            "cpbox",
            "--",
            "cat",
            "/tmp/renamed.txt",
            "/tmp/note.txt",
        ],
        SHORT,
    );
    assert_eq!((code, out.as_str()), (0, "note\nnote\n"));
    // a directory never replaces a file; a missing parent is an error
    let (code, _, err) = env.banger(&["vm", "cp", &tree_s, "cpbox:/tmp/note.txt"], SHORT);
    assert_ne!(code, 0);
    assert!(err.contains("non-directory"), "{err}");
    let (code, _, err) = env.banger(&["vm", "cp", &f_s, "cpbox:/no/such/dir/x"], SHORT);
    assert_ne!(code, 0);
    assert!(err.contains("does not exist"), "{err}");

    // guest -> host: the tree comes back identical, under a new name
    let back = env.path("back");
    let (code, _, err) = env.banger(
        &["vm", "cp", "cpbox:/root/tree", &back.display().to_string()],
        LONG,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(snapshot(&back), want, "round trip changed the tree");
    // into an existing directory, under the guest name
    let into = env.path("into");
    std::fs::create_dir(&into).expect("mkdir");
    let (code, _, err) = env.banger(
        &[
            "vm",
            "cp",
            "cpbox:/etc/hostname",
            &into.display().to_string(),
        ],
        SHORT,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(into.join("hostname"))
            .expect("r")
            .trim(),
        "cpbox"
    );

    // a guest tree with a symlink pointing out of it is refused, and
    // nothing is written on the host
    let (code, _, _) = env.banger(
        &[
            "vm",
            "exec",
            "cpbox",
            "--",
            "sh",
            "-c",
            "mkdir -p /root/evil && echo x > /root/evil/ok && ln -s /etc/shadow /root/evil/pw",
        ],
        SHORT,
    );
    assert_eq!(code, 0);
    let evil = env.path("evil");
    let (code, _, err) = env.banger(
        &["vm", "cp", "cpbox:/root/evil", &evil.display().to_string()],
        SHORT,
    );
    assert_ne!(code, 0);
    assert!(err.contains("points outside"), "{err}");
    assert!(!evil.exists(), "a refused copy wrote {}", evil.display());
    let leftovers: Vec<_> = std::fs::read_dir(env.dir.path())
        .expect("ls")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".banger-cp-"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
    // a missing guest path names the problem
    let (code, _, err) = env.banger(
        &[
            "vm",
            "cp",
            "cpbox:/no/such",
            &env.path("x").display().to_string(),
        ],
        SHORT,
    );
    assert_ne!(code, 0);
    assert!(err.contains("/no/such"), "{err}");

    let (code, _, _) = env.banger(&["vm", "delete", "cpbox"], LONG);
    assert_eq!(code, 0);
}
