//! `fake-firecracker`: a FAKE stand-in for the `firecracker` binary, for tests only.
//!
//! It accepts `--api-sock <path> --id <id>` like Firecracker, serves a subset of
//! Firecracker's REST API (HTTP/1.1 over the Unix socket), answers 204 to valid
//! configuration requests, records every request to `fake-firecracker-calls.json` next to
//! the socket, and reads its (mis)behaviour from `fake-firecracker.json` there
//! (see `banger_testkit::fake::FakeFirecrackerConfig`). It never runs a guest.
//!
//! Snapshots: `PATCH /vm` pauses/resumes, `PUT /snapshot/create` (only while paused)
//! writes a JSON "vmstate" (its drives, NICs, vsock, memory size) and a sparse memory
//! file of the configured size; `PUT /snapshot/load` (only on a fresh instance) checks
//! what real Firecracker would trip over: a readable state, a memory file of the right
//! size, every drive path (relative ones against its working directory, as Firecracker
//! does), and overrides naming devices the state has.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_testkit::fake::{
    FAKE_CALLS_FILE, FAKE_CONFIG_FILE, FakeFirecrackerConfig, RecordedCall,
};

/// The fake never outlives a test run by much, even if the test that started it crashed.
const MAX_LIFETIME: Duration = Duration::from_secs(300);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut api_sock: Option<PathBuf> = None;
    let mut id = String::from("anonymous-instance");
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--api-sock" if i + 1 < args.len() => {
                api_sock = Some(PathBuf::from(&args[i + 1]));
                i += 1;
            }
            "--id" if i + 1 < args.len() => {
                id = args[i + 1].clone();
                i += 1;
            }
            other => {
                eprintln!("fake-firecracker: ignoring argument {other:?}");
            }
        }
        i += 1;
    }
    let Some(api_sock) = api_sock else {
        eprintln!("fake-firecracker: --api-sock <path> is required");
        std::process::exit(2);
    };
    let dir = api_sock
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let config: FakeFirecrackerConfig = std::fs::read(dir.join(FAKE_CONFIG_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();

    std::thread::spawn(|| {
        std::thread::sleep(MAX_LIFETIME);
        eprintln!("fake-firecracker: maximum lifetime reached, exiting");
        std::process::exit(99);
    });

    if config.ignore_ctrl_alt_del {
        // SAFETY: setting a signal disposition to SIG_IGN has no handler to be unsafe in.
        unsafe {
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
        }
    }
    println!("fake-firecracker {id}: started (this is a FAKE, no guest will run)");
    flush_stdout();

    if config.never_create_socket {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    std::thread::sleep(Duration::from_millis(config.socket_delay_ms));
    let listener = match UnixListener::bind(&api_sock) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fake-firecracker: cannot bind {}: {e}", api_sock.display());
            std::process::exit(1);
        }
    };
    let mut server = Server {
        dir,
        id,
        config,
        calls: Vec::new(),
        started: false,
        have_boot_source: false,
        paused: false,
        vm: FakeVmState::default(),
    };
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                if let Err(e) = server.serve(s) {
                    eprintln!("fake-firecracker: connection error: {e}");
                }
            }
            Err(e) => eprintln!("fake-firecracker: accept: {e}"),
        }
    }
}

fn flush_stdout() {
    let _ = std::io::stdout().flush();
}

struct Server {
    dir: PathBuf,
    id: String,
    config: FakeFirecrackerConfig,
    calls: Vec<RecordedCall>,
    started: bool,
    have_boot_source: bool,
    paused: bool,
    vm: FakeVmState,
}

/// What the fake "vmstate" file holds.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct FakeVmState {
    fake_vmstate: u32,
    mem_size_mib: u64,
    drives: std::collections::BTreeMap<String, String>,
    ifaces: std::collections::BTreeMap<String, String>,
    vsock_uds: Option<String>,
}

