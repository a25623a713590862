//! The command tree. Raw arguments become these types; each command module
//! turns them into validated settings before doing anything.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::engine::ArgValueCandidates;

use crate::completion::{image_names, kernel_names, vm_names};

const AFTER_HELP: &str = "\
Examples:
  banger vm run                        bare sandbox, drops into ssh
  banger vm run ./repo                 workspace at /root/repo, drops into ssh
  banger vm run ./repo -- make test    run a command, exit with its status
  banger vm run --rm -- ./script.sh    ephemeral: the VM is deleted on exit

Global option (accepted after any command):
  --socket <PATH>  bangerd's API socket; default $BANGER_SOCKET if set and not
                   empty, else /run/banger/bangerd.sock

Config: ~/.config/banger/config.toml (see `banger config show`).";

/// One-command development sandboxes on Firecracker microVMs.
///
/// banger gives you a fresh Linux machine with ssh in seconds. The owner
/// daemon (bangerd) keeps state and runs VMs; this command talks to it.
#[derive(Debug, Parser)]
#[command(name = "banger", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    /// Path of bangerd's API socket.
    // Not clap's `env`: an empty BANGER_SOCKET must mean unset, and clap
    // would refuse it for every command (`completion` included). Accepted
    // after any subcommand; described once, in AFTER_HELP.
    #[arg(long, global = true, value_name = "PATH", hide = true)]
    pub socket: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, run and manage VMs.
    #[command(after_help = "Examples:\n  banger vm run\n  banger vm list")]
    #[command(subcommand)]
    Vm(VmCommand),
    /// Pull, build and manage guest images.
    #[command(after_help = "Examples:\n  banger image list\n  banger image pull python:3.12-slim")]
    #[command(subcommand)]
    Image(ImageCommand),
    /// Manage guest kernels.
    #[command(after_help = "Examples:\n  banger kernel list")]
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// Check that this host can run banger, and say how to fix what is missing.
    #[command(
        after_help = "Examples:\n  banger doctor\n  banger doctor --json | jq '.checks[] | select(.status != \"ok\")'"
    )]
    Doctor(JsonFlag),
    /// Show banger's configuration.
    #[command(after_help = "Examples:\n  banger config show")]
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Install, inspect and remove banger's system services.
    #[command(
        after_help = "Examples:\n  sudo banger system install --owner \"$USER\"\n  banger system status"
    )]
    #[command(subcommand)]
    System(SystemCommand),
    /// Show, install or remove the `Include` that lets plain `ssh <name>.vm` work.
    #[command(
        after_help = "Examples:\n  banger ssh-config --install   # then: ssh dev.vm\n  banger ssh-config --uninstall"
    )]
    SshConfig(SshConfigArgs),
    /// Print a shell completion script (with live VM, image and kernel names).
    #[command(after_help = COMPLETION_HELP)]
    Completion(CompletionArgs),
}

