//! `banger vm run`: the main job — the image made present, the VM created
//! and started, the workspace shipped in, then a command, an ssh session or
//! a shell through the agent.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use banger_agent::client::AgentClient;
use banger_proto::agent::ExecRequest;
use banger_proto::{CreateVmResponse, VmInfo};

use super::exec::exec_streaming;
use super::ready::{READY_SECS, agent_for, sshd_listening};
use super::request;
use crate::api_path;
use crate::cli::VmRunArgs;
use crate::client::Client;
use crate::cmd::ssh;
use crate::terminal::{Phases, ProgressView};
use crate::workspace::{self, Source};

/// Makes image `name` present through the daemon (`POST /v1/images/ensure`:
/// the catalog first, a local build of the default image when the catalog
/// cannot supply it) and renders what it does.
async fn ensure_image(client: &Client, name: &str, phases: &mut Phases) -> anyhow::Result<()> {
    use banger_proto::{EnsureEvent, EnsureSource, EnsureStep};
    let req = banger_proto::EnsureImageRequest {
        name: name.to_string(),
    };
    let mut view: Option<ProgressView> = None;
    let mut result: Option<anyhow::Result<()>> = None;
    client
        .post_lines(
            "/v1/images/ensure",
            &req,
            |line| match serde_json::from_slice::<EnsureEvent>(line) {
                Ok(EnsureEvent::Step { step, message }) => {
                    if let Some(mut v) = view.take() {
                        v.finish();
                    }
                    phases.begin(&match step {
                        EnsureStep::Catalog => {
                            format!("image {name} is not here yet: trying the catalog")
                        }
                        EnsureStep::Build => format!(
                            "image {name}: building it from Debian packages (a few minutes, once)"
                        ),
                    });
                    eprintln!("banger: {message}");
                }
                Ok(EnsureEvent::Progress { progress }) => view
                    .get_or_insert_with(|| ProgressView::new(name))
                    .update(&progress),
                Ok(EnsureEvent::Done { image, source }) => {
                    if let Some(mut v) = view.take() {
                        v.finish();
                    }
                    if source == EnsureSource::Pulled {
                        eprintln!("banger: pulled image {} ({})", image.name, image.origin);
                    }
                    if source != EnsureSource::Present {
                        phases.end("image");
                    }
                    result = Some(Ok(()));
                }
                Ok(EnsureEvent::Failed { error }) => {
                    result = Some(Err(anyhow::anyhow!(error.message)))
                }
                Err(e) => {
                    result = Some(Err(anyhow::anyhow!(
                        "bangerd sent an unreadable image event: {e}"
                    )))
                }
            },
        )
        .await?;
    result.unwrap_or_else(|| {
        bail!("bangerd ended the image check without saying how it went; see its log")
    })
}

/// Ships the workspace into `/root/<repo>` as one tar stream over the agent.
async fn upload_workspace(
    agent: &AgentClient,
    path: &Path,
    source: &Source,
    files: &[std::path::PathBuf],
    dest: &str,
) -> anyhow::Result<()> {
    let mut tmp = tempfile::tempfile().context("cannot create a temporary file")?;
    {
        let (path, source, files) = (path.to_path_buf(), source.clone(), files.to_vec());
        tmp = tokio::task::spawn_blocking(move || -> anyhow::Result<std::fs::File> {
            workspace::write_tar(&path, &source, &files, &mut tmp)?;
            use std::io::Seek;
            tmp.rewind()?;
            Ok(tmp)
        })
        .await??;
    }
    let file = tokio::fs::File::from_std(tmp);
    agent
        .upload_tar(file, dest)
        .await
        .with_context(|| format!("copying the workspace into {dest}"))?;
    Ok(())
}

/// Best effort: install the repo's tools with mise in the background. The
/// script is fixed text; the repo name reaches it as an argument.
async fn start_tooling_bootstrap(agent: &AgentClient, repo: &str) {
    const SCRIPT: &str = r#"dir=/root/$1; log=/root/.cache/banger/vm-run-tooling-$1.log
mkdir -p /root/.cache/banger
( cd "$dir" || exit 0
  if [ ! -f .mise.toml ] && [ ! -f mise.toml ] && [ ! -f .tool-versions ]; then echo "no .mise.toml or .tool-versions: nothing to install"; exit 0; fi
  if ! command -v mise >/dev/null 2>&1; then echo "mise is not installed in this image: skipping tool installation"; exit 0; fi
  mise trust --yes >/dev/null 2>&1; mise install --yes ) >"$log" 2>&1 </dev/null &
"#;
    let req = ExecRequest::new(["sh", "-c", SCRIPT, "sh", repo]);
    if let Err(e) = agent.exec_capture(&req, b"").await {
        eprintln!("banger: warning: could not start the tooling bootstrap: {e}");
    }
}

