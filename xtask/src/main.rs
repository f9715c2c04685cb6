//! `cargo run -p xtask -- assets DIR`: the man pages (`DIR/man/*.1`, one per command and
//! subcommand, from the clap definitions) and the shell completions (`DIR/completions/`, bash,
//! zsh and fish) of `dqe` and `dqe-enforcer`, for the Debian package (`cargo deb`, see
//! host-tools/Cargo.toml). Generated, not kept in git, so they never drift from `--help`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Command, CommandFactory};
use clap_complete::Shell;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, dir] if cmd == "assets" => match assets(Path::new(dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: cargo run -p xtask -- assets DIR");
            ExitCode::from(2)
        }
    }
}

/// Write every man page and completion script under `dir`.
fn assets(dir: &Path) -> std::io::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    for shell in ["bash", "zsh", "fish"] {
        std::fs::create_dir_all(completions.join(shell))?;
    }
    for cmd in [
        host_tools::args::Cli::command().name("dqe"),
        backend_std::cli::Cli::command().name("dqe-enforcer"),
    ] {
        man_pages(&cmd, &man)?;
        for (shell, file) in completion_files(cmd.get_name()) {
            let mut out = std::fs::File::create(completions.join(file))?;
            clap_complete::generate(shell, &mut cmd.clone(), cmd.get_name(), &mut out);
        }
    }
    Ok(())
}

/// Where each shell's completion of `bin` goes (Debian's paths under /usr/share).
fn completion_files(bin: &str) -> [(Shell, PathBuf); 3] {
    [
        (Shell::Bash, Path::new("bash").join(bin)),
        (Shell::Zsh, Path::new("zsh").join(format!("_{bin}"))),
        (Shell::Fish, Path::new("fish").join(format!("{bin}.fish"))),
    ]
}

/// `NAME.1`, and `NAME-SUB.1` for every visible subcommand, recursively.
fn man_pages(cmd: &Command, dir: &Path) -> std::io::Result<()> {
    let mut cmd = cmd.clone();
    cmd.build();
    write_page(&cmd, dir)
}

fn write_page(cmd: &Command, dir: &Path) -> std::io::Result<()> {
    let name = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string();
    let mut out = std::fs::File::create(dir.join(format!("{name}.1")))?;
    // The title is the display name `build` gives each subcommand (`dqe-stamp-print`).
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        write_page(sub, dir)?;
    }
    Ok(())
}
