//! Shell completions and man pages, generated from the command line's definition (`cli`), so
//! that they never disagree with `--help`.

use std::{
    fs,
    io::{self, Write as _},
    path::Path,
};

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;

use crate::{cli::Cli, output::ReaderGone};

/// `tracer completions SHELL`: the script on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tracer", &mut script);
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(&script)
        .and_then(|()| stdout.flush())
        .map_err(|e| match e.kind() {
            // `tracer completions bash | head`: the reader went away; end quietly.
            io::ErrorKind::BrokenPipe => io::Error::new(e.kind(), ReaderGone),
            _ => e,
        })
        .context("writing the completion script")
}

/// `tracer man-pages DIR`: `tracer.8`, and `tracer-COMMAND.8` for every command shown in
/// `--help`.
pub fn man_pages(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cli = Cli::command();
    cli.build();
    // Once built, a command's display name is `tracer-signals`, its page's name.
    let pages = std::iter::once(&cli).chain(
        cli.get_subcommands()
            .filter(|c| !c.is_hide_set() && c.get_name() != "help"),
    );
    for command in pages {
        let name = command.get_display_name().unwrap_or(command.get_name());
        let path = dir.join(format!("{name}.8"));
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone())
            .section("8")
            .render(&mut page)?;
        fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
