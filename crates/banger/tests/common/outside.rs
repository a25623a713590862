//! A stand-in for "the outside": a second namespace joined to the test
//! namespace by a veth and made its default route, on 198.18.0.0/15
//! (reserved for benchmarking networks, so nothing real is ever reached).
//! It runs a DNS server (dnsmasq) that knows one name, and a web server
//! (busybox httpd) serving one file. The test namespace's /etc/resolv.conf
//! names only a loopback stub, as on systemd-resolved hosts (`ip netns
//! exec` bind-mounts /etc/netns/<ns>/resolv.conf over it), and the real
//! upstream list sits in a file of its own, as resolved keeps it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::guests::{GuestEnv, SHORT};

/// The test namespace's side of the veth.
pub const INSIDE_IP: &str = "198.18.0.1";
/// The outside's address: its DNS and web server listen here.
pub const OUTSIDE_IP: &str = "198.18.0.2";
/// The name the outside's DNS serves (→ [`OUTSIDE_IP`]).
pub const NAME: &str = "egress-check.test";
pub const WEB_PORT: u16 = 8080;
/// What `http://NAME:WEB_PORT/marker` returns.
pub const MARKER: &str = "reached-the-outside";

pub struct Outside {
    pub ns: String,
    /// The resolv.conf with the real upstream (what resolved writes to
    /// /run/systemd/resolve/resolv.conf): give it to the daemon's config.
    pub upstreams_file: PathBuf,
    netns_etc: PathBuf,
    children: Vec<Child>,
    pub dir: tempfile::TempDir,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Outside {
    /// Call before the daemons start (the resolv.conf bind mount applies to
    /// processes started afterwards).
    pub fn start(env: &GuestEnv) -> Outside {
        let ns = format!("banger-out-{}", std::process::id());
        ip(&["netns", "add", &ns]);
        let dir = tempfile::Builder::new()
            .prefix("bgr-outside")
            .tempdir()
            .expect("tmp");
        let netns_etc = PathBuf::from("/etc/netns").join(&env.ns);
        let mut o = Outside {
            ns: ns.clone(),
            upstreams_file: dir.path().join("resolved-uplinks.conf"),
            netns_etc: netns_etc.clone(),
            children: Vec::new(),
            dir,
        };
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n", &env.ns, "link", "add", "outside0", "type", "veth", "peer", "name", "inside0",
            "netns", &ns,
        ]);
        ip(&[
            "-n",
            &env.ns,
            "addr",
            "add",
            &format!("{INSIDE_IP}/24"),
            "dev",
            "outside0",
        ]);
        ip(&["-n", &env.ns, "link", "set", "outside0", "up"]);
        ip(&["-n", &env.ns, "route", "add", "default", "via", OUTSIDE_IP]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{OUTSIDE_IP}/24"),
            "dev",
            "inside0",
        ]);
        ip(&["-n", &ns, "link", "set", "inside0", "up"]);

        std::fs::create_dir_all(&netns_etc).expect("/etc/netns/<ns>");
        std::fs::write(
            netns_etc.join("resolv.conf"),
            "nameserver 127.0.0.53\noptions edns0\n",
        )
        .expect("stub resolv.conf");
        std::fs::write(&o.upstreams_file, format!("nameserver {OUTSIDE_IP}\n")).expect("uplinks");

        let www = o.dir.path().join("www");
        std::fs::create_dir(&www).expect("www");
        std::fs::write(www.join("marker"), format!("{MARKER}\n")).expect("marker");
        let log = |name: &str| std::fs::File::create(o.dir.path().join(name)).expect("log");
        let spawn = |argv: &[String], logf: std::fs::File| {
            Command::new("ip")
                .args(["netns", "exec", &ns])
                .args(argv)
                .stdin(Stdio::null())
                .stdout(logf.try_clone().expect("dup"))
                .stderr(logf)
                .spawn()
                .expect("spawn in the outside namespace")
        };
        let dns = spawn(
            &[
                "dnsmasq".into(),
                "--keep-in-foreground".into(),
                "--no-resolv".into(),
                "--no-hosts".into(),
                format!("--listen-address={OUTSIDE_IP}"),
                "--bind-interfaces".into(),
                "--port=53".into(),
                format!("--address=/{NAME}/{OUTSIDE_IP}"),
                "--user=root".into(),
                "--pid-file=".into(),
                "--log-queries".into(),
                "--log-facility=-".into(),
            ],
            log("dnsmasq.log"),
        );
        o.children.push(dns);
        let web = spawn(
            &[
                "busybox".into(),
                "httpd".into(),
                "-f".into(),
                "-vv".into(),
                "-p".into(),
                format!("{OUTSIDE_IP}:{WEB_PORT}"),
                "-h".into(),
                www.display().to_string(),
            ],
            log("httpd.log"),
        );
        o.children.push(web);
        // Up when the test namespace resolves the name through it.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, out, _) = env.netns(
                &[
                    "dig",
                    "+short",
                    "+time=1",
                    "+tries=1",
                    &format!("@{OUTSIDE_IP}"),
                    NAME,
                ],
                SHORT,
            );
            if out.trim() == OUTSIDE_IP {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the outside's DNS did not come up: {}",
                o.log("dnsmasq.log")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        o
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for l in ["dnsmasq.log", "httpd.log"] {
                eprintln!(
                    "----- outside {l} -----\n{}",
                    super::guests::tail(&self.log(l), 30)
                );
            }
        }
        for mut c in self.children.drain(..) {
            // Our own children, by their handles (`ip netns exec` execs).
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(&self.netns_etc);
    }
}
