//! The QEMU driver: `qemu-system-x86_64 -M microvm`, KVM where KVM runs guests, else TCG;
//! controlled over QMP; stop = ACPI powerdown, bounded wait, `quit`, then SIGKILL.
//! The guest agent's channel is a virtio-serial port on a chardev socket QEMU listens on
//! (`VmmSpec::agent_port`). It migrates, so these VMs can be snapshotted; vsock is not
//! offered: without `/dev/vhost-vsock` it needs a vhost-user backend, and QEMU refuses to
//! migrate a guest with a vhost-user vsock device.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::error::VmmError;
use crate::host::Accel;
use crate::process::{RunningVmm, VmmHandle};
pub use crate::qmp::qmp_command;
use crate::snapshot::{AfterSnapshot, Snapshot};
use crate::spec::{VmmKind, VmmSpec, ensure_arg};
use crate::stop::{Ask, Quit, stop_escalating};
use crate::util::{no_comma, remove_stale, spawn, wait_for_socket};
use crate::{Restored, StopOutcome, Vmm};

pub const QMP_SOCKET: &str = "qmp.sock";
pub const LOG_FILE: &str = "qemu.log";

/// QEMU's seccomp filter: no obsolete syscalls, no setuid/setgid, no
/// scheduler or resource changes. Process creation (`spawn=deny`) stays
/// allowed: snapshots stream through `migrate exec:cat > FILE`, and under
/// QEMU 7.2 `spawn=deny` makes that fork kill QEMU (measured: the VMM dies
/// on the first `migrate exec:`). `migrate fd:` (an fd passed with QMP
/// `getfd`) works under `spawn=deny`; moving snapshots to it is what lets
/// `spawn=deny` be added here.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,resourcecontrol=deny";

/// How often `stop` repeats the ACPI power button press while waiting.
const POWERDOWN_REPEAT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct QemuDriver {
    pub bin: PathBuf,
    pub accel: Accel,
    /// Host TSC kHz, passed as `tsc_early_khz=` under TCG (boots hang ~40% without it).
    pub tsc_khz: u64,
    /// `qemu-img` (qemu-utils): O(1) qcow2 overlays for restored VMs' disks, and
    /// flattening them when such a VM is snapshotted. Without it disks are copied.
    pub qemu_img: Option<PathBuf>,
    /// How long to wait for the QMP socket.
    pub socket_timeout: Duration,
    /// How long to wait for `quit` before SIGKILL.
    pub quit_timeout: Duration,
}

impl QemuDriver {
    pub fn new(bin: PathBuf, accel: Accel, tsc_khz: u64) -> QemuDriver {
        QemuDriver {
            bin,
            accel,
            tsc_khz,
            qemu_img: crate::host::find_program("qemu-img"),
            socket_timeout: Duration::from_secs(10),
            quit_timeout: Duration::from_secs(3),
        }
    }

    /// The kernel command line: the spec's plus the serial console and, under TCG, the
    /// host TSC rate.
    pub fn boot_args(&self, spec: &VmmSpec) -> String {
        let a = ensure_arg(&spec.boot_args, "console", "ttyS0");
        match self.accel {
            Accel::Tcg => ensure_arg(&a, "tsc_early_khz", &self.tsc_khz.to_string()),
            Accel::Kvm => a,
        }
    }

    /// QEMU's argv for a cold boot (unit-tested). Disks: root first (/dev/vda), then work
    /// (/dev/vdb); each disk's format (raw or a qcow2 overlay) is read from its header.
    pub fn argv(&self, spec: &VmmSpec) -> Result<Vec<OsString>, VmmError> {
        let memory = match &spec.memory_file {
            Some(f) => Memory::SharedFile(f),
            None => Memory::Anonymous,
        };
        self.argv_with(spec, memory)
    }

