//! The Firecracker driver: spawn `firecracker --api-sock`, configure it over its REST API
//! (HTTP/1.1 on the Unix socket), `InstanceStart`; stop with `SendCtrlAltDel`, a bounded
//! wait, then SIGKILL.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::error::VmmError;
use crate::process::{RunningVmm, VmmHandle};
use crate::snapshot::{AfterSnapshot, Snapshot};
use crate::spec::{VmmKind, VmmSpec, ensure_arg};
use crate::stop::{Ask, no_quit, stop_escalating};
use crate::util::{remove_stale, spawn_in, wait_for_socket};
use crate::{Restored, StopOutcome, Vmm};

/// File names inside the VM dir.
pub const API_SOCKET: &str = "fc.sock";
pub const LOG_FILE: &str = "firecracker.log";
pub const METRICS_FILE: &str = "firecracker.metrics";

#[derive(Debug, Clone)]
pub struct FirecrackerDriver {
    pub bin: PathBuf,
    /// How long to wait for the API socket after spawning.
    pub socket_timeout: Duration,
    /// Bound on each API request.
    pub api_timeout: Duration,
    /// Add a virtio-rng entropy device.
    pub entropy: bool,
}

impl FirecrackerDriver {
    pub fn new(bin: PathBuf) -> FirecrackerDriver {
        FirecrackerDriver {
            bin,
            socket_timeout: Duration::from_secs(5),
            api_timeout: Duration::from_secs(10),
            entropy: true,
        }
    }
}

/// One API request the driver sends.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    pub method: &'static str,
    pub path: String,
    pub body: Value,
}

impl ApiRequest {
    pub(crate) fn put(path: impl Into<String>, body: Value) -> ApiRequest {
        ApiRequest {
            method: "PUT",
            path: path.into(),
            body,
        }
    }

    pub(crate) fn patch(path: impl Into<String>, body: Value) -> ApiRequest {
        ApiRequest {
            method: "PATCH",
            path: path.into(),
            body,
        }
    }
}

/// The kernel command line sent to Firecracker: the spec's args plus a serial console and
/// `reboot=k` (a guest reboot then ends the firecracker process). Firecracker's default
/// `nomodule` is deliberately absent: Debian guests load virtio modules.
pub fn boot_args(spec: &VmmSpec) -> String {
    let a = ensure_arg(&spec.boot_args, "console", "ttyS0");
    ensure_arg(&a, "reboot", "k")
}