#[derive(Debug, Args, Clone, Copy)]
pub struct JsonFlag {
    /// Print machine-readable JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A VM's size flags: `vm run`, `vm create` and `image warm` (whose shape
/// is the VM `vm run` would make with the same flags).
#[derive(Debug, Args, Clone, Default)]
pub struct Sizes {
    /// Number of vCPUs.
    #[arg(long)]
    pub vcpu: Option<u32>,
    /// Memory: MiB as a number, or a size such as 2G.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Size of the work disk mounted at /root, such as 16G.
    #[arg(long, value_name = "SIZE")]
    pub disk: Option<String>,
}

/// Sizing and placement flags shared by `vm run` and `vm create`.
#[derive(Debug, Args, Clone, Default)]
pub struct VmShape {
    /// Name of the VM (a DNS label: it becomes <name>.vm). Default: a random name.
    #[arg(long)]
    pub name: Option<String>,
    /// Image to boot. Default: default_image_name from config (debian-bookworm).
    #[arg(long, add = ArgValueCandidates::new(image_names))]
    pub image: Option<String>,
    #[command(flatten)]
    pub sizes: Sizes,
    /// Cut the VM off from the outside world; the host can still reach it.
    #[arg(long, conflicts_with = "egress")]
    pub no_egress: bool,
    /// Boot the VM even when its shape has a warm snapshot to restore from
    /// (see docs/snapshots.md).
    #[arg(long)]
    pub cold: bool,
    /// Where the VM may connect: all, none, or allow:NAME[,NAME…] (only the
    /// addresses banger's DNS resolves for those names; *.example.com for
    /// the names under example.com). Default: `egress` under [network].
    #[arg(long, value_name = "POLICY", value_parser = parse_egress)]
    pub egress: Option<banger_proto::EgressPolicy>,
}

fn parse_egress(s: &str) -> Result<banger_proto::EgressPolicy, String> {
    s.parse()
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create a VM, start it, and drop into ssh or run a command.
    ///
    /// With PATH, the repository's git-tracked files are copied to /root/repo
    /// first. With `-- CMD…`, CMD runs in the guest and banger exits with its
    /// status.
    #[command(
        after_help = "Examples:\n  banger vm run\n  banger vm run ./repo -- make test\n  banger vm run --rm --name scratch --memory 4G\n  banger vm run --egress none ./repo -- ./untrusted-build.sh"
    )]
    Run(VmRunArgs),
    /// Create a VM (and start it unless --no-start).
    #[command(
        after_help = "Examples:\n  banger vm create --name dev --vcpu 4 --disk 32G\n  banger vm create --no-start --json"
    )]
    Create(VmCreateArgs),
    /// Start a stopped VM.
    #[command(after_help = "Examples:\n  banger vm start dev")]
    Start(VmName),
    /// Stop a running VM: clean shutdown, then force after a timeout.
    #[command(after_help = "Examples:\n  banger vm stop dev")]
    Stop(VmName),
    /// Stop and start a VM.
    #[command(after_help = "Examples:\n  banger vm restart dev")]
    Restart(VmName),
    /// Delete a VM and everything it owns (disks, address, sockets).
    #[command(alias = "rm")]
    #[command(after_help = "Examples:\n  banger vm delete dev\n  banger vm rm dev")]
    Delete(VmName),
    /// List VMs.
    #[command(alias = "ls")]
    #[command(
        after_help = "Examples:\n  banger vm list\n  banger vm list --json | jq -r '.[].name'"
    )]
    List(JsonFlag),
    /// Show one VM.
    #[command(after_help = "Examples:\n  banger vm show dev\n  banger vm show dev --json")]
    Show(VmShowArgs),
    /// Open an ssh session to a VM, or run a command over ssh.
    #[command(after_help = "Examples:\n  banger vm ssh dev\n  banger vm ssh dev -- uname -a")]
    Ssh(VmSshArgs),
    /// Show a VM's serial console log.
    #[command(after_help = "Examples:\n  banger vm logs dev\n  banger vm logs -f dev")]
    Logs(VmLogsArgs),
    /// Run a command in a VM through the guest agent (no ssh).
    #[command(
        after_help = "Examples:\n  banger vm exec dev -- systemctl is-system-running\n  banger vm exec -t dev -- htop"
    )]
    Exec(VmExecArgs),
    /// Copy files between the host and a VM (NAME:PATH names the guest side).
    #[command(
        after_help = "Examples:\n  banger vm cp ./notes.txt dev:/root/\n  banger vm cp dev:/root/repo/build ./build"
    )]
    Cp(VmCpArgs),
}

