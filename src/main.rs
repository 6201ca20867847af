//! The `titan` binary: command-line wiring only. `server` and `dev` run a cell member (see `server.rs`); the
//! client commands talk to a cell over its REST API (see `cli.rs`).

mod cli;
mod https;
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
    /// Runs an embedded single-member cell for trying Titan on one machine (plain HTTP on the address given: TLS is
    /// for `titan server` and `titan agent`).
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
    /// Shows and sets capacity groups' quotas per location.
    Quota {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        command: cli::QuotaCommand,
    },
    /// SRE levers on a location: freeze, evacuate, restore, traffic weight; and their status.
    Location {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        command: cli::LocationCommand,
    },
    /// Shows the autoscaler's instance groups and its decisions.
    Fleet {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        command: cli::FleetCommand,
    },
    /// API tokens: create, list, revoke.
    Acl {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        command: cli::AclCommand,
    },
    /// Shows the cells of the federation.
    Cell {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        command: cli::CellCommand,
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
            Command::Cell { target, command } => cli::cell(&target, command).await,
            Command::Quota { target, command } => cli::quota(&target, command).await,
            Command::Location { target, command } => cli::location(&target, command).await,
            Command::Fleet { target, command } => cli::fleet(&target, command).await,
            Command::Acl { target, command } => cli::acl(&target, command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`titan job list | head -1`): it has what it wanted, as with any Unix filter.
        Err(e) if closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("titan: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the error is a write to a pipe whose reader has closed it.
fn closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Where `titan dev` keeps its data unless told otherwise.
pub const DEV_DATA_DIR: &str = ".titan-dev";

#[cfg(test)]
mod tests {
    use super::*;

    fn parses(args: &str) -> Result<Titan, clap::Error> {
        Titan::try_parse_from(std::iter::once("titan").chain(args.split_whitespace()))
    }

    #[test]
    fn global_options_work_before_and_after_the_subcommand() {
        for args in [
            "cluster add 3 127.0.0.1:7003 --addr 127.0.0.1:7001",
            "cluster --addr 127.0.0.1:7001 add 3 127.0.0.1:7003",
            "cluster remove 3 --addr 127.0.0.1:7001 -o json",
            "job list --addr 127.0.0.1:7001 --user u --reason r",
            "job status ID -o json --addr 127.0.0.1:7001",
            "task list --addr 127.0.0.1:7001",
            "node list --addr 127.0.0.1:7001",
        ] {
            let parsed = parses(args).unwrap_or_else(|e| panic!("{args}: {e}"));
            let target = match parsed.command {
                Command::Node { target, .. }
                | Command::Job { target, .. }
                | Command::Task { target, .. }
                | Command::Cluster { target, .. }
                | Command::Cell { target, .. } => target,
                other => panic!("{args}: parsed as {other:?}"),
            };
            assert_eq!(target.addr(), "127.0.0.1:7001", "{args}");
        }
        match parses("cluster add 3 127.0.0.1:7003 --addr 127.0.0.1:7001").map(|t| t.command) {
            Ok(Command::Cluster { command: cli::ClusterCommand::Add { id, member_addr }, .. }) => {
                assert_eq!((id, member_addr.as_str()), (3, "127.0.0.1:7003"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_closed_pipe_is_not_a_failure() {
        let closed = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(closed_pipe(&closed.context("printing")));
        assert!(!closed_pipe(&anyhow::anyhow!("cannot reach 127.0.0.1:7070")));
    }
}
