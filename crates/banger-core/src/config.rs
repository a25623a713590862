//! `config.toml`: every key optional, unknown keys and bad values rejected
//! with the file, line and key named, and every effective value reported
//! with where it came from.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use banger_proto::{EgressPolicy, Provenance, Sourced, VmSpec};
use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

use crate::size::{format_size, parse_size};

pub const DEFAULT_IMAGE_NAME: &str = "debian-bookworm";
pub const DEFAULT_BRIDGE: &str = "banger0";
pub const DEFAULT_SUBNET: &str = "172.16.0.0/24";
pub const DEFAULT_DNS_PORT: u16 = 53;
/// Interface names banger creates or touches must carry this prefix, so the
/// root helper can refuse to act on anything that is not banger's.
pub const IFNAME_PREFIX: &str = "banger";

/// Built-in floors for VM sizing.
pub const FLOOR_VCPU: u32 = 1;
pub const FLOOR_MEMORY_MIB: u64 = 1024;
pub const BUILTIN_DISK_BYTES: u64 = 8 << 30;
const MAX_HEURISTIC_VCPU: u32 = 4;
/// vCPUs a software-emulated guest gets by default where the host has them.
const TCG_MIN_VCPU: u32 = 2;
const MAX_HEURISTIC_MEMORY_MIB: u64 = 8 * 1024;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The message already names file, line, column and key.
    #[error("{0}")]
    Invalid(String),
    #[error("config file {path}: {message}")]
    Value { path: PathBuf, message: String },
}

/// Which VMM drives guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VmmChoice {
    #[default]
    Auto,
    Firecracker,
    Qemu,
}

impl fmt::Display for VmmChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmmChoice::Auto => "auto",
            VmmChoice::Firecracker => "firecracker",
            VmmChoice::Qemu => "qemu",
        })
    }
}

/// A path that is absolute or `~/`-anchored. Relative paths are rejected at
/// load time: what they are relative to would depend on where banger runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct AnchoredPath(pub String);

impl AnchoredPath {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("the path is empty".into());
        }
        if s.starts_with('/') || s.starts_with("~/") {
            Ok(AnchoredPath(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is a relative path; use an absolute path or one starting with ~/"
            ))
        }
    }

    /// Expands `~/` against `home`.
    pub fn expand(&self, home: &Path) -> PathBuf {
        match self.0.strip_prefix("~/") {
            Some(rest) => home.join(rest),
            None => PathBuf::from(&self.0),
        }
    }
}

impl<'de> Deserialize<'de> for AnchoredPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AnchoredPath::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A size such as `"16G"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSize(pub u64);

impl<'de> Deserialize<'de> for DiskSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bytes = parse_size(&s).map_err(serde::de::Error::custom)?;
        crate::limits::check_disk_bytes(bytes).map_err(serde::de::Error::custom)?;
        Ok(DiskSize(bytes))
    }
}

/// A file mode written as an octal string, `"0755"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let digits = s.strip_prefix("0o").unwrap_or(&s);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(Mode(m)),
            _ => Err(serde::de::Error::custom(format!(
                "mode {s:?} is not an octal file mode like \"0600\" or \"0755\""
            ))),
        }
    }
}

/// An IPv4 subnet in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("subnet {s:?} is not in CIDR form like \"172.16.0.0/24\""))?;
        let network: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("subnet {s:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("subnet {s:?}: {prefix:?} is not a prefix length"))?;
        if !(16..=29).contains(&prefix) {
            return Err(format!(
                "subnet {s:?}: prefix /{prefix} is outside /16../29 (banger needs room for a gateway and VMs, and no more than a /16)"
            ));
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(network) & !mask != 0 {
            let aligned = Ipv4Addr::from(u32::from(network) & mask);
            return Err(format!(
                "subnet {s:?}: {network} has host bits set; did you mean \"{aligned}/{prefix}\"?"
            ));
        }
        Ok(Subnet { network, prefix })
    }

    pub fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    /// The bridge's own address: the first host of the subnet.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// The RFC 1918 private range this subnet lies in, if any. VM subnets
    /// must be private: a public, loopback or link-local range on a bridge
    /// would hijack (or expose) addresses the host and its LAN really use.
    pub fn private_range(&self) -> Option<Subnet> {
        PRIVATE_RANGES.iter().copied().find(|r| {
            r.prefix <= self.prefix && u32::from(self.network) & r.mask() == u32::from(r.network)
        })
    }
}