#[derive(Debug, Args)]
pub struct VmRunArgs {
    #[command(flatten)]
    pub shape: VmShape,
    /// Delete the VM when the session or command ends.
    #[arg(long)]
    pub rm: bool,
    /// Also ship untracked files that are not ignored (workspace mode).
    #[arg(long)]
    pub include_untracked: bool,
    /// Print the files that would be copied and exit without creating a VM.
    #[arg(long)]
    pub dry_run: bool,
    /// Ship the tree of this branch instead of the working tree.
    #[arg(long, conflicts_with = "from")]
    pub branch: Option<String>,
    /// Ship the tree of this commit-ish instead of the working tree.
    #[arg(long)]
    pub from: Option<String>,
    /// Print how long each phase took.
    #[arg(long)]
    pub timings: bool,
    /// Repository to copy into /root/repo (workspace mode).
    pub path: Option<PathBuf>,
    /// Command to run in the guest (after `--`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct VmCreateArgs {
    #[command(flatten)]
    pub shape: VmShape,
    /// Only create the VM; do not start it.
    #[arg(long)]
    pub no_start: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct VmName {
    /// Name of the VM.
    #[arg(add = ArgValueCandidates::new(vm_names))]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct VmShowArgs {
    /// Name of the VM.
    #[arg(add = ArgValueCandidates::new(vm_names))]
    pub name: String,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct VmSshArgs {
    /// Name of the VM.
    #[arg(add = ArgValueCandidates::new(vm_names))]
    pub name: String,
    /// Command to run instead of an interactive shell (after `--`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct VmLogsArgs {
    /// Name of the VM.
    #[arg(add = ArgValueCandidates::new(vm_names))]
    pub name: String,
    /// Keep printing new output until interrupted.
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct VmExecArgs {
    /// Name of the VM.
    #[arg(add = ArgValueCandidates::new(vm_names))]
    pub name: String,
    /// Allocate a terminal for the command.
    #[arg(long, short)]
    pub tty: bool,
    /// Command to run (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct VmCpArgs {
    /// Source: a host path, or NAME:PATH in a VM.
    pub src: String,
    /// Destination: a host path, or NAME:PATH in a VM.
    pub dst: String,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Fetch an image: an OCI reference, or a signed bundle named in the catalog.
    #[command(
        after_help = "Examples:\n  banger image pull python:3.12-slim\n  banger image pull ghcr.io/org/tool:1.2 --name tool"
    )]
    Pull(ImagePullArgs),
    /// Build the golden image locally from Debian packages.
    #[command(
        after_help = "Examples:\n  banger image build\n  banger image build small --profile minimal"
    )]
    Build(ImageBuildArgs),
    /// List images.
    #[command(alias = "ls")]
    #[command(after_help = "Examples:\n  banger image list\n  banger image list --json")]
    List(JsonFlag),
    /// Show one image.
    #[command(after_help = "Examples:\n  banger image show debian-bookworm")]
    Show(ImageShowArgs),
    /// Delete an image (refused while a VM uses it).
    #[command(alias = "rm")]
    #[command(after_help = "Examples:\n  banger image delete small")]
    Delete(ImageName),
    /// Register an existing rootfs.ext4 and kernel as an image.
    #[command(
        after_help = "Examples:\n  banger image register mine --rootfs ./rootfs.ext4 --kernel mykernel"
    )]
    Register(ImageRegisterArgs),
    /// Produce a signed bundle from an image, for publishing in a catalog.
    #[command(
        after_help = "Examples:\n  banger image bundle debian-bookworm --key ./sign.key --out ./dist"
    )]
    Bundle(ImageBundleArgs),
    /// Make the image's warm snapshot for a VM shape now (boots a VM once), so the
    /// next `vm run` of that shape restores instead of booting.
    #[command(
        after_help = "Examples:\n  banger image warm debian-bookworm\n  banger image warm debian-bookworm --vcpu 2 --memory 2G --json"
    )]
    Warm(ImageWarmArgs),
    /// Create an ed25519 key pair for signing bundles (SECRET is written 0600).
    #[command(after_help = "Examples:\n  banger image keygen ./sign.key ./sign.pub")]
    Keygen {
        /// Where to write the secret signing key (must not exist).
        secret: PathBuf,
        /// Where to write the public key (the catalog entry's public_key).
        public: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ImagePullArgs {
    /// OCI reference (e.g. python:3.12-slim), or the name of an entry of the
    /// image catalog (catalog_file in config; see `banger doctor`).
    pub reference: String,
    /// Local name for the image (default: derived from the reference).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum Profile {
    /// The developer image: systemd, sshd, docker, git, build tools.
    #[default]
    Full,
    /// A small, fast-booting image for tests.
    Minimal,
}

#[derive(Debug, Args)]
pub struct ImageBuildArgs {
    /// Name of the image to build.
    #[arg(default_value = banger_core::config::DEFAULT_IMAGE_NAME)]
    pub name: String,
    /// What goes into the image.
    #[arg(long, value_enum, default_value_t)]
    pub profile: Profile,
    /// Debian mirror to build from (default: the host's apt sources).
    #[arg(long)]
    pub mirror: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImageName {
    /// Name of the image.
    #[arg(add = ArgValueCandidates::new(image_names))]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ImageShowArgs {
    /// Name of the image.
    #[arg(add = ArgValueCandidates::new(image_names))]
    pub name: String,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct ImageWarmArgs {
    /// Name of the image.
    #[arg(add = ArgValueCandidates::new(image_names))]
    pub name: String,
    // The shape's sizes (default: as `vm run` would choose).
    #[command(flatten)]
    pub sizes: Sizes,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct ImageRegisterArgs {
    /// Name for the image.
    pub name: String,
    /// Root filesystem image (ext4).
    #[arg(long)]
    pub rootfs: PathBuf,
    /// Kernel to boot it with (a registered kernel name).
    #[arg(long, add = ArgValueCandidates::new(kernel_names))]
    pub kernel: String,
}

#[derive(Debug, Args)]
pub struct ImageBundleArgs {
    /// Name of the image.
    #[arg(add = ArgValueCandidates::new(image_names))]
    pub name: String,
    /// ed25519 signing key file.
    #[arg(long)]
    pub key: PathBuf,
    /// Directory to write the bundle into.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// List kernels.
    #[command(alias = "ls")]
    #[command(after_help = "Examples:\n  banger kernel list\n  banger kernel list --json")]
    List(JsonFlag),
    /// Register kernel files from disk.
    #[command(
        after_help = "Examples:\n  banger kernel register mykernel --vmlinuz ./vmlinuz --initrd ./initrd.img"
    )]
    Register(KernelRegisterArgs),
    /// Delete a kernel (refused while an image or VM uses it).
    #[command(alias = "rm")]
    #[command(after_help = "Examples:\n  banger kernel delete mykernel")]
    Delete(KernelName),
}

#[derive(Debug, Args)]
pub struct KernelRegisterArgs {
    /// Name for the kernel.
    pub name: String,
    /// Compressed kernel (bzImage), booted by the qemu driver.
    #[arg(long)]
    pub vmlinuz: PathBuf,
    /// Initial ramdisk. The ELF vmlinux Firecracker boots is extracted from vmlinuz.
    #[arg(long)]
    pub initrd: PathBuf,
}

#[derive(Debug, Args)]
pub struct KernelName {
    /// Name of the kernel.
    #[arg(add = ArgValueCandidates::new(kernel_names))]
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print every effective setting and where it came from: what the
    /// running daemon loaded (and whether the file changed since), or the
    /// file itself when bangerd is not running or with --file.
    #[command(
        after_help = "Examples:\n  banger config show\n  banger config show --json\n  banger config show --file"
    )]
    Show(ConfigShowArgs),
    /// Make the running daemon read its config file again (as SIGHUP does).
    ///
    /// Settings read at each use (default image, VM sizes, egress default,
    /// file_sync, catalog, insecure registries) apply at once; a change to
    /// the bridge, subnet, DNS or VMM settings applies nothing and says
    /// that bangerd needs a restart.
    #[command(after_help = "Examples:\n  banger config reload\n  sudo systemctl reload bangerd")]
    Reload,
}

