//! The `titan` binary: command-line wiring only. `server` and `dev` run a cell member (see `server.rs`); the
//! client commands talk to a cell over its REST API (see `cli.rs`).

mod cli;
mod server;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// A cell member allocates and frees many small objects per request (specs, log entries, HTTP buffers); mimalloc
// does that with less CPU than glibc's malloc and returns fewer pages only to fault them back in.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (libmimalloc-sys names only some options).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// How long freed memory stays with the process before mimalloc returns it to the system. mimalloc's default
/// (one second) hands back and faults in again, zeroed by the kernel, the pages a member's steady churn of
/// request and log buffers reuses: under load that zeroing took a fifth of a member's CPU. Ten seconds keeps them
/// while the load lasts and still gives memory back to an idle member.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

fn tune_allocator() {
    // SAFETY: options are set once, first thing in `main`, before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
}

/// Titan: a multi-region container scheduler.
#[derive(Parser, Debug)]
#[command(name = "titan", version, about)]
struct Titan {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs one member of a cell.
    Server(Box<server::ServerArgs>),
    /// Runs an embedded single-member cell for trying Titan on one machine.
    Dev(server::DevArgs),
    /// Runs the node agent: registers this machine with a cell and keeps its lease.
    Agent(server::AgentArgs),
    /// Lists the cell's agents.
    Node {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        command: cli::NodeCommand,
    },
    /// Submits, lists, inspects, scales and kills jobs.
    Job {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        command: cli::JobCommand,
    },
    /// Lists, inspects and kills tasks.
    Task {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        command: cli::TaskCommand,
    },
    /// Shows and changes the cell's membership.
    Cluster {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        command: cli::ClusterCommand,
    },
}

fn main() -> ExitCode {
    tune_allocator();
    let args = Titan::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("titan: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match args.command {
            Command::Server(a) => server::run(*a).await,
            Command::Dev(a) => server::dev(a).await,
            Command::Agent(a) => server::agent(a).await,
            Command::Node { target, command } => cli::node(&target, command).await,
            Command::Job { target, command } => cli::job(&target, command).await,
            Command::Task { target, command } => cli::task(&target, command).await,
            Command::Cluster { target, command } => cli::cluster(&target, command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("titan: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where `titan dev` keeps its data unless told otherwise.
pub const DEV_DATA_DIR: &str = ".titan-dev";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_mimalloc_3s() {
        // The option number is mimalloc 3's; version 2 numbers its options differently and ends them at 38.
        assert_eq!(libmimalloc_sys::_mi_option_last, 47);
        tune_allocator();
        // SAFETY: reading an option is always allowed.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }, PURGE_DELAY_MS);
    }
}