/// RFC 1918's private IPv4 ranges.
pub const PRIVATE_RANGES: [Subnet; 3] = [
    Subnet {
        network: Ipv4Addr::new(10, 0, 0, 0),
        prefix: 8,
    },
    Subnet {
        network: Ipv4Addr::new(172, 16, 0, 0),
        prefix: 12,
    },
    Subnet {
        network: Ipv4Addr::new(192, 168, 0, 0),
        prefix: 16,
    },
];

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Subnet::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Checks a host interface name banger may own.
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if !name.starts_with(IFNAME_PREFIX) {
        return Err(format!(
            "interface name {name:?} does not start with {IFNAME_PREFIX:?}; banger only manages its own interfaces"
        ));
    }
    if name.len() > 15 {
        return Err(format!(
            "interface name {name:?} is longer than 15 characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "interface name {name:?} has a character other than a-z, 0-9, '-' and '_'"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct BridgeName(String);

/// `egress = "all" | "none" | "allow:NAME,…"` as written in the file.
#[derive(Debug)]
struct EgressText(EgressPolicy);

impl<'de> Deserialize<'de> for EgressText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(EgressText).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for BridgeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        validate_ifname(&s).map_err(serde::de::Error::custom)?;
        Ok(BridgeName(s))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ImageName(String);

impl<'de> Deserialize<'de> for ImageName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        crate::names::validate_image_name(&s).map_err(serde::de::Error::custom)?;
        Ok(ImageName(s))
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawVmDefaults {
    vcpu: Option<u32>,
    memory_mib: Option<u64>,
    disk_size: Option<DiskSize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileSync {
    host: AnchoredPath,
    guest: String,
    mode: Option<Mode>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    bridge: Option<BridgeName>,
    subnet: Option<Subnet>,
    no_egress: Option<bool>,
    egress: Option<EgressText>,
    isolate_vms: Option<bool>,
    block_lan: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    port: Option<u16>,
    listen: Option<Ipv4Addr>,
    auto_resolved: Option<bool>,
    upstream_resolv_conf: Option<AnchoredPath>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    default_image_name: Option<ImageName>,
    ssh_key_path: Option<AnchoredPath>,
    firecracker_bin: Option<AnchoredPath>,
    qemu_bin: Option<AnchoredPath>,
    vmm: Option<VmmChoice>,
    catalog_file: Option<AnchoredPath>,
    #[serde(default)]
    insecure_registries: Vec<String>,
    vm_defaults: Option<RawVmDefaults>,
    #[serde(default)]
    file_sync: Vec<RawFileSync>,
    network: Option<RawNetwork>,
    dns: Option<RawDns>,
}

/// One `[[file_sync]]` entry as written; paths are checked against the home
/// and /root when the sync runs, where the real filesystem can be consulted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileSync {
    pub host: AnchoredPath,
    pub guest: String,
    pub mode: Option<u32>,
}

/// The loaded configuration. `None` means "not set": the effective value and
/// its provenance come from the accessor methods.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The file this came from, if one existed.
    pub source: Option<PathBuf>,
    pub default_image_name: Option<String>,
    pub ssh_key_path: Option<AnchoredPath>,
    pub firecracker_bin: Option<AnchoredPath>,
    pub qemu_bin: Option<AnchoredPath>,
    pub vmm: Option<VmmChoice>,
    pub catalog_file: Option<AnchoredPath>,
    pub insecure_registries: Vec<String>,
    pub vcpu: Option<u32>,
    pub memory_mib: Option<u64>,
    pub disk_bytes: Option<u64>,
    pub file_sync: Vec<FileSync>,
    pub bridge: Option<String>,
    pub subnet: Option<Subnet>,
    pub no_egress: Option<bool>,
    pub egress: Option<EgressPolicy>,
    pub isolate_vms: Option<bool>,
    pub block_lan: Option<bool>,
    pub dns_port: Option<u16>,
    pub dns_listen: Option<Ipv4Addr>,
    pub dns_auto_resolved: Option<bool>,
    /// The resolv.conf whose nameservers answer guests' names outside
    /// `.vm`; default: systemd-resolved's uplinks, else /etc/resolv.conf.
    pub dns_upstream_resolv_conf: Option<AnchoredPath>,
}

/// What the host offers, for the sizing heuristics. Separate from the
/// probing so the rules are testable with any host shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    pub cpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// Guests run under software emulation (QEMU/TCG), not a hypervisor.
    pub emulated: bool,
}

impl HostFacts {
    /// CPU count and RAM of this host; `emulated` is false until the
    /// caller, who knows the VMM selection, says otherwise.
    pub fn probe() -> Self {
        HostFacts {
            cpus: crate::host::cpu_count(),
            memory_mib: crate::host::total_memory_mib(),
            emulated: false,
        }
    }

    pub fn emulated(self, emulated: bool) -> Self {
        HostFacts { emulated, ..self }
    }
}

/// A row of `banger config show`. An unset optional key is `null` in the
/// value (JSON readers get no placeholder strings); `note` says what that
/// means for people ("found on PATH").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShownValue {
    pub key: String,
    pub value: serde_json::Value,
    pub source: Provenance,
    #[serde(skip)]
    pub note: Option<&'static str>,
}