pub async fn vm_run(client: &Client, a: VmRunArgs) -> anyhow::Result<ExitCode> {
    let mut phases = Phases::new();
    // Every flag is checked before anything is made (a key, an image, a VM).
    let mut req = request::create_request(&a.shape, true)?;
    let workspace = match &a.path {
        Some(p) => {
            let source = match (&a.branch, &a.from) {
                (Some(b), _) => Source::Rev(b.clone()),
                (_, Some(r)) => Source::Rev(r.clone()),
                _ => Source::WorkingTree {
                    include_untracked: a.include_untracked,
                },
            };
            workspace::validate(p, &source)?;
            let files = workspace::list_files(p, &source)?;
            Some((p.clone(), source, files))
        }
        None => {
            if a.include_untracked || a.branch.is_some() || a.from.is_some() {
                bail!(
                    "--include-untracked, --branch and --from apply only to workspace mode (give a repository path)"
                );
            }
            None
        }
    };
    if a.dry_run {
        return dry_run(client, &req, workspace.as_ref().map(|w| w.2.as_slice())).await;
    }

    let config = crate::cmd::load_config()?;
    let home = crate::cmd::home()?;
    let (key, public) = ssh::ensure_identity(&config, &home)?;
    client.version().await?;
    let image = a
        .shape
        .image
        .clone()
        .unwrap_or_else(|| config.image_name().value);
    // An OCI reference is pulled on demand and runs under its store name.
    let (image, oci) = if banger_core::names::is_oci_reference(&image) {
        let p = crate::cmd::oci::ensure(client, &image).await?;
        (p.image.name, Some(p.config))
    } else {
        ensure_image(client, &image, &mut phases).await?;
        (image, None)
    };

    req.image = Some(image);
    req.ssh_public_key = Some(public);
    phases.begin("creating and starting the VM");
    let created = tokio::select! {
        r = client.post::<_, CreateVmResponse>("/v1/vms", &req) => r?,
        _ = tokio::signal::ctrl_c() => {
            // The daemon finishes or rolls back the create on its own; under
            // --rm, delete whatever it made.
            if a.rm
                && let Some(name) = &req.name
                && let Ok(path) = api_path::vm(name)
            {
                let _ = client.delete::<VmInfo>(&path).await;
            }
            bail!("interrupted while creating the VM");
        }
    };
    outln!("{}", request::spec_line(&created.spec))?;
    let name = created.vm.name.clone();
    eprintln!(
        "banger: VM {name} ({}) is starting",
        created.vm.ip.as_deref().unwrap_or("no address")
    );
    phases.end("create");

    let result = run_in_vm(
        client,
        &a,
        &name,
        workspace,
        &key,
        oci.as_ref(),
        &mut phases,
    )
    .await;
    let delete = a.rm && !matches!(&result, Err(RunError::NotReady(_)));
    if delete {
        match client.delete::<VmInfo>(&api_path::vm(&name)?).await {
            Ok(_) => eprintln!("banger: deleted VM {name} (--rm)"),
            Err(e) => eprintln!("banger: warning: could not delete VM {name}: {e}"),
        }
    }
    if a.timings {
        phases.print();
    }
    match result {
        Ok(code) => Ok(super::exit_code(code)),
        Err(RunError::NotReady(e)) => {
            if a.rm {
                eprintln!(
                    "banger: kept VM {name} for inspection despite --rm: `banger vm logs {name}`, then `banger vm delete {name}`"
                );
            }
            Err(e)
        }
        Err(RunError::Other(e)) => Err(e),
    }
}

