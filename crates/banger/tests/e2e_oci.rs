//! An OCI image without systemd or sshd, end to end: a real docker-registry
//! and the daemons run inside a network namespace this test creates (the
//! daemon's 127.0.0.1 is the namespace's loopback, so the registry lives
//! there too), a busybox-only image built here is pushed with skopeo,
//! pulled with `banger image pull`, and booted under the qemu driver
//! through banger-init. Skips with a message where it cannot run.

mod common;

use common::guests::{
    GuestEnv, LONG, SHORT, agent_binary, minimal_image, run, skip_reason, tail, which,
};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const REGISTRY: &str = "127.0.0.1:5000";

/// docker-registry on the namespace's 127.0.0.1:5000.
fn start_registry(env: &mut GuestEnv) {
    let storage = env.path("registry");
    std::fs::create_dir_all(&storage).expect("storage");
    let config = env.path("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {REGISTRY}\n",
            storage.display()
        ),
    )
    .expect("config");
    let bin = which("docker-registry").expect("docker-registry");
    let child = env.spawn_in_ns(
        &bin,
        &["serve".into(), config.display().to_string()],
        "registry.log",
    );
    env.adopt_child("registry", child);
}

/// Pushes an OCI layout as `<REGISTRY>/<name>:<tag>`, retrying while
/// the registry starts.
fn push(env: &GuestEnv, layout: &Path, tag: &str, name: &str) -> String {
    let dst = format!("{REGISTRY}/{name}:{tag}");
    let src = format!("oci:{}:{tag}", layout.display());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = env.netns(
            &[
                "skopeo",
                "copy",
                "--insecure-policy",
                "--dest-tls-verify=false",
                &src,
                &format!("docker://{dst}"),
            ],
            SHORT,
        );
        if r.0 == 0 {
            return dst;
        }
        assert!(
            Instant::now() < deadline,
            "skopeo copy failed: {}\nregistry log:\n{}",
            r.2,
            env.log("registry.log")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Writes `bytes` as a blob of the OCI layout; returns its descriptor.
fn blob(layout: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
    let tmp = layout.join("blob.tmp");
    std::fs::write(&tmp, bytes).expect("write blob");
    let hex = banger_image::store::sha256_file(&tmp).expect("sha256");
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(&hex)).expect("rename");
    serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
}

/// A one-layer image holding a static busybox and its applet links (no
/// init, no systemd), plus `extra` files (guest path, contents, mode).
/// Tagged `tag` in the layout's index.json.
fn busybox_layout(dir: &Path, tag: &str, extra: &[(String, Vec<u8>, u32)]) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("mkdir");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("w");
    let busybox = std::fs::read("/bin/busybox").expect("read busybox");
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, ty: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        match link {
            Some(l) => b.append_link(&mut h, path, l).expect("link"),
            None => b.append_data(&mut h, path, data).expect("append"),
        }
    };
    for d in ["bin", "etc", "srv", "root"] {
        add(d, tar::EntryType::Directory, 0o755, b"", None);
    }
    add(
        "bin/busybox",
        tar::EntryType::Regular,
        0o755,
        &busybox,
        None,
    );
    for applet in ["sh", "cat", "pwd", "hostname", "env", "ls", "sleep", "echo"] {
        add(
            &format!("bin/{applet}"),
            tar::EntryType::Symlink,
            0o777,
            b"",
            Some("busybox"),
        );
    }
    add(
        "srv/marker",
        tar::EntryType::Regular,
        0o644,
        b"from the image\n",
        None,
    );
    for (path, data, mode) in extra {
        add(
            path.trim_start_matches('/'),
            tar::EntryType::Regular,
            *mode,
            data,
            None,
        );
    }
    let layer = b.into_inner().expect("tar");
    let ldesc = blob(dir, "application/vnd.oci.image.layer.v1.tar", &layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello from the image"],
            "WorkingDir": "/srv",
            "Cmd": ["sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": [ldesc["digest"].clone()]},
    });
    let cdesc = blob(
        dir,
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&config).expect("json"),
    );
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": cdesc,
        "layers": [ldesc],
    });
    let mut mdesc = blob(
        dir,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).expect("json"),
    );
    mdesc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [mdesc]});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index.json");
}