    /// The argv shared by cold boots and restores. Guest RAM is always the backend `mem`,
    /// so a snapshot's RAM block has the same name whichever way the VM started.
    pub(crate) fn argv_with(
        &self,
        spec: &VmmSpec,
        memory: Memory<'_>,
    ) -> Result<Vec<OsString>, VmmError> {
        let kernel = spec
            .kernel
            .vmlinuz
            .as_ref()
            .or(spec.kernel.vmlinux.as_ref())
            .ok_or_else(|| {
                VmmError::InvalidSpec("the image has no kernel (vmlinuz or vmlinux)".into())
            })?;
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
        push(&["-M", "microvm,memory-backend=mem"]);
        match self.accel {
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => push(&["-accel", "tcg", "-cpu", "qemu64"]),
        }
        let mem = format!("{}M", spec.memory_mib);
        push(&["-smp", &spec.vcpus.to_string(), "-m", &mem]);
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-name",
            &spec.name,
            "-sandbox",
            SANDBOX,
        ]);
        a.extend(["-object".into(), memory.object(&mem)?]);
        a.extend(["-kernel".into(), kernel.into()]);
        if let Some(initrd) = &spec.kernel.initrd {
            a.extend(["-initrd".into(), initrd.into()]);
        }
        a.extend(["-append".into(), self.boot_args(spec).into()]);
        let console = no_comma("console log", &spec.console_log)?;
        a.extend([
            "-chardev".into(),
            opt("file,id=console,append=on,path=", &console),
            "-serial".into(),
            "chardev:console".into(),
        ]);
        let mut disks = vec![("root", &spec.root_disk)];
        if let Some(w) = &spec.work_disk {
            disks.push(("work", w));
        }
        for (id, p) in disks {
            let format = crate::disk::disk_format(p).as_str();
            let p = no_comma("disk", p)?;
            a.extend([
                "-drive".into(),
                opt(&format!("if=none,format={format},id={id},file="), &p),
                "-device".into(),
                format!("virtio-blk-device,drive={id}").into(),
            ]);
        }
        if let Some(net) = &spec.net {
            a.extend([
                "-netdev".into(),
                format!("tap,id=net0,ifname={},script=no,downscript=no", net.tap).into(),
                "-device".into(),
                format!("virtio-net-device,netdev=net0,mac={}", net.mac).into(),
            ]);
        }
        if spec.vsock.is_some() {
            return Err(VmmError::InvalidSpec(
                "QEMU VMs have no vsock device (vhost-user vsock blocks snapshots); \
                 give the guest agent an agent_port (virtio-serial) instead"
                    .into(),
            ));
        }
        if let Some(port) = &spec.agent_port {
            // microvm has no PCI: the virtio-mmio flavour of the serial bus.
            let sock = no_comma("agent socket", &port.socket)?;
            a.extend([
                "-device".into(),
                "virtio-serial-device,max_ports=2".into(),
                "-chardev".into(),
                opt("socket,id=agent,server=on,wait=off,path=", &sock),
                "-device".into(),
                format!("virtserialport,chardev=agent,name={}", port.name).into(),
            ]);
        }
        let qmp = no_comma("QMP socket", &spec.vm_dir.join(QMP_SOCKET))?;
        a.extend(["-qmp".into(), {
            let mut s = OsString::from("unix:");
            s.push(&qmp);
            s.push(",server=on,wait=off");
            s
        }]);
        if matches!(memory, Memory::PrivateFile(_) | Memory::Incoming) {
            // Paused until the state is loaded and `cont` is sent.
            push_all(&mut a, &["-S", "-incoming", "defer"]);
        }
        Ok(a)
    }
}