#[derive(Debug, Args, Clone, Copy)]
pub struct ConfigShowArgs {
    /// Show the file as it would load now, not what the daemon runs with.
    #[arg(long)]
    pub file: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Install bangerd and bangerd-root as systemd services (needs root).
    #[command(after_help = "Examples:\n  sudo banger system install --owner \"$USER\"")]
    Install(SystemInstallArgs),
    /// Show the state of banger's services.
    #[command(after_help = "Examples:\n  banger system status\n  banger system status --json")]
    Status(JsonFlag),
    /// Restart both services; running VMs survive (needs root).
    #[command(after_help = "Examples:\n  sudo banger system restart")]
    Restart,
    /// Remove banger's services and binaries (needs root).
    #[command(
        after_help = "Examples:\n  sudo banger system uninstall\n  sudo banger system uninstall --purge"
    )]
    Uninstall(SystemUninstallArgs),
    /// Run bangerd-root and bangerd in this terminal (hosts without systemd).
    #[command(
        after_help = "Examples:\n  sudo banger system run\n  sudo banger system run --prefix /tmp/banger-play"
    )]
    Run(SystemRunArgs),
}

#[derive(Debug, Args)]
pub struct SystemInstallArgs {
    /// The user who owns banger's VMs and talks to the daemon.
    #[arg(long)]
    pub owner: String,
}

