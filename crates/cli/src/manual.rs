//! `baluchon completions` and `baluchon man`: the shell completions and the man page,
//! generated from the same clap definitions as `--help`, so they never drift from it.

use std::io::Write as _;

use anyhow::Context as _;
use clap::{Args, ColorChoice, CommandFactory as _, FromArgMatches as _};
use clap_complete::Shell;

use crate::Cli;

/// Print a shell completion script on standard output
///
/// Examples:
///   baluchon completions bash > /etc/bash_completion.d/baluchon
///   baluchon completions zsh > "${fpath[1]}/_baluchon"
///   baluchon completions fish > ~/.config/fish/completions/baluchon.fish
// Verbatim: clap would otherwise join the example lines into one paragraph.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CompletionsArgs {
    /// The shell to complete for
    shell: Shell,
}

/// Print the man page baluchon(1), or a subcommand's baluchon-COMMAND(1), on standard output
///
/// Examples:
///   baluchon man > /usr/local/share/man/man1/baluchon.1
///   baluchon man export > /usr/local/share/man/man1/baluchon-export.1
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ManArgs {
    /// The subcommand whose page to print
    command: Option<String>,
}

/// Parses the command line; with NO_COLOR set (https://no-color.org), help and usage errors
/// are printed without colour even on a terminal.
pub fn parse() -> Cli {
    let mut command = Cli::command();
    if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
        command = command.color(ColorChoice::Never);
    }
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
}

pub fn completions(args: &CompletionsArgs) -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "baluchon", &mut out);
    write_stdout(&out)
}

pub fn man(args: &ManArgs) -> anyhow::Result<()> {
    let mut command = Cli::command();
    // Names the subcommands' pages baluchon-COMMAND, as the top page refers to them.
    command.build();
    let page = match &args.command {
        None => command,
        Some(name) => command
            .find_subcommand(name)
            .cloned()
            .with_context(|| format!("baluchon has no subcommand {name:?}; see baluchon --help"))?,
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    write_stdout(&out)
}

fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .context("cannot write to standard output")
}