impl QemuDriver {
    /// Spawns QEMU with `argv` and waits for the QMP socket. On error nothing is left
    /// running.
    pub(crate) async fn launch(
        &self,
        spec: &VmmSpec,
        argv: &[OsString],
        memory_file: Option<PathBuf>,
    ) -> Result<RunningVmm, VmmError> {
        let qmp = spec.vm_dir.join(QMP_SOCKET);
        let log = spec.vm_dir.join(LOG_FILE);
        remove_stale(&qmp)?;
        let mut handle = VmmHandle {
            kind: VmmKind::Qemu,
            vm_name: spec.name.clone(),
            vm_dir: spec.vm_dir.clone(),
            process: crate::process::ProcessIdentity {
                pid: 0,
                start_time: 0,
            },
            control_socket: qmp.clone(),
            console_log: spec.console_log.clone(),
            vmm_log: log.clone(),
            helpers: Vec::new(),
            memory_file,
        };
        let (child, identity) = match spawn(&self.bin, argv, &log, &log) {
            Ok(x) => x,
            Err(e) => return Err(e),
        };
        handle.process = identity;
        let mut vm = RunningVmm::new(handle, Some(child), Vec::new());
        if let Err(e) = crate::spawn_record::record_spawn(&spec.vm_dir, &identity) {
            abort(&mut vm).await;
            return Err(e);
        }
        let program = self.bin.display().to_string();
        let waited = match vm.child_mut() {
            Some(child) => wait_for_socket(child, &program, &qmp, self.socket_timeout, &log).await,
            None => Err(VmmError::Unavailable("lost qemu child".into())),
        };
        if let Err(e) = waited {
            abort(&mut vm).await;
            return Err(e);
        }
        Ok(vm)
    }
}

/// Kills a VMM that failed to come up and removes its control socket.
pub(crate) async fn abort(vm: &mut RunningVmm) {
    vm.kill().await;
    let _ = std::fs::remove_file(&vm.handle().control_socket);
}

/// Where a VM's guest RAM lives.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Memory<'a> {
    /// Plain anonymous RAM.
    Anonymous,
    /// A named file mapped shared (on tmpfs): a snapshot copies it instead of streaming RAM.
    SharedFile(&'a Path),
    /// Restore: a snapshot's RAM file mapped privately (copy-on-write, nothing copied up
    /// front); the device state stream carries no RAM.
    PrivateFile(&'a Path),
    /// Restore: RAM arrives in the state stream.
    Incoming,
}

impl Memory<'_> {
    fn object(&self, size: &str) -> Result<OsString, VmmError> {
        Ok(match self {
            Memory::Anonymous | Memory::Incoming => {
                format!("memory-backend-ram,id=mem,size={size}").into()
            }
            Memory::SharedFile(p) => opt(
                &format!("memory-backend-file,id=mem,size={size},share=on,mem-path="),
                &no_comma("memory file", p)?,
            ),
            Memory::PrivateFile(p) => opt(
                &format!("memory-backend-file,id=mem,size={size},share=off,mem-path="),
                &no_comma("snapshot memory file", p)?,
            ),
        })
    }
}

fn push_all(a: &mut Vec<OsString>, items: &[&str]) {
    a.extend(items.iter().map(OsString::from));
}

fn opt(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path);
    s
}

impl Vmm for QemuDriver {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    async fn start(&self, spec: &VmmSpec) -> Result<RunningVmm, VmmError> {
        spec.validate()?;
        let argv = self.argv(spec)?;
        if let Some(f) = &spec.memory_file {
            // A RAM file left by a VMM that died must not seed the new guest's memory.
            remove_stale(f)?;
        }
        let mut vm = self.launch(spec, &argv, spec.memory_file.clone()).await?;
        let qmp = vm.handle().control_socket.clone();
        let running = async {
            let status = qmp_command(&qmp, "query-status", self.socket_timeout).await?;
            if status.get("running").and_then(Value::as_bool) != Some(true) {
                return Err(VmmError::Qmp {
                    command: "query-status".into(),
                    socket: qmp.clone(),
                    detail: format!("guest is not running: {status}"),
                });
            }
            Ok(())
        };
        if let Err(e) = running.await {
            abort(&mut vm).await;
            return Err(e);
        }
        tracing::info!(vm = %spec.name, pid = vm.pid(), accel = ?self.accel, "qemu started");
        Ok(vm)
    }