impl Server {
    fn serve(&mut self, stream: UnixStream) -> std::io::Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut writer = stream;
        loop {
            let mut request_line = String::new();
            if reader.read_line(&mut request_line)? == 0 {
                return Ok(());
            }
            let mut parts = request_line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let mut content_length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.trim().eq_ignore_ascii_case("content-length")
                {
                    content_length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; content_length];
            reader.read_exact(&mut body)?;
            let body: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            let (status, response, after) = self.handle(&method, &path, &body);
            self.calls.push(RecordedCall {
                method: method.clone(),
                path: path.clone(),
                body,
                status,
            });
            if let Ok(text) = serde_json::to_vec_pretty(&self.calls) {
                let _ = std::fs::write(self.dir.join(FAKE_CALLS_FILE), text);
            }
            let reason = match status {
                200 => "OK",
                204 => "No Content",
                _ => "Bad Request",
            };
            let body_bytes = response.map(|v| v.to_string()).unwrap_or_default();
            let mut head = format!(
                "HTTP/1.1 {status} {reason}\r\nServer: Firecracker API (fake)\r\nContent-Length: {}\r\n",
                body_bytes.len()
            );
            if !body_bytes.is_empty() {
                head.push_str("Content-Type: application/json\r\n");
            }
            head.push_str("\r\n");
            writer.write_all(head.as_bytes())?;
            writer.write_all(body_bytes.as_bytes())?;
            writer.flush()?;
            match after {
                After::Nothing => {}
                After::Exit(code, delay) => {
                    std::thread::spawn(move || {
                        std::thread::sleep(delay);
                        println!("fake-firecracker: exiting with status {code}");
                        flush_stdout();
                        std::process::exit(code);
                    });
                }
            }
        }
    }

    fn handle(
        &mut self,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, Option<serde_json::Value>, After) {
        let key = format!("{method} {path}");
        if let Some(msg) = self.config.reject.get(&key) {
            return (
                400,
                Some(serde_json::json!({ "fault_message": msg })),
                After::Nothing,
            );
        }
        let fault = |msg: &str| {
            (
                400,
                Some(serde_json::json!({ "fault_message": msg })),
                After::Nothing,
            )
        };
        match (method, path) {
            ("GET", "/") => (
                200,
                Some(serde_json::json!({
                    "app_name": "Firecracker",
                    "id": self.id,
                    "state": if self.started { "Running" } else { "Not started" },
                    "vmm_version": "0.0.0-fake"
                })),
                After::Nothing,
            ),
            ("PUT", "/actions") => match body.get("action_type").and_then(|v| v.as_str()) {
                Some("InstanceStart") => {
                    if !self.have_boot_source {
                        return fault("Cannot start microvm without kernel configuration.");
                    }
                    self.started = true;
                    println!("fake-firecracker: InstanceStart received; pretending a guest booted");
                    flush_stdout();
                    if self.config.flood_console_bytes > 0 {
                        let total = self.config.flood_console_bytes;
                        std::thread::spawn(move || flood(total));
                    }
                    match self.config.exit_after_start {
                        Some(code) => (
                            204,
                            None,
                            After::Exit(code, Duration::from_millis(self.config.exit_delay_ms)),
                        ),
                        None => (204, None, After::Nothing),
                    }
                }
                Some("SendCtrlAltDel") => {
                    if self.config.ignore_ctrl_alt_del {
                        println!("fake-firecracker: ignoring SendCtrlAltDel (configured to hang)");
                        flush_stdout();
                        (204, None, After::Nothing)
                    } else {
                        (204, None, After::Exit(0, Duration::from_millis(100)))
                    }
                }
                Some("FlushMetrics") => (204, None, After::Nothing),
                _ => fault(
                    "An error occurred when deserializing the json body of a request: unknown action_type.",
                ),
            },
            ("PATCH", "/vm") => {
                if !self.started {
                    return fault("The microVM is not running yet.");
                }
                match body.get("state").and_then(|v| v.as_str()) {
                    Some("Paused") => self.paused = true,
                    Some("Resumed") => self.paused = false,
                    _ => return fault("Invalid VM state."),
                }
                println!(
                    "fake-firecracker: vm {}",
                    if self.paused { "paused" } else { "resumed" }
                );
                flush_stdout();
                (204, None, After::Nothing)
            }
            ("PUT", "/snapshot/create") => self.snapshot_create(body),
            ("PUT", "/snapshot/load") => self.snapshot_load(body),
            ("PUT", p) if self.started && p != "/actions" => {
                fault("The requested operation is not supported after starting the microVM.")
            }
            ("PUT", "/machine-config") => {
                self.vm.mem_size_mib = body
                    .get("mem_size_mib")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(128);
                (204, None, After::Nothing)
            }
            ("PUT", "/vsock") => {
                self.vm.vsock_uds = body
                    .get("uds_path")
                    .and_then(|v| v.as_str())
                    .map(str::to_string);
                (204, None, After::Nothing)
            }
            ("PUT", p) if p.starts_with("/drives/") => {
                if let (Some(id), Some(path)) = (
                    body.get("drive_id").and_then(|v| v.as_str()),
                    body.get("path_on_host").and_then(|v| v.as_str()),
                ) {
                    self.vm.drives.insert(id.into(), path.into());
                }
                (204, None, After::Nothing)
            }
            ("PUT", p) if p.starts_with("/network-interfaces/") => {
                if let (Some(id), Some(tap)) = (
                    body.get("iface_id").and_then(|v| v.as_str()),
                    body.get("host_dev_name").and_then(|v| v.as_str()),
                ) {
                    self.vm.ifaces.insert(id.into(), tap.into());
                }
                (204, None, After::Nothing)
            }
            ("PUT", "/boot-source") => {
                self.have_boot_source = true;
                (204, None, After::Nothing)
            }
            ("PUT", "/logger" | "/metrics" | "/entropy" | "/serial") => (204, None, After::Nothing),
            _ => fault("Invalid request method and/or path."),
        }
    }
}

