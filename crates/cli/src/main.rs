//! `baluchon`: the command line over the baluchon libraries, and the only crate that prints
//! or chooses an exit code.

// This crate talks to the user: printing and exiting are its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod app;
mod app_import;
mod backup;
mod demo;
mod export;
mod import;
mod inspect;
mod manual;
mod progress;
mod remote;
mod scratch;
mod sealed;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Documented in docs/exit-codes.md; scripts rely on these numbers.
mod exit {
    pub const FAILURE: u8 = 1;
    pub const INVALID_BUNDLE: u8 = 3;
}

/// Pack a hosted tenant into a signed bundle that anyone can check, with or without baluchon
#[derive(Debug, Parser)]
#[command(name = "baluchon", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Never draw progress bars (they are drawn only on a terminal anyway)
    #[arg(long, global = true)]
    no_progress: bool,
    /// Report progress as JSON lines on stderr (docs/remote.md), for the baluchon that
    /// drives this one over SSH
    #[arg(long, global = true, hide = true, conflicts_with = "no_progress")]
    progress_events: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    Detect(app::DetectArgs),
    Export(export::ExportArgs),
    Verify(verify::VerifyArgs),
    Inspect(inspect::InspectArgs),
    Import(import::ImportArgs),
    Backup(backup::BackupArgs),
    Backups(backup::BackupsArgs),
    Schedule(backup::ScheduleArgs),
    Fleet(backup::FleetArgs),
    Migrate(remote::MigrateArgs),
    Recover(app_import::RecoverArgs),
    Rollback(import::RollbackArgs),
    Confirm(import::ConfirmArgs),
    Keygen(export::KeygenArgs),
    Demo(demo::DemoArgs),
    Completions(manual::CompletionsArgs),
    Man(manual::ManArgs),
}

/// Extraction keeps up to a quarter of the descriptor limit in open files (at most 2048),
/// and the soft limit is often 1024 where the hard one is far higher: raised to 8192 where
/// allowed. Nothing in baluchon uses select(2), which such descriptors would break.
fn raise_descriptor_limit() {
    const WANTED: u64 = 8192;
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let wanted = limit.maximum.map_or(WANTED, |maximum| maximum.min(WANTED));
    if limit.current.is_some_and(|current| current < wanted) {
        // Failing leaves the limit as it was: extraction then keeps fewer files open.
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(wanted),
                maximum: limit.maximum,
            },
        );
    }
}

fn main() -> ExitCode {
    let cli = manual::parse();
    raise_descriptor_limit();
    let progress = progress::CliProgress::new(if cli.progress_events {
        progress::Mode::Events
    } else if cli.no_progress {
        progress::Mode::Off
    } else {
        progress::Mode::Human
    });
    let result = match cli.command {
        Command::Detect(args) => app::detect(&args),
        Command::Export(args) => export::run(&args, &progress),
        Command::Verify(args) => verify::run(&args, &progress),
        Command::Inspect(args) => inspect::run(&args),
        Command::Import(args) => import::run(&args, &progress),
        Command::Backup(args) => backup::backup(&args, &progress),
        Command::Backups(args) => backup::backups(&args, &progress),
        Command::Schedule(args) => backup::schedule(&args),
        Command::Fleet(args) => backup::fleet(&args, !cli.no_progress),
        Command::Migrate(args) => remote::migrate(&args, &progress),
        Command::Recover(args) => app_import::recover_command(&args),
        Command::Rollback(args) => import::rollback(&args),
        Command::Confirm(args) => import::confirm(&args),
        Command::Keygen(args) => export::keygen(&args),
        Command::Demo(args) => demo::run(&args, &progress),
        Command::Completions(args) => manual::completions(&args),
        Command::Man(args) => manual::man(&args),
    };
    progress.clear();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err);
            ExitCode::from(exit_code(&err))
        }
    }
}

fn is_invalid_bundle(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<baluchon_bundle::Error>(),
            Some(baluchon_bundle::Error::Invalid(_))
        ) || matches!(
            // Transparent: its own chain goes on below the bundle error.
            cause.downcast_ref::<baluchon_migrate::ImportError>(),
            Some(baluchon_migrate::ImportError::Bundle(
                baluchon_bundle::Error::Invalid(_)
            ))
        )
    })
}

fn exit_code(err: &anyhow::Error) -> u8 {
    // A remote baluchon's verdict on a bundle is ours too.
    let remote_invalid = err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<baluchon_transport::TransportError>(),
            Some(baluchon_transport::TransportError::Remote { code: Some(3), .. })
        )
    });
    if is_invalid_bundle(err) || remote_invalid {
        exit::INVALID_BUNDLE
    } else {
        exit::FAILURE
    }
}

/// Prints the error, each cause on its own line, then a hint when one helps.
fn report(err: &anyhow::Error) {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    if is_invalid_bundle(err) {
        eprintln!(
            "hint: do not use this bundle. Ask its sender for a new copy, and check that you \
             hold the right signer key."
        );
    }
}
