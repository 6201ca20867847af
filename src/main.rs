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