/// A shown value as it crosses to a client (`GET /v1/config`, `--json`).
impl From<ShownValue> for banger_proto::ConfigValue {
    fn from(r: ShownValue) -> Self {
        banger_proto::ConfigValue {
            key: r.key,
            value: r.value,
            source: r.source,
            note: r.note.map(str::to_string),
        }
    }
}

impl Config {
    /// Loads `path`; a file that does not exist is an empty config.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source: e,
            }),
        }
    }

    /// Loads the default config file (see [`crate::paths::config_file`]).
    pub fn load_default() -> Result<Config, ConfigError> {
        match crate::paths::config_file() {
            Some(p) => Config::load(&p),
            None => Ok(Config::default()),
        }
    }

    /// Parses config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| locate(text, path, &e))?;
        let vmd = raw.vm_defaults.unwrap_or_default();
        // The limits every layer shares (crate::limits).
        let limit = |e: crate::limits::LimitError| ConfigError::Value {
            path: path.into(),
            message: format!("[vm_defaults] {e}"),
        };
        if let Some(v) = vmd.vcpu {
            crate::limits::check_vcpu(v).map_err(limit)?;
        }
        if let Some(m) = vmd.memory_mib {
            crate::limits::check_memory_mib(m).map_err(limit)?;
        }
        let mut file_sync = Vec::new();
        for (i, fs) in raw.file_sync.into_iter().enumerate() {
            let guest_ok = fs.guest.starts_with("~/") || fs.guest.starts_with("/root/");
            if !guest_ok || fs.guest.split('/').any(|c| c == "..") {
                return Err(ConfigError::Value {
                    path: path.into(),
                    message: format!(
                        "[[file_sync]] entry {} guest path {:?} must be under ~/ or /root/ with no '..'",
                        i + 1,
                        fs.guest
                    ),
                });
            }
            file_sync.push(FileSync {
                host: fs.host,
                guest: fs.guest,
                mode: fs.mode.map(|m| m.0),
            });
        }
        let net = raw.network.unwrap_or_default();
        if let Some(sub) = net.subnet
            && sub.private_range().is_none()
        {
            // The root helper refuses such a bridge; say so here, before an
            // install writes units that could never start.
            return Err(ConfigError::Value {
                path: path.into(),
                message: format!(
                    "[network] subnet {sub} is not inside a private range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16); choose a free private /24"
                ),
            });
        }
        let dns = raw.dns.unwrap_or_default();
        Ok(Config {
            source: Some(path.to_path_buf()),
            default_image_name: raw.default_image_name.map(|n| n.0),
            ssh_key_path: raw.ssh_key_path,
            firecracker_bin: raw.firecracker_bin,
            qemu_bin: raw.qemu_bin,
            vmm: raw.vmm,
            catalog_file: raw.catalog_file,
            insecure_registries: raw.insecure_registries,
            vcpu: vmd.vcpu,
            memory_mib: vmd.memory_mib,
            disk_bytes: vmd.disk_size.map(|d| d.0),
            file_sync,
            bridge: net.bridge.map(|b| b.0),
            subnet: net.subnet,
            no_egress: net.no_egress,
            egress: net.egress.map(|e| e.0),
            isolate_vms: net.isolate_vms,
            block_lan: net.block_lan,
            dns_port: dns.port,
            dns_listen: dns.listen,
            dns_auto_resolved: dns.auto_resolved,
            dns_upstream_resolv_conf: dns.upstream_resolv_conf,
        })
    }

    /// Effective VM sizing: config, else host heuristics, else the built-in
    /// floor — with where each value came from.
    pub fn vm_defaults(&self, host: HostFacts) -> VmSpec {
        let vcpu = match (self.vcpu, host.cpus) {
            (Some(v), _) => Sourced::new(v, Provenance::Config),
            (None, Some(c)) if (c / 4) >= FLOOR_VCPU => {
                Sourced::new((c / 4).min(MAX_HEURISTIC_VCPU), Provenance::HostHeuristic)
            }
            _ => Sourced::new(FLOOR_VCPU, Provenance::BuiltIn),
        };
        // Under TCG each vCPU is a host thread doing the guest's work in
        // software: with one, the default image boots in about two minutes
        // (measured), with two in about one.
        let vcpu = match host.cpus {
            Some(c)
                if host.emulated
                    && vcpu.source != Provenance::Config
                    && vcpu.value < TCG_MIN_VCPU
                    && c >= TCG_MIN_VCPU =>
            {
                Sourced::new(TCG_MIN_VCPU, Provenance::TcgHeuristic)
            }
            _ => vcpu,
        };
        let memory_mib = match (self.memory_mib, host.memory_mib) {
            (Some(m), _) => Sourced::new(m, Provenance::Config),
            (None, Some(h)) if h / 8 >= FLOOR_MEMORY_MIB => Sourced::new(
                (h / 8).min(MAX_HEURISTIC_MEMORY_MIB),
                Provenance::HostHeuristic,
            ),
            _ => Sourced::new(FLOOR_MEMORY_MIB, Provenance::BuiltIn),
        };
        let disk_bytes = match self.disk_bytes {
            Some(d) => Sourced::new(d, Provenance::Config),
            None => Sourced::new(BUILTIN_DISK_BYTES, Provenance::BuiltIn),
        };
        VmSpec {
            vcpu,
            memory_mib,
            disk_bytes,
        }
    }

    pub fn image_name(&self) -> Sourced<String> {
        sourced(
            self.default_image_name.clone(),
            DEFAULT_IMAGE_NAME.to_string(),
        )
    }

    pub fn vmm_choice(&self) -> Sourced<VmmChoice> {
        sourced(self.vmm, VmmChoice::Auto)
    }

    pub fn bridge_name(&self) -> Sourced<String> {
        sourced(self.bridge.clone(), DEFAULT_BRIDGE.to_string())
    }

    pub fn vm_subnet(&self) -> Sourced<Subnet> {
        let builtin = Subnet::parse(DEFAULT_SUBNET).unwrap_or(Subnet {
            network: Ipv4Addr::new(172, 16, 0, 0),
            prefix: 24,
        });
        sourced(self.subnet, builtin)
    }

    /// Where the `.vm` server listens: `[dns] listen` (else the bridge
    /// gateway) on `[dns] port`.
    pub fn dns_socket_addr(&self) -> std::net::SocketAddr {
        let ip = self
            .dns_listen
            .unwrap_or_else(|| self.vm_subnet().value.gateway());
        std::net::SocketAddr::from((ip, self.dns_port().value))
    }

    /// `[dns] upstream_resolv_conf`, expanded; `None`: the host's own
    /// (systemd-resolved's uplinks, else /etc/resolv.conf).
    pub fn dns_upstream_file(&self, home: &Path) -> Option<PathBuf> {
        self.dns_upstream_resolv_conf
            .as_ref()
            .map(|p| p.expand(home))
    }

    pub fn dns_port(&self) -> Sourced<u16> {
        sourced(self.dns_port, DEFAULT_DNS_PORT)
    }

    pub fn egress_blocked(&self) -> Sourced<bool> {
        sourced(self.no_egress, false)
    }

    /// The egress policy of new VMs: `no_egress = true` means none;
    /// else `egress`, else all.
    pub fn egress(&self) -> Sourced<EgressPolicy> {
        match (self.no_egress, &self.egress) {
            (Some(true), _) => Sourced::new(EgressPolicy::None, Provenance::Config),
            (_, Some(e)) => Sourced::new(e.clone(), Provenance::Config),
            _ => Sourced::new(EgressPolicy::All, Provenance::BuiltIn),
        }
    }

    /// Whether VMs are kept from reaching each other (default: yes; a
    /// sandbox should not reach its siblings unless asked).
    pub fn isolate_vms(&self) -> Sourced<bool> {
        sourced(self.isolate_vms, true)
    }

    /// Whether VMs are kept from the private (RFC 1918 and CGNAT) ranges
    /// of the host's LAN (default: yes).
    pub fn block_lan(&self) -> Sourced<bool> {
        sourced(self.block_lan, true)
    }

    /// The ssh key banger uses: configured (expanded against `home`) or
    /// `~/.local/state/banger/ssh/id_ed25519`.
    pub fn ssh_key(&self, home: &Path) -> Sourced<PathBuf> {
        match &self.ssh_key_path {
            Some(p) => Sourced::new(p.expand(home), Provenance::Config),
            None => Sourced::new(
                home.join(".local/state/banger/ssh/id_ed25519"),
                Provenance::BuiltIn,
            ),
        }
    }

    /// Every effective value with its provenance, in a stable order.
    pub fn show(&self, host: HostFacts, home: &Path) -> Vec<ShownValue> {
        use serde_json::json;
        let mut rows = Vec::new();
        let mut push = |key: &str, value: serde_json::Value, source: Provenance| {
            let note = match (key, &value) {
                ("firecracker_bin" | "qemu_bin", serde_json::Value::Null) => Some("found on PATH"),
                ("catalog_file", serde_json::Value::Null) => Some("the embedded catalog"),
                _ => None,
            };
            rows.push(ShownValue {
                key: key.into(),
                value,
                source,
                note,
            })
        };
        let s = self.image_name();
        push("default_image_name", json!(s.value), s.source);
        let s = self.ssh_key(home);
        push("ssh_key_path", json!(s.value), s.source);
        let opt_path = |p: &Option<AnchoredPath>| match p {
            Some(p) => (json!(p.expand(home)), Provenance::Config),
            None => (serde_json::Value::Null, Provenance::BuiltIn),
        };
        let (v, src) = opt_path(&self.firecracker_bin);
        push("firecracker_bin", v, src);
        let (v, src) = opt_path(&self.qemu_bin);
        push("qemu_bin", v, src);
        let s = self.vmm_choice();
        push("vmm", json!(s.value.to_string()), s.source);
        let (v, src) = match &self.catalog_file {
            Some(p) => (json!(p.expand(home)), Provenance::Config),
            None => (serde_json::Value::Null, Provenance::BuiltIn),
        };
        push("catalog_file", v, src);
        push(
            "insecure_registries",
            json!(self.insecure_registries),
            if self.insecure_registries.is_empty() {
                Provenance::BuiltIn
            } else {
                Provenance::Config
            },
        );
        let spec = self.vm_defaults(host);
        push("vm_defaults.vcpu", json!(spec.vcpu.value), spec.vcpu.source);
        push(
            "vm_defaults.memory_mib",
            json!(spec.memory_mib.value),
            spec.memory_mib.source,
        );
        push(
            "vm_defaults.disk_size",
            json!(format_size(spec.disk_bytes.value)),
            spec.disk_bytes.source,
        );
        push(
            "file_sync",
            json!(self.file_sync),
            if self.file_sync.is_empty() {
                Provenance::BuiltIn
            } else {
                Provenance::Config
            },
        );
        let s = self.bridge_name();
        push("network.bridge", json!(s.value), s.source);
        let s = self.vm_subnet();
        push("network.subnet", json!(s.value.to_string()), s.source);
        let s = self.egress_blocked();
        push("network.no_egress", json!(s.value), s.source);
        let s = self.egress();
        push("network.egress", json!(s.value.to_string()), s.source);
        let s = self.isolate_vms();
        push("network.isolate_vms", json!(s.value), s.source);
        let s = self.block_lan();
        push("network.block_lan", json!(s.value), s.source);
        let s = self.dns_port();
        push("dns.port", json!(s.value), s.source);
        let (v, src) = match self.dns_listen {
            Some(a) => (json!(a.to_string()), Provenance::Config),
            None => (
                json!(self.vm_subnet().value.gateway().to_string()),
                Provenance::BuiltIn,
            ),
        };
        push("dns.listen", v, src);
        let s = sourced(self.dns_auto_resolved, true);
        push("dns.auto_resolved", json!(s.value), s.source);
        let (v, src) = match &self.dns_upstream_resolv_conf {
            Some(p) => (json!(p.expand(home)), Provenance::Config),
            None => (
                json!("/run/systemd/resolve/resolv.conf, else /etc/resolv.conf"),
                Provenance::BuiltIn,
            ),
        };
        push("dns.upstream_resolv_conf", v, src);
        rows
    }
}