/// Every configuration request, in order, ending with `InstanceStart`. Pure, so the
/// contract test can validate each body against Firecracker's OpenAPI spec.
pub fn api_requests(spec: &VmmSpec, entropy: bool) -> Result<Vec<ApiRequest>, VmmError> {
    let vmlinux = spec.kernel.vmlinux.as_ref().ok_or_else(|| {
        VmmError::InvalidSpec(
            "firecracker boots only an uncompressed ELF vmlinux and the image has none; \
             use an image/kernel with a vmlinux or set vmm = \"qemu\""
                .into(),
        )
    })?;
    if spec.vcpus > 1 && !spec.vcpus.is_multiple_of(2) {
        return Err(VmmError::InvalidSpec(format!(
            "firecracker needs 1 or an even number of vCPUs, not {}",
            spec.vcpus
        )));
    }
    let path = |p: &Path| p.to_string_lossy().into_owned();
    // Disks inside the VM directory are named relative to it (firecracker runs there), so
    // a snapshot, which records these paths, restores against the new VM's own disks.
    let disk_path = |p: &Path| match p.strip_prefix(&spec.vm_dir) {
        Ok(rel) if p.parent() == Some(spec.vm_dir.as_path()) => path(rel),
        _ => path(p),
    };
    let mut reqs = log_requests(spec);
    reqs.push(ApiRequest::put(
        "/machine-config",
        json!({ "vcpu_count": spec.vcpus, "mem_size_mib": spec.memory_mib, "smt": false }),
    ));
    let mut boot = json!({ "kernel_image_path": path(vmlinux), "boot_args": boot_args(spec) });
    if let Some(initrd) = &spec.kernel.initrd {
        boot["initrd_path"] = json!(path(initrd));
    }
    reqs.push(ApiRequest::put("/boot-source", boot));
    reqs.push(ApiRequest::put(
        "/drives/rootfs",
        json!({ "drive_id": "rootfs", "path_on_host": disk_path(&spec.root_disk), "is_root_device": true, "is_read_only": false }),
    ));
    if let Some(work) = &spec.work_disk {
        reqs.push(ApiRequest::put(
            "/drives/work",
            json!({ "drive_id": "work", "path_on_host": disk_path(work), "is_root_device": false, "is_read_only": false }),
        ));
    }
    if let Some(net) = &spec.net {
        reqs.push(ApiRequest::put(
            "/network-interfaces/eth0",
            json!({ "iface_id": "eth0", "host_dev_name": net.tap, "guest_mac": net.mac.to_string() }),
        ));
    }
    if let Some(v) = &spec.vsock {
        reqs.push(ApiRequest::put(
            "/vsock",
            json!({ "guest_cid": v.guest_cid, "uds_path": path(&v.uds_path) }),
        ));
    }
    if entropy {
        reqs.push(ApiRequest::put("/entropy", json!({})));
    }
    reqs.push(ApiRequest::put(
        "/actions",
        json!({ "action_type": "InstanceStart" }),
    ));
    Ok(reqs)
}

/// The logger and metrics requests, first for a boot and for a snapshot load alike.
pub(crate) fn log_requests(spec: &VmmSpec) -> Vec<ApiRequest> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    vec![
        ApiRequest::put(
            "/logger",
            json!({ "log_path": path(&spec.vm_dir.join(LOG_FILE)), "level": "Info", "show_level": true }),
        ),
        ApiRequest::put(
            "/metrics",
            json!({ "metrics_path": path(&spec.vm_dir.join(METRICS_FILE)) }),
        ),
    ]
}

/// One HTTP/1.1 request over the API socket. Returns the status and body.
pub async fn api_call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), VmmError> {
    let http_err = |detail: String| VmmError::Http {
        method: method.to_string(),
        path: path.to_string(),
        detail,
    };
    let fut = async {
        let bytes = match body {
            Some(b) => {
                Some(serde_json::to_vec(b).map_err(|e| http_err(format!("encode body: {e}")))?)
            }
            None => None,
        };
        crate::fc_http::request(socket, method, path, bytes.as_deref())
            .await
            .map_err(http_err)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| http_err(format!("no response within {timeout:?}")))?
}

/// Sends `req`; a non-2xx answer becomes [`VmmError::Api`] with Firecracker's
/// `fault_message` verbatim.
pub(crate) async fn send(
    socket: &Path,
    req: &ApiRequest,
    timeout: Duration,
) -> Result<(), VmmError> {
    let (status, body) = api_call(socket, req.method, &req.path, Some(&req.body), timeout).await?;
    if (200..300).contains(&status) {
        return Ok(());
    }
    let fault_message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("fault_message")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    Err(VmmError::Api {
        method: req.method.to_string(),
        path: req.path.clone(),
        status,
        fault_message,
    })
}

impl FirecrackerDriver {
    fn argv(&self, spec: &VmmSpec, socket: &Path) -> Vec<OsString> {
        vec![
            "--api-sock".into(),
            socket.into(),
            "--id".into(),
            spec.name.clone().into(),
        ]
    }