type Reply = (u16, Option<serde_json::Value>, After);

fn fault_reply(msg: String) -> Reply {
    (
        400,
        Some(serde_json::json!({ "fault_message": msg })),
        After::Nothing,
    )
}

impl Server {
    fn snapshot_create(&mut self, body: &serde_json::Value) -> Reply {
        if !self.started || !self.paused {
            return fault_reply("Cannot create a snapshot: the microVM is not paused.".into());
        }
        let field = |k: &str| body.get(k).and_then(|v| v.as_str()).map(PathBuf::from);
        let (Some(state), Some(mem)) = (field("snapshot_path"), field("mem_file_path")) else {
            return fault_reply("snapshot_path and mem_file_path are required.".into());
        };
        self.vm.fake_vmstate = 1;
        let text = serde_json::to_vec(&self.vm).unwrap_or_default();
        let written = std::fs::write(&state, text).and_then(|()| {
            let f = std::fs::File::create(&mem)?;
            f.set_len(self.vm.mem_size_mib << 20)
        });
        match written {
            Ok(()) => (204, None, After::Nothing),
            Err(e) => fault_reply(format!("Cannot write the snapshot: {e}")),
        }
    }

    fn snapshot_load(&mut self, body: &serde_json::Value) -> Reply {
        if self.started || self.have_boot_source {
            return fault_reply(
                "Loading a microVM snapshot not allowed after configuring boot-specific resources."
                    .into(),
            );
        }
        let path = body
            .get("snapshot_path")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let vm: FakeVmState = match std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(vm) => vm,
            None => {
                return fault_reply(format!(
                    "Load snapshot error: Cannot deserialize the microVM state from {path}."
                ));
            }
        };
        let mem = &body["mem_backend"];
        if mem["backend_type"] != "File" {
            return fault_reply("The fake supports only the File memory backend.".into());
        }
        let mem_path = mem["backend_path"].as_str().unwrap_or("");
        let mem_len = std::fs::metadata(mem_path).map(|m| m.len()).ok();
        if mem_len != Some(vm.mem_size_mib << 20) {
            return fault_reply(format!(
                "Load snapshot error: memory file {mem_path} has {mem_len:?} bytes, expected {}.",
                vm.mem_size_mib << 20
            ));
        }
        for (id, p) in &vm.drives {
            if !Path::new(p).is_file() {
                return fault_reply(format!(
                    "Load snapshot error: drive {id}: cannot open {p}: No such file or directory."
                ));
            }
        }
        let mut vm = vm;
        for o in body["network_overrides"].as_array().into_iter().flatten() {
            let id = o["iface_id"].as_str().unwrap_or("");
            match vm.ifaces.get_mut(id) {
                Some(tap) => *tap = o["host_dev_name"].as_str().unwrap_or("").to_string(),
                None => {
                    return fault_reply(format!("Invalid network override: no interface {id}."));
                }
            }
        }
        if let Some(uds) = body["vsock_override"]["uds_path"].as_str() {
            if vm.vsock_uds.is_none() {
                return fault_reply(
                    "Invalid vsock override: the snapshot has no vsock device.".into(),
                );
            }
            vm.vsock_uds = Some(uds.to_string());
        }
        println!(
            "fake-firecracker: snapshot loaded (drives {:?}, interfaces {:?}, vsock {:?})",
            vm.drives, vm.ifaces, vm.vsock_uds
        );
        flush_stdout();
        self.vm = vm;
        self.started = true;
        self.paused = body["resume_vm"].as_bool() != Some(true);
        (204, None, After::Nothing)
    }
}

enum After {
    Nothing,
    Exit(i32, Duration),
}

/// A guest writing to its console as fast as it can (`flood_console_bytes`).
fn flood(total: u64) {
    use std::io::Write;
    let line = format!("{}\n", "z".repeat(1023));
    let mut out = std::io::stdout().lock();
    let mut written = 0u64;
    while written < total {
        if out.write_all(line.as_bytes()).is_err() {
            return;
        }
        written += line.len() as u64;
    }
    let _ = writeln!(out, "fake-firecracker: flood done");
    let _ = out.flush();
}