fn sourced<T>(v: Option<T>, default: T) -> Sourced<T> {
    match v {
        Some(v) => Sourced::new(v, Provenance::Config),
        None => Sourced::new(default, Provenance::BuiltIn),
    }
}

/// Turns a toml error into `file:line:col: [table] key: message`.
fn locate(text: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let msg = e.message().trim().replace('\n', "; ");
    let Some(span) = e.span() else {
        return ConfigError::Invalid(format!("{}: {msg}", path.display()));
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = text[line_start..start].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.to_string());
    let mut whereabouts = String::new();
    if let Some(t) = &table {
        whereabouts.push_str(t);
        whereabouts.push(' ');
    }
    if let Some(k) = &key {
        whereabouts.push_str(&format!("key `{k}`"));
    } else if table.is_none() {
        whereabouts.push_str("top level");
    }
    ConfigError::Invalid(format!(
        "{}:{line_no}:{col}: {}: {msg}",
        path.display(),
        whereabouts.trim_end()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/cfg/config.toml")).map_err(|e| e.to_string())
    }

    const HOST: HostFacts = HostFacts {
        cpus: Some(16),
        memory_mib: Some(32 * 1024),
        emulated: false,
    };

    #[test]
    fn empty_config_is_all_defaults() {
        let c = parse("").expect("empty config");
        assert_eq!(
            c.image_name(),
            Sourced::new(DEFAULT_IMAGE_NAME.into(), Provenance::BuiltIn)
        );
        assert_eq!(c.vmm_choice().value, VmmChoice::Auto);
        assert_eq!(c.bridge_name().value, "banger0");
        assert_eq!(c.vm_subnet().value.to_string(), "172.16.0.0/24");
        assert_eq!(c.vm_subnet().value.gateway().to_string(), "172.16.0.1");
    }

    #[test]
    fn full_config_parses() {
        let c = parse(
            r#"
default_image_name = "debian-bookworm"
ssh_key_path = "~/.ssh/id_ed25519"
firecracker_bin = "/opt/fc/firecracker"
vmm = "qemu"

[vm_defaults]
vcpu = 4
memory_mib = 4096
disk_size = "16G"

[[file_sync]]
host = "~/.aws"
guest = "~/.aws"

[[file_sync]]
host = "~/bin/my-script"
guest = "~/bin/my-script"
mode = "0755"

[network]
bridge = "banger1"
subnet = "10.99.0.0/24"
no_egress = true

[dns]
port = 5353
upstream_resolv_conf = "/run/NetworkManager/no-stub-resolv.conf"
"#,
        )
        .expect("valid config");
        assert_eq!(c.vmm, Some(VmmChoice::Qemu));
        assert_eq!(c.file_sync.len(), 2);
        assert_eq!(c.file_sync[1].mode, Some(0o755));
        assert_eq!(c.disk_bytes, Some(16 << 30));
        assert_eq!(
            c.ssh_key(Path::new("/home/u")),
            Sourced::new(PathBuf::from("/home/u/.ssh/id_ed25519"), Provenance::Config)
        );
        let spec = c.vm_defaults(HOST);
        assert_eq!(spec.vcpu, Sourced::new(4, Provenance::Config));
        assert_eq!(spec.memory_mib, Sourced::new(4096, Provenance::Config));
        assert_eq!(spec.disk_bytes, Sourced::new(16 << 30, Provenance::Config));
        assert_eq!(c.dns_port(), Sourced::new(5353, Provenance::Config));
        assert_eq!(
            c.dns_upstream_resolv_conf
                .as_ref()
                .map(|p| p.expand(Path::new("/home/u"))),
            Some(PathBuf::from("/run/NetworkManager/no-stub-resolv.conf"))
        );
    }

    /// Each invalid file and the exact error it must produce.
    #[test]
    fn invalid_configs_name_file_line_and_key() {
        let table: &[(&str, &str)] = &[
            (
                "colour = 1\n",
                "/cfg/config.toml:1:1: key `colour`: unknown field `colour`, expected one of `default_image_name`, `ssh_key_path`, `firecracker_bin`, `qemu_bin`, `vmm`, `catalog_file`, `insecure_registries`, `vm_defaults`, `file_sync`, `network`, `dns`",
            ),
            (
                "vmm = \"kvm\"\n",
                "/cfg/config.toml:1:7: key `vmm`: unknown variant `kvm`, expected one of `auto`, `firecracker`, `qemu`",
            ),
            (
                "ssh_key_path = \"keys/id\"\n",
                "/cfg/config.toml:1:16: key `ssh_key_path`: \"keys/id\" is a relative path; use an absolute path or one starting with ~/",
            ),
            (
                "[vm_defaults]\nvcpu = \"four\"\n",
                "/cfg/config.toml:2:8: [vm_defaults] key `vcpu`: invalid type: string \"four\", expected u32",
            ),
            (
                "[vm_defaults]\nvcpu = 2\ndisk_size = \"16Q\"\n",
                "/cfg/config.toml:3:13: [vm_defaults] key `disk_size`: invalid size \"16Q\": the unit is not one of K, M, G, T (use a whole number with a unit, like \"512M\", \"16G\" or \"1T\")",
            ),
            (
                "[vm_defaults]\nmemory = 4096\n",
                "/cfg/config.toml:2:1: [vm_defaults] key `memory`: unknown field `memory`, expected one of `vcpu`, `memory_mib`, `disk_size`",
            ),
            (
                "[network]\nsubnet = \"172.16.0.1/24\"\n",
                "/cfg/config.toml:2:10: [network] key `subnet`: subnet \"172.16.0.1/24\": 172.16.0.1 has host bits set; did you mean \"172.16.0.0/24\"?",
            ),
            (
                "[network]\nbridge = \"eth0\"\n",
                "/cfg/config.toml:2:10: [network] key `bridge`: interface name \"eth0\" does not start with \"banger\"; banger only manages its own interfaces",
            ),
            (
                "[[file_sync]]\nhost = \"~/x\"\nguest = \"~/x\"\nmode = \"rwx\"\n",
                "/cfg/config.toml:4:8: [[file_sync]] key `mode`: mode \"rwx\" is not an octal file mode like \"0600\" or \"0755\"",
            ),
            (
                "[[file_sync]]\nhost = \"~/x\"\nguest = \"/etc/x\"\n",
                "config file /cfg/config.toml: [[file_sync]] entry 1 guest path \"/etc/x\" must be under ~/ or /root/ with no '..'",
            ),
            (
                "[vm_defaults]\nvcpu = 0\n",
                "config file /cfg/config.toml: [vm_defaults] vcpu 0 is outside 1..=32; choose a count in that range",
            ),
            (
                "[vm_defaults]\nvcpu = 48\n",
                "config file /cfg/config.toml: [vm_defaults] vcpu 48 is outside 1..=32; choose a count in that range",
            ),
            (
                "[vm_defaults]\ndisk_size = \"1M\"\n",
                "/cfg/config.toml:2:13: [vm_defaults] key `disk_size`: disk 1M is outside 256M..=16T; use a size such as 16G",
            ),
            (
                "default_image_name = \"Debian\"\n",
                "/cfg/config.toml:1:22: key `default_image_name`: invalid image name \"Debian\": it has a character other than a-z, 0-9, '.', '_' and '-' (use 1-64 lowercase letters, digits, '.', '_' and '-', starting with a letter or digit, like \"debian-bookworm\")",
            ),
            (
                "vmm = \n",
                "/cfg/config.toml:1:7: key `vmm`: invalid string; expected `\"`, `'`",
            ),
        ];
        for (text, want) in table {
            let got = parse(text).expect_err(text);
            assert_eq!(&got, want, "for config {text:?}");
        }
    }

    #[test]
    fn heuristics_and_floors() {
        let c = Config::default();
        let spec = c.vm_defaults(HOST);
        assert_eq!(spec.vcpu, Sourced::new(4, Provenance::HostHeuristic));
        assert_eq!(
            spec.memory_mib,
            Sourced::new(4096, Provenance::HostHeuristic)
        );
        assert_eq!(spec.disk_bytes, Sourced::new(8 << 30, Provenance::BuiltIn));

        let huge = HostFacts {
            cpus: Some(128),
            memory_mib: Some(1024 * 1024),
            emulated: false,
        };
        let spec = c.vm_defaults(huge);
        assert_eq!(spec.vcpu.value, 4, "capped at 4");
        assert_eq!(spec.memory_mib.value, 8192, "capped at 8 GiB");

        let tiny = HostFacts {
            cpus: Some(2),
            memory_mib: Some(2048),
            emulated: false,
        };
        let spec = c.vm_defaults(tiny);
        assert_eq!(spec.vcpu, Sourced::new(1, Provenance::BuiltIn));
        assert_eq!(spec.memory_mib, Sourced::new(1024, Provenance::BuiltIn));

        let unknown = HostFacts {
            cpus: None,
            memory_mib: None,
            emulated: false,
        };
        assert_eq!(c.vm_defaults(unknown).vcpu.source, Provenance::BuiltIn);
    }

    #[test]
    fn software_emulation_gets_two_vcpus_where_the_host_has_them() {
        let c = Config::default();
        let two_cores = HostFacts {
            cpus: Some(2),
            memory_mib: Some(24 * 1024),
            emulated: true,
        };
        let spec = c.vm_defaults(two_cores);
        assert_eq!(spec.vcpu, Sourced::new(2, Provenance::TcgHeuristic));
        assert!(spec.vcpu.source.to_string().contains("TCG"));
        assert_eq!(spec.memory_mib.value, 3072);
        // the same host under a hypervisor keeps the plain heuristic
        assert_eq!(
            c.vm_defaults(two_cores.emulated(false)).vcpu,
            Sourced::new(1, Provenance::BuiltIn)
        );
        // a 1-CPU host cannot give two
        let one = HostFacts {
            cpus: Some(1),
            ..two_cores
        };
        assert_eq!(c.vm_defaults(one).vcpu.value, 1);
        // bigger hosts keep their larger heuristic
        let big = HostFacts {
            cpus: Some(16),
            ..two_cores
        };
        assert_eq!(
            c.vm_defaults(big).vcpu,
            Sourced::new(4, Provenance::HostHeuristic)
        );
        // the user's choice wins
        let c = parse("[vm_defaults]\nvcpu = 1\n").expect("valid");
        assert_eq!(
            c.vm_defaults(two_cores).vcpu,
            Sourced::new(1, Provenance::Config)
        );
    }

    #[test]
    fn partial_config_mixes_provenance() {
        let c = parse("[vm_defaults]\nvcpu = 3\n").expect("valid");
        let spec = c.vm_defaults(HOST);
        assert_eq!(spec.vcpu.source, Provenance::Config);
        assert_eq!(spec.memory_mib.source, Provenance::HostHeuristic);
        assert_eq!(spec.disk_bytes.source, Provenance::BuiltIn);
    }

    #[test]
    fn home_expansion() {
        let p = AnchoredPath::parse("~/k").expect("anchored");
        assert_eq!(p.expand(Path::new("/home/x")), PathBuf::from("/home/x/k"));
        let p = AnchoredPath::parse("/abs/k").expect("absolute");
        assert_eq!(p.expand(Path::new("/home/x")), PathBuf::from("/abs/k"));
        assert!(AnchoredPath::parse("~user/k").is_err());
        assert!(AnchoredPath::parse("./k").is_err());
        assert!(AnchoredPath::parse("").is_err());
    }

    #[test]
    fn missing_file_is_empty_config_unreadable_is_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Config::load(&dir.path().join("nope.toml")).expect("missing is fine");
        assert!(c.source.is_none());
        let err = Config::load(dir.path()).expect_err("a directory is not a config file");
        assert!(
            err.to_string().starts_with("cannot read config file"),
            "{err}"
        );
    }

    #[test]
    fn show_lists_every_key_once_with_provenance() {
        let c = parse("vmm = \"qemu\"\n").expect("valid");
        let rows = c.show(HOST, Path::new("/home/u"));
        let keys: Vec<_> = rows.iter().map(|r| r.key.as_str()).collect();
        let mut dedup = keys.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), keys.len());
        let vmm = rows.iter().find(|r| r.key == "vmm").expect("vmm row");
        assert_eq!(vmm.source, Provenance::Config);
        let vcpu = rows
            .iter()
            .find(|r| r.key == "vm_defaults.vcpu")
            .expect("vcpu row");
        assert_eq!(vcpu.source, Provenance::HostHeuristic);
        // unset optional keys are null, not placeholder strings
        let qemu = rows.iter().find(|r| r.key == "qemu_bin").expect("qemu row");
        assert_eq!(qemu.value, serde_json::Value::Null);
        assert_eq!(qemu.note, Some("found on PATH"));
    }

    #[test]
    fn subnet_rules() {
        let s = Subnet::parse("10.0.0.0/16").expect("valid");
        assert!(s.contains("10.0.255.3".parse().expect("ip")));
        assert!(!s.contains("10.1.0.1".parse().expect("ip")));
        assert_eq!(s.broadcast().to_string(), "10.0.255.255");
        assert!(Subnet::parse("10.0.0.0/8").is_err());
        assert!(Subnet::parse("10.0.0.0/30").is_err());
        assert!(Subnet::parse("10.0.0.0").is_err());
        assert!(Subnet::parse("300.0.0.0/24").is_err());
        let e = Config::parse(
            "[network]\nsubnet = \"198.19.77.0/24\"\n",
            Path::new("/c.toml"),
        )
        .expect_err("not private")
        .to_string();
        assert!(e.contains("not inside a private range"), "{e}");
        assert!(
            Config::parse(
                "[network]\nsubnet = \"192.168.77.0/24\"\n",
                Path::new("/c.toml")
            )
            .is_ok()
        );
    }

    #[test]
    fn egress_policy_from_config() {
        let p = Path::new("c.toml");
        let c = Config::parse("[network]\negress = \"allow:github.com,pypi.org\"\n", p)
            .expect("config");
        assert_eq!(c.egress().value.to_string(), "allow:github.com,pypi.org");
        assert_eq!(c.egress().source, Provenance::Config);
        let c = Config::parse("[network]\negress = \"allow:x.org\"\nno_egress = true\n", p)
            .expect("config");
        assert_eq!(c.egress().value, EgressPolicy::None, "no_egress wins");
        assert_eq!(Config::default().egress().value, EgressPolicy::All);
        let e = Config::parse("[network]\negress = \"allow:\"\n", p).expect_err("empty list");
        assert!(e.to_string().contains("egress policy"), "{e}");
        let c = Config::parse("[network]\nisolate_vms = false\n", p).expect("config");
        assert!(!c.isolate_vms().value);
        assert!(c.block_lan().value);
    }
}