    /// Spawns firecracker in the VM directory and waits for its API socket.
    pub(crate) async fn spawn_api(&self, spec: &VmmSpec) -> Result<RunningVmm, VmmError> {
        let socket = spec.vm_dir.join(API_SOCKET);
        let log = spec.vm_dir.join(LOG_FILE);
        remove_stale(&socket)?;
        if let Some(v) = &spec.vsock {
            remove_stale(&v.uds_path)?;
        }
        // Firecracker opens (does not create) its logger and metrics paths.
        for p in [&log, &spec.vm_dir.join(METRICS_FILE)] {
            crate::util::open_append(p)?;
        }
        // Serial console = firecracker's stdout; its own stderr goes to its log.
        let (mut child, identity) = spawn_in(
            &self.bin,
            &self.argv(spec, &socket),
            &spec.console_log,
            &log,
            Some(&spec.vm_dir),
        )?;
        if let Err(e) = crate::spawn_record::record_spawn(&spec.vm_dir, &identity) {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            return Err(e);
        }
        let program = self.bin.display().to_string();
        if let Err(e) =
            wait_for_socket(&mut child, &program, &socket, self.socket_timeout, &log).await
        {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            return Err(e);
        }
        let handle = VmmHandle {
            kind: VmmKind::Firecracker,
            vm_name: spec.name.clone(),
            vm_dir: spec.vm_dir.clone(),
            process: identity,
            control_socket: socket,
            console_log: spec.console_log.clone(),
            vmm_log: log,
            helpers: Vec::new(),
            memory_file: None,
        };
        Ok(RunningVmm::new(handle, Some(child), Vec::new()))
    }

    /// Sends `requests` in order; on the first error the VMM is killed.
    pub(crate) async fn send_all(
        &self,
        vm: &mut RunningVmm,
        requests: &[ApiRequest],
    ) -> Result<(), VmmError> {
        let socket = vm.handle().control_socket.clone();
        for req in requests {
            if let Err(e) = send(&socket, req, self.api_timeout).await {
                vm.kill().await;
                let _ = std::fs::remove_file(&socket);
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Vmm for FirecrackerDriver {
    fn kind(&self) -> VmmKind {
        VmmKind::Firecracker
    }

    async fn start(&self, spec: &VmmSpec) -> Result<RunningVmm, VmmError> {
        spec.validate()?;
        let requests = api_requests(spec, self.entropy)?;
        let mut vm = self.spawn_api(spec).await?;
        self.send_all(&mut vm, &requests).await?;
        tracing::info!(vm = %spec.name, pid = vm.pid(), "firecracker started");
        Ok(vm)
    }

    async fn stop(&self, vm: &mut RunningVmm, grace: Duration) -> Result<StopOutcome, VmmError> {
        let socket = vm.handle().control_socket.clone();
        let name = vm.handle().vm_name.clone();
        let ask = || async {
            let ctrl_alt_del =
                ApiRequest::put("/actions", json!({ "action_type": "SendCtrlAltDel" }));
            let timeout = self.api_timeout.min(grace.max(Duration::from_secs(1)));
            if let Err(e) = send(&socket, &ctrl_alt_del, timeout).await {
                tracing::warn!(vm = %name, "SendCtrlAltDel failed: {e}");
            }
        };
        Ok(stop_escalating(vm, &socket, grace, Ask::Once, ask, no_quit()).await)
    }

    async fn pause(&self, vm: &mut RunningVmm) -> Result<(), VmmError> {
        self.fc_pause(vm).await
    }

    async fn resume(&self, vm: &mut RunningVmm) -> Result<(), VmmError> {
        self.fc_resume(vm).await
    }

    async fn snapshot(
        &self,
        vm: &mut RunningVmm,
        source: &VmmSpec,
        dest: &Path,
        then: AfterSnapshot,
    ) -> Result<Snapshot, VmmError> {
        self.fc_snapshot(vm, source, dest, then).await
    }

    async fn restore(&self, snapshot: &Snapshot, spec: &VmmSpec) -> Result<Restored, VmmError> {
        let (vm, report) = self.fc_restore(snapshot, spec).await?;
        Ok(Restored { vm, report })
    }
}