    async fn stop(&self, vm: &mut RunningVmm, grace: Duration) -> Result<StopOutcome, VmmError> {
        let qmp = vm.handle().control_socket.clone();
        let name = vm.handle().vm_name.clone();
        let short = Duration::from_secs(2);
        // A button press that arrives before the guest's logind watches the power button
        // (early boot) is lost, so press again every few seconds until the grace ends.
        let powerdown = || async {
            if let Err(e) = qmp_command(&qmp, "system_powerdown", short).await {
                tracing::warn!(vm = %name, "ACPI powerdown failed: {e}");
            }
        };
        let quit = Quit {
            request: || async { qmp_command(&qmp, "quit", short).await.is_ok() },
            wait: self.quit_timeout,
        };
        // Handles re-adopted from before QEMU VMs lost vsock may still name a helper:
        // stop_escalating stops those too.
        let how = Ask::Every(POWERDOWN_REPEAT);
        Ok(stop_escalating(vm, &qmp, grace, how, powerdown, Some(quit)).await)
    }

    async fn pause(&self, vm: &mut RunningVmm) -> Result<(), VmmError> {
        self.qemu_pause(vm).await
    }

    async fn resume(&self, vm: &mut RunningVmm) -> Result<(), VmmError> {
        self.qemu_resume(vm).await
    }

    async fn snapshot(
        &self,
        vm: &mut RunningVmm,
        source: &VmmSpec,
        dest: &Path,
        then: AfterSnapshot,
    ) -> Result<Snapshot, VmmError> {
        self.qemu_snapshot(vm, source, dest, then).await
    }