#[test]
fn busybox_image_boots_through_banger_init() {
    if let Some(why) = skip_reason(&["docker-registry", "skopeo", "busybox"]) {
        eprintln!("SKIP: OCI boot end-to-end test: {why}");
        return;
    }
    let agent = agent_binary();
    let debian = minimal_image(&agent);

    let mut env = GuestEnv::start("e2eoci");
    // SAFETY: set before any thread of this test reads the environment.
    unsafe { std::env::set_var("BANGER_AGENT_BIN", &agent) };
    start_registry(&mut env);
    let layout = env.path("layout");
    busybox_layout(&layout, "1", &[]);
    let reference = push(&env, &layout, "1", "test/busybox");
    // The sshd part needs the host's openssh-server to copy into an image.
    let ssh_reference = if which("sshd").is_some() && which("ldd").is_some() {
        let ssh_layout = env.path("ssh-layout");
        busybox_layout(&ssh_layout, "1", &sshd_files());
        Some(push(&env, &ssh_layout, "1", "test/sshbox"))
    } else {
        eprintln!("SKIP: the sshd part: openssh-server is not installed");
        None
    };
    env.start_daemons();

    // No kernel yet: the pull says what to do instead of failing obscurely.
    let (code, _, err) = env.banger(&["image", "pull", &reference], LONG);
    assert_ne!(code, 0);
    assert!(
        err.contains("register or pull a Debian image first"),
        "{err}"
    );

    let kdir = debian.dir.join("kernel");
    let (code, _, err) = env.banger(
        &[
            "kernel",
            "register",
            "e2e-kernel",
            "--vmlinuz",
            &kdir.join("vmlinuz").display().to_string(),
            "--initrd",
            &kdir.join("initrd.img").display().to_string(),
        ],
        LONG,
    );
    assert_eq!(code, 0, "{err}");

    // pull: per-layer progress, registered under a name from the reference
    let (code, out, err) = env.banger(&["image", "pull", &reference], LONG);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("layer 1/1"), "{err}");
    assert!(
        out.contains("pulled image 127.0.0.1-5000-test-busybox-1"),
        "{out}"
    );
    let (code, out, _) = env.banger(&["image", "list", "--json"], SHORT);
    assert_eq!(code, 0);
    let images: serde_json::Value = serde_json::from_str(&out).expect("json");
    let img = images
        .as_array()
        .expect("array")
        .iter()
        .find(|i| i["name"] == "127.0.0.1-5000-test-busybox-1")
        .expect("pulled image listed");
    let origin = img["origin"].as_str().expect("origin");
    assert!(
        origin.starts_with("oci:127.0.0.1:5000/test/busybox:1@sha256:"),
        "{origin}"
    );
    // banger-init went into the image's rootfs
    let dir = env.path("state/images");
    let rootfs = std::fs::read_dir(&dir)
        .expect("images dir")
        .flatten()
        .map(|e| e.path().join("rootfs.ext4"))
        .find(|p| p.is_file())
        .expect("an image rootfs");
    let st = banger_image::ext4::stat(&rootfs, "/sbin/banger-init")
        .expect("debugfs")
        .expect("/sbin/banger-init exists");
    assert_eq!(st.mode, 0o100755);
    // pulling again asks the registry and finds it current
    let (code, out, _) = env.banger(&["image", "pull", &reference], LONG);
    assert_eq!((code, out.contains("up to date")), (0, true), "{out}");

    // the exit status of a command in an image with no systemd and no sshd
    let (code, out, err) = env.banger(
        &[
            "vm", "run", "--rm", "--image", &reference, "--memory", "512", "--", "sh", "-c",
            "exit 3",
        ],
        LONG,
    );
    if code != 3 {
        env.print_consoles();
    }
    assert_eq!(code, 3, "stdout: {out}\nstderr: {err}");
    assert!(env.vm_names().is_empty(), "--rm deleted the VM");

    // the image's Env and WorkingDir apply to commands
    let (code, out, err) = env.banger(
        &[
            "vm",
            "run",
            "--rm",
            "--image",
            &reference,
            "--memory",
            "512",
            "--",
            "sh",
            "-c",
            "echo \"$GREETING\"; pwd; cat marker",
        ],
        LONG,
    );
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.ends_with(&["hello from the image", "/srv", "from the image"]),
        "{out}"
    );

    // a long-lived VM: banger-init set hostname, address, mounts; a stop
    // powers it off through the agent
    let (code, out, err) = env.banger(
        &[
            "vm",
            "create",
            "--name",
            "bb",
            "--image",
            "127.0.0.1-5000-test-busybox-1",
            "--memory",
            "512",
        ],
        LONG,
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = env.banger(&["vm", "exec", "bb", "--", "hostname"], LONG);
    assert_eq!((code, out.trim()), (0, "bb"));
    let (code, out, _) = env.banger(&["vm", "exec", "bb", "--", "cat", "/proc/mounts"], SHORT);
    assert_eq!(code, 0);
    for m in [
        " /proc proc",
        " /sys sysfs",
        " /dev devtmpfs",
        " /run tmpfs",
        "/dev/vdb /root ext4",
    ] {
        assert!(out.contains(m), "{m:?} not in\n{out}");
    }
    let (code, out, _) = env.banger(&["vm", "show", "bb", "--json"], SHORT);
    assert_eq!(code, 0);
    let info: serde_json::Value = serde_json::from_str(&out).expect("json");
    let ip = info["ip"].as_str().expect("ip").to_string();
    let (code, out, _) = env.banger(
        &["vm", "exec", "bb", "--", "cat", "/proc/net/fib_trie"],
        SHORT,
    );
    assert_eq!(code, 0);
    assert!(out.contains(&ip), "{ip} not configured:\n{out}");
    let (code, out, _) = env.banger(&["vm", "exec", "bb", "--", "cat", "/proc/net/route"], SHORT);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("00000000")),
        "no default route:\n{out}"
    );
    let (code, _, err) = env.banger(&["vm", "stop", "bb"], LONG);
    assert_eq!(code, 0, "{err}");
    assert!(
        env.log("bangerd.log")
            .contains("guest powered off through the agent"),
        "{}",
        tail(&env.log("bangerd.log"), 30)
    );
    let (code, _, _) = env.banger(&["vm", "delete", "bb"], LONG);
    assert_eq!(code, 0);

    // an image that has sshd: banger-init starts it with the VM's pinned
    // host key and the owner's authorized_keys on the work disk
    let Some(ssh_reference) = ssh_reference else {
        return;
    };
    let (code, out, err) = env.banger(&["image", "pull", &ssh_reference], LONG);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = env.banger(
        &[
            "vm",
            "create",
            "--name",
            "sshbox",
            "--image",
            "127.0.0.1-5000-test-sshbox-1",
            "--memory",
            "512",
        ],
        LONG,
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = env.banger(&["vm", "ssh", "sshbox", "--", "hostname"], LONG);
    if code != 0 {
        env.print_consoles();
    }
    assert_eq!((code, out.trim()), (0, "sshbox"), "{err}");
    let (code, _, _) = env.banger(&["vm", "delete", "sshbox"], LONG);
    assert_eq!(code, 0);
}

/// The host's dynamically linked sshd with the libraries it loads and a
/// minimal config: enough for key logins as root, nothing else.
fn sshd_files() -> Vec<(String, Vec<u8>, u32)> {
    let sshd = which("sshd").expect("sshd (openssh-server)");
    let (code, out, err) = run(
        {
            let mut c = Command::new("ldd");
            c.arg(&sshd);
            c
        },
        SHORT,
    );
    assert_eq!(code, 0, "ldd: {err}");
    let mut files = vec![(
        "/usr/sbin/sshd".to_string(),
        std::fs::read(&sshd).expect("read sshd"),
        0o755,
    )];
    for line in out.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push((p.to_string(), std::fs::read(p).expect("read lib"), 0o755));
        }
    }
    let text = |p: &str, t: &str, m: u32| (p.to_string(), t.as_bytes().to_vec(), m);
    files.extend([
        text(
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/bin/false\n",
            0o644,
        ),
        text("/etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644),
        text("/etc/shadow", "root:*:19000:0:99999:7:::\n", 0o600),
        text(
            "/etc/ssh/sshd_config",
            "HostKey /etc/ssh/ssh_host_ed25519_key\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPidFile /run/sshd.pid\n",
            0o644,
        ),
    ]);
    files
}