#[derive(Debug, Args)]
pub struct SystemUninstallArgs {
    /// Also remove all VMs, images and caches under /var/lib/banger and /var/cache/banger.
    #[arg(long)]
    pub purge: bool,
}

#[derive(Debug, Args)]
pub struct SystemRunArgs {
    /// The user who owns the VMs (default: the invoking user, or $SUDO_USER under sudo).
    #[arg(long)]
    pub owner: Option<String>,
    /// Keep everything under this directory instead of the system paths.
    #[arg(long, value_name = "DIR")]
    pub prefix: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SshConfigArgs {
    /// Add the Include to ~/.ssh/config (in a marker-fenced block).
    #[arg(long, conflicts_with = "uninstall")]
    pub install: bool,
    /// Remove exactly the block --install added.
    #[arg(long)]
    pub uninstall: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
    Powershell,
}

const COMPLETION_HELP: &str = "\
Loading the script:
  bash        banger completion bash | sudo tee /etc/bash_completion.d/banger
              (or: source <(banger completion bash) in ~/.bashrc)
  zsh         banger completion zsh > ~/.zfunc/_banger   (~/.zfunc on fpath)
  fish        banger completion fish > ~/.config/fish/completions/banger.fish
  powershell  banger completion powershell | Out-String | Invoke-Expression

Names of VMs, images and kernels are asked from the running daemon; with the
daemon down, they complete to nothing.

Examples:
  banger completion bash > ~/.local/share/bash-completion/completions/banger
  banger completion zsh > ~/.zfunc/_banger";

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to print a script for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command a user can reach, with its full name.
    fn all(c: &clap::Command, prefix: &str, out: &mut Vec<(String, clap::Command)>) {
        for sub in c.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            let name = format!("{prefix} {}", sub.get_name());
            out.push((name.clone(), sub.clone()));
            all(sub, &name, out);
        }
    }

    #[test]
    fn every_command_has_an_example_of_itself() {
        let mut cmds = Vec::new();
        all(&super::Cli::command(), "banger", &mut cmds);
        assert!(cmds.len() > 30, "{}", cmds.len());
        for (name, c) in cmds {
            let help = c
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            let examples = help
                .split_once("Examples:\n")
                .map(|(_, e)| e)
                .unwrap_or_else(|| panic!("`{name} --help` has no Examples section"));
            assert!(
                examples.lines().any(|l| l
                    .trim_start()
                    .trim_start_matches("sudo ")
                    .starts_with(&name)),
                "`{name} --help` has no example of `{name}`:\n{examples}"
            );
        }
    }
}