    async fn restore(&self, snapshot: &Snapshot, spec: &VmmSpec) -> Result<Restored, VmmError> {
        let (vm, report) = self.qemu_restore(snapshot, spec).await?;
        Ok(Restored { vm, report })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{AgentPortSpec, KernelFiles, MacAddr, NetSpec, VsockSpec};

    fn spec() -> VmmSpec {
        let mut s = VmmSpec::new(
            "web-1",
            Path::new("/var/lib/banger/vms/web-1"),
            KernelFiles {
                vmlinux: None,
                vmlinuz: Some("/k/vmlinuz".into()),
                initrd: Some("/k/initrd.img".into()),
            },
            Path::new("/var/lib/banger/vms/web-1/root.ext4"),
        );
        s.work_disk = Some("/var/lib/banger/vms/web-1/work.ext4".into());
        s
    }

    fn args(d: &QemuDriver, s: &VmmSpec) -> Vec<String> {
        d.argv(s)
            .expect("argv")
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn tcg_argv_has_tsc_console_and_ordered_disks() {
        let d = QemuDriver::new("/usr/bin/qemu-system-x86_64".into(), Accel::Tcg, 2_000_000);
        let a = args(&d, &spec());
        let joined = a.join(" ");
        assert!(joined.contains("-accel tcg -cpu qemu64"), "{joined}");
        let append = &a[a.iter().position(|x| x == "-append").expect("-append") + 1];
        assert!(append.contains("tsc_early_khz=2000000"), "{append}");
        assert!(append.contains("console=ttyS0"));
        let root = joined.find("id=root").expect("root");
        let work = joined.find("id=work").expect("work");
        assert!(root < work, "root disk must come first (/dev/vda)");
        assert!(!joined.contains("netdev"));
    }

    #[test]
    fn kvm_argv_has_no_tsc_and_a_nic_and_refuses_vsock() {
        let d = QemuDriver::new("/usr/bin/qemu-system-x86_64".into(), Accel::Kvm, 2_000_000);
        let mut s = spec();
        s.net = Some(NetSpec {
            tap: "bgr-tap0".into(),
            mac: MacAddr::derive("web-1"),
        });
        let a = args(&d, &s);
        let joined = a.join(" ");
        assert!(joined.contains("-accel kvm"));
        assert!(!joined.contains("tsc_early_khz"));
        assert!(joined.contains("tap,id=net0,ifname=bgr-tap0,script=no,downscript=no"));
        assert!(joined.contains(&format!("mac={}", MacAddr::derive("web-1"))));
        assert!(joined.contains("microvm,memory-backend=mem"));
        assert!(
            joined
                .contains("-sandbox on,obsolete=deny,elevateprivileges=deny,resourcecontrol=deny")
        );
        s.vsock = Some(VsockSpec {
            guest_cid: 3,
            uds_path: "/var/lib/banger/vms/web-1/v.sock".into(),
        });
        let err = d.argv(&s).expect_err("vsock under QEMU");
        assert!(err.to_string().contains("agent_port"), "{err}");
    }

    #[test]
    fn memory_backends_for_boot_and_restore() {
        let d = QemuDriver::new("/usr/bin/qemu-system-x86_64".into(), Accel::Tcg, 1);
        let mut s = spec();
        let joined = args(&d, &s).join(" ");
        assert!(
            joined.contains("memory-backend-ram,id=mem,size=1024M"),
            "{joined}"
        );
        assert!(!joined.contains("-incoming"));
        s.memory_file = Some("/dev/shm/banger/web-1.mem".into());
        let joined = args(&d, &s).join(" ");
        assert!(
            joined.contains(
                "memory-backend-file,id=mem,size=1024M,share=on,mem-path=/dev/shm/banger/web-1.mem"
            ),
            "{joined}"
        );
        let snap = Path::new("/var/lib/banger/snapshots/s/mem");
        let restore: Vec<String> = d
            .argv_with(&s, Memory::PrivateFile(snap))
            .expect("argv")
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = restore.join(" ");
        assert!(
            joined.contains("share=off,mem-path=/var/lib/banger/snapshots/s/mem"),
            "{joined}"
        );
        assert!(joined.ends_with("-S -incoming defer"), "{joined}");
        assert!(joined.contains("microvm,memory-backend=mem"));
    }

    #[test]
    fn a_qcow2_overlay_disk_is_passed_as_qcow2() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = QemuDriver::new("/usr/bin/qemu-system-x86_64".into(), Accel::Tcg, 1);
        let mut s = spec();
        s.root_disk = dir.path().join("root.qcow2");
        std::fs::write(&s.root_disk, b"QFI\xfb\0\0\0\x03").expect("write");
        s.work_disk = Some(dir.path().join("work.ext4"));
        std::fs::write(dir.path().join("work.ext4"), [0u8; 16]).expect("write");
        let joined = args(&d, &s).join(" ");
        assert!(joined.contains("format=qcow2,id=root"), "{joined}");
        assert!(joined.contains("format=raw,id=work"), "{joined}");
    }

    #[test]
    fn the_agent_port_is_a_virtio_serial_port_on_a_listening_chardev() {
        let d = QemuDriver::new("/usr/bin/qemu-system-x86_64".into(), Accel::Tcg, 1);
        let mut s = spec();
        assert!(!args(&d, &s).join(" ").contains("virtserialport"));
        s.agent_port = Some(AgentPortSpec {
            socket: "/var/lib/banger/vms/web-1/agent.sock".into(),
            name: "banger.agent".into(),
        });
        let joined = args(&d, &s).join(" ");
        assert!(joined.contains("-device virtio-serial-device"), "{joined}");
        assert!(
            joined.contains(
                "-chardev socket,id=agent,server=on,wait=off,path=/var/lib/banger/vms/web-1/agent.sock"
            ),
            "{joined}"
        );
        assert!(
            joined.contains("-device virtserialport,chardev=agent,name=banger.agent"),
            "{joined}"
        );
        assert!(!joined.contains("vhost-user"), "no vsock backend needed");
        s.agent_port = Some(AgentPortSpec {
            socket: "/tmp/a,b/agent.sock".into(),
            name: "banger.agent".into(),
        });
        assert!(matches!(d.argv(&s), Err(VmmError::InvalidSpec(_))));
    }

    #[test]
    fn commas_in_paths_are_rejected_not_misparsed() {
        let d = QemuDriver::new("/usr/bin/qemu-system-x86_64".into(), Accel::Tcg, 1);
        let mut s = spec();
        s.root_disk = "/tmp/a,b/root.ext4".into();
        assert!(matches!(d.argv(&s), Err(VmmError::InvalidSpec(_))));
    }
}
