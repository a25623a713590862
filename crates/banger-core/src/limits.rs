//! VM size limits: the one set that config, CLI flags, the daemon and the
//! VMM drivers all check against, so a value one layer accepts is never
//! refused by the next (config once took `vcpu = 48` that the daemon then
//! refused at `vm run`).

use thiserror::Error;

use crate::size::format_size;

/// Firecracker's ceiling, and the most a QEMU microvm guest gets here.
pub const MAX_VCPU: u32 = 32;
pub const MIN_VCPU: u32 = 1;
/// Below this a Debian guest does not finish booting.
pub const MIN_MEMORY_MIB: u64 = 128;
/// 1 TiB: beyond any host banger runs on; catches unit mistakes (`--memory 2T`).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// The work disk holds /root: smaller cannot hold a checkout and a build.
pub const MIN_DISK_BYTES: u64 = 256 << 20;
/// 16 TiB: ext4's limit with 4 KiB blocks and no 64bit feature.
pub const MAX_DISK_BYTES: u64 = 16 << 40;

/// A size outside the limits; the message names the value, the limit and
/// what to use instead.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("vcpu {0} is outside {MIN_VCPU}..={MAX_VCPU}; choose a count in that range")]
    Vcpu(u32),
    #[error(
        "memory {0} MiB is outside {MIN_MEMORY_MIB} MiB..={max}; use a size such as 2G",
        max = format_size(MAX_MEMORY_MIB << 20)
    )]
    Memory(u64),
    #[error(
        "disk {size} is outside {min}..={max}; use a size such as 16G",
        size = format_size(*.0),
        min = format_size(MIN_DISK_BYTES),
        max = format_size(MAX_DISK_BYTES)
    )]
    Disk(u64),
}

pub fn check_vcpu(n: u32) -> Result<u32, LimitError> {
    if (MIN_VCPU..=MAX_VCPU).contains(&n) {
        Ok(n)
    } else {
        Err(LimitError::Vcpu(n))
    }
}

pub fn check_memory_mib(m: u64) -> Result<u64, LimitError> {
    if (MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&m) {
        Ok(m)
    } else {
        Err(LimitError::Memory(m))
    }
}

pub fn check_disk_bytes(b: u64) -> Result<u64, LimitError> {
    if (MIN_DISK_BYTES..=MAX_DISK_BYTES).contains(&b) {
        Ok(b)
    } else {
        Err(LimitError::Disk(b))
    }
}

/// All three at once, as the daemon checks a resolved spec.
pub fn check_spec(vcpu: u32, memory_mib: u64, disk_bytes: u64) -> Result<(), LimitError> {
    check_vcpu(vcpu)?;
    check_memory_mib(memory_mib)?;
    check_disk_bytes(disk_bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_of_each_limit() {
        assert_eq!(check_vcpu(0), Err(LimitError::Vcpu(0)));
        assert_eq!(check_vcpu(1), Ok(1));
        assert_eq!(check_vcpu(32), Ok(32));
        assert_eq!(check_vcpu(48), Err(LimitError::Vcpu(48)));
        assert!(check_memory_mib(127).is_err());
        assert!(check_memory_mib(128).is_ok());
        assert!(check_memory_mib(MAX_MEMORY_MIB + 1).is_err());
        assert!(check_disk_bytes((256 << 20) - 1).is_err());
        assert!(check_disk_bytes(256 << 20).is_ok());
        assert!(check_disk_bytes(MAX_DISK_BYTES + 1).is_err());
        assert_eq!(
            LimitError::Vcpu(48).to_string(),
            "vcpu 48 is outside 1..=32; choose a count in that range"
        );
        assert_eq!(
            LimitError::Disk(1 << 20).to_string(),
            "disk 1M is outside 256M..=16T; use a size such as 16G"
        );
    }
}