/// `vm run --dry-run`: the files that would be shipped (stdout, one per
/// line), then the whole request checked by the daemon and the `spec:` line
/// it would get (stderr). Nothing is created: no key, image or VM.
async fn dry_run(
    client: &Client,
    req: &banger_proto::CreateVmRequest,
    files: Option<&[std::path::PathBuf]>,
) -> anyhow::Result<ExitCode> {
    for f in files.unwrap_or_default() {
        outln!("{}", workspace::display_name(f))?;
    }
    client.version().await.context(
        "--dry-run asks bangerd to check the request (name, image, sizes); start it first",
    )?;
    let plan: banger_proto::VmPlan = client.post("/v1/vms?dry_run=true", req).await?;
    eprintln!("{}", request::spec_line(&plan.spec));
    if banger_core::names::is_oci_reference(&plan.image) {
        eprintln!(
            "image: {} (an OCI image, pulled first unless it is here)",
            plan.image
        );
    } else if plan.image_present {
        eprintln!("image: {}", plan.image);
    } else {
        eprintln!(
            "image: {} is not here yet; vm run would fetch it from the catalog or build it locally first",
            plan.image
        );
    }
    match files {
        Some(f) => eprintln!(
            "{} would be copied; no VM was created (--dry-run)",
            workspace::count_files(f.len())
        ),
        None => eprintln!("no VM was created (--dry-run)"),
    }
    Ok(ExitCode::SUCCESS)
}

enum RunError {
    /// The guest never came up: the VM is kept for `vm logs` even under --rm.
    NotReady(anyhow::Error),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for RunError {
    fn from(e: E) -> Self {
        RunError::Other(e.into())
    }
}

async fn run_in_vm(
    client: &Client,
    a: &VmRunArgs,
    name: &str,
    workspace: Option<(std::path::PathBuf, Source, Vec<std::path::PathBuf>)>,
    key: &Path,
    oci: Option<&banger_proto::OciRunConfig>,
    phases: &mut Phases,
) -> Result<i32, RunError> {
    phases.begin("waiting for the guest to boot");
    let ready_path = format!(
        "{}?timeout_secs={READY_SECS}",
        api_path::vm_action(name, "ready")?
    );
    let ready = tokio::select! {
        r = client.post::<_, VmInfo>(&ready_path, &()) => r,
        _ = tokio::signal::ctrl_c() => return Err(RunError::Other(anyhow::anyhow!("interrupted while the guest was booting"))),
    };
    let vm = ready.map_err(|e| {
        RunError::NotReady(anyhow::Error::new(e).context(format!(
            "VM {name} did not come up; see `banger vm logs {name}`"
        )))
    })?;
    // A VM restored from a warm snapshot waited for its identity round trip, not a boot.
    phases.end(if vm.restored_from.is_some() {
        "restore"
    } else {
        "boot"
    });
    if a.timings
        && let Some(disks) = &vm.restore_disks
    {
        phases.note(format!("disks: {disks}"));
    }
    let agent = agent_for(&vm)?;
    let mut cwd = None;
    if let Some((path, source, files)) = &workspace {
        let repo = workspace::repo_name(path);
        let dest = format!("/root/{repo}");
        phases.begin(&format!(
            "copying {} into {dest}",
            workspace::count_files(files.len())
        ));
        upload_workspace(&agent, path, source, files, &dest).await?;
        phases.end("sync");
        start_tooling_bootstrap(&agent, &repo).await;
        cwd = Some(dest);
    }
    if !a.command.is_empty() {
        phases.begin("running the command");
        let mut req = ExecRequest::new(a.command.clone());
        req.cwd = cwd;
        if let Some(c) = oci {
            c.apply(&mut req);
        }
        let code = exec_streaming(&agent, req, false).await?;
        phases.end("command");
        return Ok(code);
    }
    if !sshd_listening(&vm).await {
        // Images without sshd (most OCI images): a shell through the agent.
        eprintln!("banger: no sshd in this guest; opening a shell through the guest agent");
        let mut req = ExecRequest::new(["/bin/sh", "-l"]);
        req.cwd = cwd;
        if let Some(rc) = oci {
            rc.apply(&mut req);
        }
        return Ok(exec_streaming(&agent, req, std::io::stdin().is_terminal()).await?);
    }
    let ssh_config = ssh::refresh_ssh_config(client, key).await?;
    let mut command = Vec::new();
    if let Some(dir) = &cwd {
        // An interactive login shell that starts in the workspace.
        command = vec![
            "cd".into(),
            dir.clone(),
            "&&".into(),
            "exec".into(),
            "${SHELL:-/bin/bash}".into(),
            "-l".into(),
        ];
    }
    let mut args = ssh::ssh_args(&ssh_config, &vm, true, &[])?;
    if !command.is_empty() {
        args.push("--".into());
        args.push(command.join(" "));
    }
    Ok(ssh::run_ssh(&args)?)
}
