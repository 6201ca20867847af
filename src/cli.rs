//! The client commands: `titan job ...`, `titan task ...`, `titan node ...` and `titan cluster ...` over the
//! typed API client, printed as tables for people or as JSON (`--output json`) for scripts.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use titan_api::job::{parse_location, BodyFormat};
use titan_api::task::{TaskQuery, TaskView};
use titan_api::view::{AddMember, ClusterView, JobView, ListQuery};
use titan_api::{Client, ClientError, ErrorCode};

/// `println!` that returns the write's error instead of panicking: a reader that closed the pipe early
/// (`titan cluster status | head -1`) ends the command quietly (see `main`), not with a backtrace.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?
    }};
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Which cell to talk to and how to print.
#[derive(Args, Debug)]
pub struct Target {
    /// A member of the cell (any member: writes are forwarded to the leader), or several separated by commas.
    #[arg(long, global = true, env = "TITAN_ADDR", default_value = crate::server::DEFAULT_LISTEN)]
    addr: String,
    #[arg(long, short, global = true, value_enum, default_value = "table")]
    output: Output,
    /// Who makes the change (recorded in job history).
    #[arg(long, global = true, env = "TITAN_USER")]
    user: Option<String>,
    /// Why (recorded in job history).
    #[arg(long, global = true)]
    reason: Option<String>,
    /// A file holding the API token to send; else `$TITAN_TOKEN`, else `titan dev`'s admin token
    /// (`$TITAN_DATA_DIR/admin.token`, `.titan-dev/admin.token`) when there is one.
    #[arg(long, global = true, env = "TITAN_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// The CA of a cell that serves HTTPS (`[tls] ca`), the only one trusted; `host:port` addresses are then
    /// `https://`.
    #[arg(long, global = true, env = "TITAN_CACERT")]
    cacert: Option<PathBuf>,
    /// A client certificate signed by that CA, PEM: a cell with TLS requires one on every connection.
    #[arg(long, global = true, env = "TITAN_CLIENT_CERT", requires = "cacert")]
    client_cert: Option<PathBuf>,
    /// The client certificate's private key, PEM.
    #[arg(long, global = true, env = "TITAN_CLIENT_KEY", requires = "cacert")]
    client_key: Option<PathBuf>,
}

impl Target {
    /// The member address(es) given.
    #[cfg(test)]
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn client(&self) -> anyhow::Result<Client> {
        let mut c = match &self.cacert {
            Some(ca) => {
                let tls = titan_api::tls::ClientTls::load(
                    ca,
                    self.client_cert.as_deref(),
                    self.client_key.as_deref(),
                    titan_api::tls::Settings::CLIENT,
                )?;
                Client::with_tls(&self.addr, &tls)
            }
            None => {
                anyhow::ensure!(
                    !self.addr.contains("https://"),
                    "{}: HTTPS needs the cell's CA (--cacert or TITAN_CACERT)",
                    self.addr
                );
                Client::new(&self.addr)
            }
        };
        if let Some(t) = token(self.token_file.as_deref()) {
            c = c.token(t);
        }
        if let Some(u) = self.user.clone().or_else(login_name) {
            c = c.user(u);
        }
        if let Some(r) = &self.reason {
            c = c.reason(r.clone());
        }
        Ok(c)
    }
}

/// The API token to send: from `--token-file`/`$TITAN_TOKEN_FILE`, else `$TITAN_TOKEN`, else the dev cell's
/// admin token file when it exists.
pub fn token(file: Option<&std::path::Path>) -> Option<String> {
    let read =
        |p: &std::path::Path| std::fs::read_to_string(p).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
    if let Some(f) = file {
        return read(f);
    }
    if let Some(t) = std::env::var("TITAN_TOKEN").ok().filter(|t| !t.is_empty()) {
        return Some(t);
    }
    let dev = std::env::var("TITAN_DATA_DIR").unwrap_or_else(|_| crate::DEV_DATA_DIR.to_string());
    read(&std::path::Path::new(&dev).join(titan_scheduler::config::BOOTSTRAP_TOKEN_FILE))
}

/// Who runs this command: `$USER`, else the name of the effective uid in `/etc/passwd` (a cron job, a container or
/// `sudo -u` may run without `$USER`, and history should still say who it was).
fn login_name() -> Option<String> {
    if let Some(u) = std::env::var("USER").ok().filter(|u| !u.is_empty()) {
        return Some(u);
    }
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective uid (proc(5)), which spares an unsafe libc call.
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    Some(user_of(&passwd, uid).unwrap_or_else(|| format!("uid:{uid}")))
}

/// The name of `uid` in the text of an `/etc/passwd` file (`name:password:uid:gid:...` lines).
fn user_of(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_string())
    })
}

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Submits a job spec from a JSON or YAML file (`-` reads standard input).
    Run {
        file: PathBuf,
        /// Makes a retried submission return the first answer instead of creating a second job.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Lists jobs.
    List {
        #[arg(long)]
        application: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        capacity_group: Option<String>,
        /// enabled, disabled or killed.
        #[arg(long)]
        state: Option<String>,
        /// Page size; every page is fetched.
        #[arg(long, default_value_t = 500)]
        limit: u32,
    },
    /// Shows one job.
    Status {
        id: String,
    },
    /// Shows who changed a job, when and why.
    History {
        id: String,
    },
    /// The host:port of each running, healthy task per location, with the location's state and traffic weight.
    Endpoints {
        id: String,
    },
    /// Sets per-location instance counts: `titan job scale ID dc1=5,dc2=3`.
    Scale {
        id: String,
        counts: String,
        /// Only if the job is still at this version.
        #[arg(long)]
        if_match: Option<u64>,
    },
    /// Kills a job: its tasks stop and it takes no more changes.
    Kill {
        id: String,
    },
    Enable {
        id: String,
    },
    Disable {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Agents with their state, lease epoch, resources and attributes.
    List,
    /// Moves an agent's tasks off (within each job's disruption budget) and stops new work going to it.
    Drain { id: String },
    /// Puts a drained or draining agent back to work.
    Enable { id: String },
}

pub async fn node(target: &Target, command: NodeCommand) -> anyhow::Result<()> {
    let client = target.client()?;
    match command {
        NodeCommand::Drain { ref id } | NodeCommand::Enable { ref id } => {
            let drain = matches!(command, NodeCommand::Drain { .. });
            let a = client.set_agent_draining(id, drain).await?;
            if target.output == Output::Json {
                return print_json(&a);
            }
            say!("agent {} is {}", a.id, a.state.as_str());
        }
        NodeCommand::List => {
            let agents = client.list_agents().await?;
            if target.output == Output::Json {
                return print_json(&agents);
            }
            let rows: Vec<Vec<String>> = agents
                .iter()
                .map(|a| {
                    let attrs = a.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
                    vec![
                        a.id.clone(),
                        a.hostname.clone(),
                        a.state.as_str().into(),
                        a.lease_epoch.to_string(),
                        format!("{}", a.resources.cpus),
                        a.resources.memory_mib.to_string(),
                        a.last_heartbeat_ms.map(time).unwrap_or_else(|| "-".into()),
                        attrs,
                    ]
                })
                .collect();
            say!(
                "{}",
                table(&["ID", "HOSTNAME", "STATE", "EPOCH", "CPUS", "MEMORY", "LAST HEARTBEAT", "ATTRIBUTES"], &rows)
            );
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Members, leader, term and indexes.
    Status,
    /// Adds a member (it catches up as a learner first).
    Add {
        id: u64,
        /// The new member's host:port. Not named `addr`: that would hide the global `--addr` in this command.
        #[arg(value_name = "ADDR")]
        member_addr: String,
    },
    /// Removes a member.
    Remove { id: u64 },
}

fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    say!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Left-aligned columns, two spaces apart.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn instances(job: &JobView) -> String {
    job.instances.iter().map(|(l, n)| format!("{l}={n}")).collect::<Vec<_>>().join(",")
}

fn time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm), so no time crate is needed.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub async fn job(target: &Target, command: JobCommand) -> anyhow::Result<()> {
    let client = target.client()?;
    let json = target.output == Output::Json;
    match command {
        JobCommand::Run { file, idempotency_key } => {
            let body = if file.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                b
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let is_json = file.extension().is_some_and(|e| e == "json")
                || body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
            let format = if is_json { BodyFormat::Json } else { BodyFormat::Yaml };
            let job = client
                .submit_raw(body, format, idempotency_key.as_deref())
                .await
                .map_err(|e| submit_error(e, idempotency_key.as_deref()))?;
            if json {
                print_json(&job)?;
            } else {
                say!("job {} submitted (version {})", job.id, job.version);
            }
        }
        JobCommand::List { application, owner, capacity_group, state, limit } => {
            let mut q =
                ListQuery { application, owner, capacity_group, state, limit: Some(limit), ..ListQuery::default() };
            let mut jobs = Vec::new();
            loop {
                let page = client.list_jobs(&q).await?;
                jobs.extend(page.jobs);
                match page.next_page_token {
                    Some(t) => q.page_token = Some(t),
                    None => break,
                }
            }
            if json {
                return print_json(&jobs);
            }
            let rows: Vec<Vec<String>> = jobs
                .iter()
                .map(|j| {
                    vec![
                        j.id.clone(),
                        j.spec.name.clone(),
                        j.spec.application_name.clone(),
                        j.state.as_str().into(),
                        j.version.to_string(),
                        instances(j),
                        format!("{}", j.spec.cpus),
                        j.spec.memory.to_string(),
                    ]
                })
                .collect();
            say!("{}", table(&["ID", "NAME", "APPLICATION", "STATE", "VERSION", "INSTANCES", "CPUS", "MEMORY"], &rows));
        }
        JobCommand::Status { id } => {
            let j = client.get_job(&id).await?;
            if json {
                return print_json(&j);
            }
            let rows = vec![
                vec!["id".into(), j.id.clone()],
                vec!["name".into(), j.spec.name.clone()],
                vec!["application".into(), j.spec.application_name.clone()],
                vec!["owner".into(), j.spec.owner.clone().unwrap_or_default()],
                vec!["state".into(), j.state.as_str().into()],
                vec!["version".into(), j.version.to_string()],
                vec!["image".into(), j.spec.image.clone()],
                vec!["instances".into(), instances(&j)],
                vec![
                    "resources".into(),
                    format!(
                        "{} cpus, {} MiB memory, {} GiB disk, {} ports",
                        j.spec.cpus, j.spec.memory, j.spec.disk, j.spec.ports
                    ),
                ],
                vec!["created".into(), time(j.created_at_ms)],
                vec!["updated".into(), time(j.updated_at_ms)],
            ];
            say!("{}", table(&["FIELD", "VALUE"], &rows));
            if !j.locations.is_empty() {
                let rows: Vec<Vec<String>> = j
                    .locations
                    .iter()
                    .map(|l| {
                        vec![
                            l.location.clone(),
                            l.cell_state.clone(),
                            l.desired.to_string(),
                            l.running.to_string(),
                            l.pending.to_string(),
                            l.age_ms.map(|ms| format!("{:.1}s", ms as f64 / 1000.0)).unwrap_or_else(|| "-".into()),
                            l.pending_reason.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                say!(
                    "\n{}",
                    table(&["LOCATION", "CELL", "DESIRED", "RUNNING", "PENDING", "AGE", "PENDING REASON"], &rows)
                );
            }
            let q = TaskQuery { job: Some(id.clone()), state: Some("active".into()), ..TaskQuery::default() };
            let tasks = all_tasks(&client, q).await?;
            say!("\n{}", task_table(&tasks));
            for t in tasks.iter().filter(|t| t.pending.is_some()) {
                say!("task {} is pending: {}", t.id, t.pending.as_deref().unwrap_or_default());
            }
            for f in j.tasks.iter().flat_map(|s| &s.failures) {
                say!("{}: {} (task {}, {})", f.location, f.sentence(), f.last.task_id, time(f.last.at_ms));
            }
        }
        JobCommand::Endpoints { id } => {
            let e = client.endpoints(&id).await?;
            if json {
                return print_json(&e);
            }
            let rows: Vec<Vec<String>> = e
                .locations
                .iter()
                .flat_map(|l| {
                    let head = |addr: String| {
                        vec![l.location.clone(), l.state.clone(), l.weight.to_string(), l.cell_state.clone(), addr]
                    };
                    if l.endpoints.is_empty() {
                        return vec![head(l.error.clone().unwrap_or_else(|| "-".into()))];
                    }
                    l.endpoints
                        .iter()
                        .map(|p| head(p.address.clone().unwrap_or_else(|| format!("{} (no port)", p.host))))
                        .collect()
                })
                .collect();
            say!("{}", table(&["LOCATION", "STATE", "WEIGHT", "CELL", "ENDPOINT"], &rows));
        }
        JobCommand::History { id } => {
            let h = client.job_history(&id).await?;
            if json {
                return print_json(&h);
            }
            let rows: Vec<Vec<String>> = h
                .iter()
                .map(|e| {
                    vec![
                        e.version.to_string(),
                        time(e.at_ms),
                        e.who.clone(),
                        e.what.clone(),
                        e.why.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            say!("{}", table(&["VERSION", "WHEN", "WHO", "WHAT", "WHY"], &rows));
        }
        JobCommand::Scale { id, counts, if_match } => {
            let counts = parse_location(&counts).map_err(|e| anyhow::anyhow!("counts: {e}"))?;
            let job = client.set_instances(&id, &counts, if_match).await?;
            if json {
                print_json(&job)?;
            } else {
                say!("job {} scaled (version {})", job.id, job.version);
            }
        }
        JobCommand::Kill { id } => done(json, "killed", client.kill_job(&id).await?)?,
        JobCommand::Enable { id } => done(json, "enabled", client.set_enabled(&id, true).await?)?,
        JobCommand::Disable { id } => done(json, "disabled", client.set_enabled(&id, false).await?)?,
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Lists tasks (every page).
    List {
        #[arg(long)]
        job: Option<String>,
        #[arg(long)]
        agent: Option<String>,
        /// A task state, or `active` for every one not ended.
        #[arg(long)]
        state: Option<String>,
    },
    /// Shows one task, with its transitions and why it is pending.
    Status { id: String },
    /// Stops one task; its job starts a replacement.
    Kill { id: String },
    /// Prints a task's output, read from its agent through the cell.
    Logs {
        id: String,
        /// Keep printing new lines as they come.
        #[arg(long, short)]
        follow: bool,
        /// Lines from the end to start with.
        #[arg(long, default_value_t = 100)]
        tail: u32,
        /// The task's standard error instead of its standard output.
        #[arg(long)]
        stderr: bool,
    },
}

async fn all_tasks(client: &Client, mut q: TaskQuery) -> anyhow::Result<Vec<TaskView>> {
    let mut tasks = Vec::new();
    loop {
        let page = client.list_tasks(&q).await?;
        tasks.extend(page.tasks);
        match page.next_page_token {
            Some(t) => q.page_token = Some(t),
            None => return Ok(tasks),
        }
    }
}

fn reason(t: &TaskView) -> String {
    t.reason.map(|r| r.as_str().to_string()).unwrap_or_default()
}

fn task_table(tasks: &[TaskView]) -> String {
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.job_id.clone(),
                t.state.as_str().into(),
                reason(t),
                t.agent_id.clone().unwrap_or_default(),
                t.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(","),
                t.attempt.to_string(),
                time(t.updated_at_ms),
            ]
        })
        .collect();
    table(&["ID", "JOB", "STATE", "REASON", "AGENT", "PORTS", "ATTEMPT", "UPDATED"], &rows)
}

pub async fn task(target: &Target, command: TaskCommand) -> anyhow::Result<()> {
    let client = target.client()?;
    let json = target.output == Output::Json;
    match command {
        TaskCommand::List { job, agent, state } => {
            let tasks = all_tasks(&client, TaskQuery { job, agent, state, ..TaskQuery::default() }).await?;
            if json {
                return print_json(&tasks);
            }
            say!("{}", task_table(&tasks));
        }
        TaskCommand::Status { id } => {
            let t = client.get_task(&id).await?;
            if json {
                return print_json(&t);
            }
            say!("{}", task_table(std::slice::from_ref(&t)));
            if let Some(p) = &t.pending {
                say!("pending: {p}");
            }
            if let Some(original) = &t.may_run_beside {
                println!("may run beside: {original} (lost with an unreachable agent, which may still run it)");
            }
            if let Some(m) = &t.message {
                say!("message: {m}");
            }
            if let Some(c) = t.exit_code {
                say!("exit code: {c}");
            }
            let rows: Vec<Vec<String>> = t
                .transitions
                .iter()
                .map(|x| {
                    vec![
                        time(x.at_ms),
                        x.state.as_str().into(),
                        x.reason.map(|r| r.as_str().to_string()).unwrap_or_default(),
                    ]
                })
                .collect();
            say!("\n{}", table(&["WHEN", "STATE", "REASON"], &rows));
        }
        TaskCommand::Logs { id, follow, tail, stderr } => {
            use std::io::Write;
            let stream = if stderr { "stderr" } else { "stdout" };
            let mut resp = client.task_logs(&id, tail, stream, follow).await?;
            if !follow {
                let lines: Vec<String> = resp.json().await.context("reading the log lines")?;
                if json {
                    return print_json(&lines);
                }
                for l in lines {
                    say!("{l}");
                }
                return Ok(());
            }
            let mut out = std::io::stdout();
            while let Some(chunk) = resp.chunk().await.context("reading the log stream")? {
                out.write_all(&chunk)?;
                out.flush()?;
            }
        }
        TaskCommand::Kill { id } => {
            let t = client.kill_task(&id).await?;
            if json {
                return print_json(&t);
            }
            say!("task {} is {}", t.id, t.state.as_str());
        }
    }
    Ok(())
}

/// A failed submission as the user should read it: one that timed out may still create the job, and whether
/// running the command again is safe depends on the key.
fn submit_error(e: ClientError, idempotency_key: Option<&str>) -> anyhow::Error {
    if e.code() != Some(ErrorCode::Timeout) {
        return e.into();
    }
    let retry = match idempotency_key {
        Some(key) => format!(
            "running the same command again (same --idempotency-key {key}) is safe: it cannot create a second job"
        ),
        None => {
            "check `titan job list` before submitting again, or pass --idempotency-key so that a retry is safe".into()
        }
    };
    anyhow::anyhow!("the cell did not confirm the job in time (code timeout): it may still be created; {retry}")
}

fn done(json: bool, what: &str, job: titan_api::view::JobRef) -> anyhow::Result<()> {
    if json {
        print_json(&job)
    } else {
        say!("job {} {what} (version {})", job.id, job.version);
        Ok(())
    }
}

fn print_cluster(json: bool, c: &ClusterView) -> anyhow::Result<()> {
    if json {
        return print_json(c);
    }
    say!(
        "cell {}  member {}  leader {}  term {}  last log {}  committed {}  applied {}  snapshot {}",
        c.cell,
        c.node_id,
        c.leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into()),
        c.term,
        c.last_log_index,
        c.commit_index,
        c.applied_index,
        c.snapshot_index.map(|s| s.to_string()).unwrap_or_else(|| "none".into()),
    );
    let rows: Vec<Vec<String>> =
        c.members.iter().map(|m| vec![m.id.to_string(), m.addr.clone(), m.role.clone()]).collect();
    say!("{}", table(&["ID", "ADDRESS", "ROLE"], &rows));
    if !c.workers.is_empty() {
        let rows: Vec<Vec<String>> = c
            .workers
            .iter()
            .map(|w| {
                let last = w.last_error.as_deref().map(|e| format!("last error: {e}")).unwrap_or_default();
                vec![w.name.clone(), w.state.clone(), w.steps.to_string(), w.errors.to_string(), w.status.clone(), last]
            })
            .collect();
        say!(
            "\nworkers of member {}\n{}",
            c.node_id,
            table(&["WORKER", "STATE", "STEPS", "ERRORS", "STATUS", ""], &rows)
        );
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum CellCommand {
    /// Every cell: its state, leader, members, when it was last heard and the changes waiting each way.
    List,
}

pub async fn cell(target: &Target, command: CellCommand) -> anyhow::Result<()> {
    let client = target.client()?;
    match command {
        CellCommand::List => {
            let cells = client.cells().await?;
            if target.output == Output::Json {
                return print_json(&cells);
            }
            let rows: Vec<Vec<String>> = cells
                .iter()
                .map(|c| {
                    let ms = |v: Option<u64>| {
                        v.map(|ms| format!("{:.1}s", ms as f64 / 1000.0)).unwrap_or_else(|| "-".into())
                    };
                    vec![
                        c.name.clone(),
                        c.state.clone(),
                        c.leader.clone().unwrap_or_else(|| "-".into()),
                        ms(c.last_heard_ms_ago),
                        c.changes_to_send.to_string(),
                        c.changes_to_receive.to_string(),
                        ms(c.lag_in_ms),
                        c.members.join(","),
                    ]
                })
                .collect();
            say!(
                "{}",
                table(&["CELL", "STATE", "LEADER", "HEARD", "TO SEND", "TO RECEIVE", "LAG IN", "MEMBERS"], &rows)
            );
            Ok(())
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum QuotaCommand {
    /// Every group with a quota or usage: limit and desired usage per location.
    List,
    /// One group: limits, desired usage and what runs here, per location, and its history.
    Show { group: String },
    /// Sets a group's quota, every location at once, from a JSON file (`-` for stdin), e.g.
    /// `{"locations": {"dc1": {"instances": 40, "cpus": 64, "memoryMiB": 131072, "guaranteed": {"cpus": 16}}}}`.
    Set {
        group: String,
        file: String,
        /// Only if the quota is at this version (0: none yet).
        #[arg(long)]
        if_match: Option<u64>,
    },
    /// Removes a group's quota: no limit anywhere.
    Delete { group: String },
}

fn quota_rows(q: &titan_api::quota::QuotaView) -> Vec<Vec<String>> {
    let limit = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    q.locations
        .iter()
        .map(|l| {
            let lim = l.limit.as_ref();
            let pair = |used: String, max: Option<String>| format!("{used}/{}", limit(max));
            vec![
                q.group.clone(),
                l.location.clone(),
                pair(l.used.instances.to_string(), lim.and_then(|q| q.instances).map(|v| v.to_string())),
                pair(format!("{}", l.used.cpus), lim.and_then(|q| q.cpus).map(|v| v.to_string())),
                pair(l.used.memory_mib.to_string(), lim.and_then(|q| q.memory_mib).map(|v| v.to_string())),
                pair(format!("{}", l.used.disk_gib), lim.and_then(|q| q.disk_gib).map(|v| v.to_string())),
                l.running.map(|r| format!("{} ({} cpus)", r.instances, r.cpus)).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect()
}

const QUOTA_HEADER: [&str; 7] = ["GROUP", "LOCATION", "INSTANCES", "CPUS", "MEMORY MIB", "DISK GIB", "RUNNING HERE"];

pub async fn quota(target: &Target, command: QuotaCommand) -> anyhow::Result<()> {
    let client = target.client()?;
    let json = target.output == Output::Json;
    match command {
        QuotaCommand::List => {
            let list = client.list_quotas().await?;
            if json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list.quotas.iter().flat_map(quota_rows).collect();
            say!("{}", table(&QUOTA_HEADER, &rows));
        }
        QuotaCommand::Show { group } => {
            let q = client.get_quota(&group).await?;
            if json {
                return print_json(&q);
            }
            say!(
                "{} (version {}): used/limit per location\n{}",
                q.group,
                q.version,
                table(&QUOTA_HEADER, &quota_rows(&q))
            );
            for h in &q.history {
                say!(
                    "  v{} by {}: {}{}",
                    h.version,
                    h.who,
                    h.what,
                    h.why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()
                );
            }
        }
        QuotaCommand::Set { group, file, if_match } => {
            let body = if file == "-" {
                let mut s = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut s)?;
                s
            } else {
                std::fs::read(&file).with_context(|| format!("reading {file}"))?
            };
            let spec = titan_api::quota::QuotaSpec::parse(&body)?;
            let r = client.put_quota(&group, &spec, if_match).await?;
            if json {
                return print_json(&r);
            }
            say!("quota of {} set (version {})", r.group, r.version);
        }
        QuotaCommand::Delete { group } => {
            let r = client.delete_quota(&group).await?;
            if json {
                return print_json(&r);
            }
            say!("quota of {} deleted: no limit anywhere", r.group);
        }
    }
    Ok(())
}

pub async fn cluster(target: &Target, command: ClusterCommand) -> anyhow::Result<()> {
    let client = target.client()?;
    let json = target.output == Output::Json;
    let view = match command {
        ClusterCommand::Status => client.cluster().await?,
        ClusterCommand::Add { id, member_addr } => client.add_member(&AddMember { id, addr: member_addr }).await?,
        ClusterCommand::Remove { id } => client.remove_member(id).await?,
    };
    print_cluster(json, &view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use titan_api::ApiError;

    #[test]
    fn tables_align_columns() {
        let t = table(&["ID", "NAME"], &[vec!["1".into(), "web".into()], vec!["22".into(), "x".into()]]);
        assert_eq!(t, "ID  NAME\n1   web\n22  x");
    }

    #[test]
    fn a_timed_out_submission_says_it_may_still_create_the_job_and_how_to_retry() {
        let timeout = || ClientError::Api { status: 503, error: ApiError::new(ErrorCode::Timeout, "not committed") };
        let with_key = submit_error(timeout(), Some("k1")).to_string();
        assert!(with_key.contains("may still be created"), "{with_key}");
        assert!(with_key.contains("same --idempotency-key k1) is safe"), "{with_key}");
        let without = submit_error(timeout(), None).to_string();
        assert!(without.contains("check `titan job list`"), "{without}");
        let other = ClientError::Api { status: 400, error: ApiError::field("memory", "must be positive") };
        assert_eq!(submit_error(other, Some("k1")).to_string(), "400: invalid_spec: must be positive (field memory)");
    }

    #[test]
    fn users_are_found_by_uid_in_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# a comment\nbroken\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(user_of(passwd, 0).as_deref(), Some("root"));
        assert_eq!(user_of(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(user_of(passwd, 7), None);
    }

    #[test]
    fn times_print_as_utc() {
        assert_eq!(time(0), "1970-01-01 00:00:00Z");
        assert_eq!(time(1_795_305_600_000), "2026-11-22 00:00:00Z");
    }
}

#[derive(Subcommand, Debug)]
pub enum LocationCommand {
    /// Every location: lever state, traffic weight, its cell as seen from here, and a move under way.
    List,
    /// One location: state, weight, history, and a move's progress per job; while a move is under way it is shown
    /// live until it finishes (`--once` for one look).
    Status {
        name: String,
        #[arg(long)]
        once: bool,
    },
    /// Nothing new is placed in the location and no count there may rise; what runs keeps running.
    Freeze(LeverArgs),
    /// Back to active from frozen.
    Unfreeze(LeverArgs),
    /// Moves every job's count in the location to its other locations (make-before-break), within quotas and
    /// capacity; what fits nowhere stays and is reported.
    Evacuate {
        #[command(flatten)]
        lever: LeverArgs,
        /// Where the instances go (`dc2,dc3`); else each job's own other locations, else its failover preference.
        #[arg(long, value_delimiter = ',')]
        to: Vec<String>,
    },
    /// Returns the moved instances to the location; the extras elsewhere stop once its own tasks run.
    Restore(LeverArgs),
    /// Sets the location's traffic weight, 0 to 100.
    Weight {
        #[command(flatten)]
        lever: LeverArgs,
        weight: u8,
    },
}

#[derive(clap::Args, Debug)]
pub struct LeverArgs {
    pub name: String,
    /// Why (required: every lever is audited).
    #[arg(long)]
    pub reason: String,
    /// Say what the lever would do, writing nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn location_rows(list: &[titan_api::location::LocationView]) -> Vec<Vec<String>> {
    list.iter()
        .map(|l| {
            let moving = l.progress.as_ref().map_or("-".to_string(), |p| {
                format!("{}/{} running elsewhere, {} left behind", p.started_elsewhere, p.to_move, p.left_behind)
            });
            vec![l.name.clone(), l.state.clone(), l.weight.to_string(), l.cell_state.clone(), moving]
        })
        .collect()
}

fn print_answer(a: &titan_api::location::LeverAnswer) -> anyhow::Result<()> {
    let what = if a.dry_run { "would go" } else { "went" };
    say!("{} {}: {} {what} {} -> {} (weight {})", a.lever, a.location, a.location, a.from, a.state, a.weight);
    if !a.moves.is_empty() {
        let rows: Vec<Vec<String>> = a
            .moves
            .iter()
            .map(|m| {
                let to: Vec<String> = m.to.iter().map(|(l, n)| format!("{l}:{n}")).collect();
                vec![
                    m.name.clone(),
                    m.from.to_string(),
                    to.join(","),
                    m.left_behind.to_string(),
                    m.why_left.clone().unwrap_or_default(),
                ]
            })
            .collect();
        if a.lever == "restore" {
            say!("{}", table(&["JOB", "COUNT", "MOVED TO", "LEFT", "WHY LEFT"], &rows));
            say!("{} instances return to {} (the extras elsewhere stop as they run)", a.to_move, a.location);
        } else {
            say!("{}", table(&["JOB", "FROM", "TO", "LEFT", "WHY LEFT"], &rows));
            say!("{} instances move, {} stay behind", a.to_move, a.left_behind);
        }
    } else if a.jobs_affected > 0 {
        say!("{} jobs ask for {}", a.jobs_affected, a.location);
    }
    for c in &a.capacity {
        match &c.error {
            Some(e) => say!("capacity in {}: unknown ({e})", c.location),
            None => {
                let needs: Vec<String> =
                    c.fleet_needs.iter().map(|n| format!("{} agents of {}", n.agents, n.instance_group)).collect();
                let needs = if needs.is_empty() {
                    String::new()
                } else {
                    format!("; the fleet would add {}", needs.join(", "))
                };
                say!("capacity in {}: {} of {} placed in a trial{needs}", c.location, c.placed, c.requested);
            }
        }
    }
    Ok(())
}

pub async fn location(target: &Target, command: LocationCommand) -> anyhow::Result<()> {
    use titan_api::location::LeverKind;
    let client = target.client()?;
    let json = target.output == Output::Json;
    let (kind, lever, to) = match command {
        LocationCommand::List => {
            let list = client.list_locations().await?;
            if json {
                return print_json(&list);
            }
            say!("{}", table(&["LOCATION", "STATE", "WEIGHT", "CELL", "MOVE"], &location_rows(&list.locations)));
            return Ok(());
        }
        LocationCommand::Status { name, once } => loop {
            let l = client.get_location(&name).await?;
            if json {
                return print_json(&l);
            }
            say!(
                "{}",
                table(&["LOCATION", "STATE", "WEIGHT", "CELL", "MOVE"], &location_rows(std::slice::from_ref(&l)))
            );
            if let Some(p) = &l.progress {
                let rows: Vec<Vec<String>> = p
                    .jobs
                    .iter()
                    .map(|j| {
                        let to: Vec<String> = j.to.iter().map(|(l, n)| format!("{l}:{n}")).collect();
                        vec![
                            j.name.clone(),
                            j.job_id.clone(),
                            to.join(","),
                            format!("{}/{}", j.started_elsewhere, j.to_move),
                            j.stopped_in_location.to_string(),
                            j.left_behind.to_string(),
                            j.why_left.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                say!(
                    "{}",
                    table(&["JOB", "ID", "TO", "RUNNING ELSEWHERE", "NOT RUNNING HERE", "LEFT", "WHY LEFT"], &rows)
                );
                if let Some(e) = &p.evidence {
                    say!("automatic: {e}");
                }
            }
            let moving = matches!(l.state.as_str(), "evacuating" | "restoring");
            if once || !moving {
                for h in &l.history {
                    say!(
                        "  v{} {} by {}: {}{}",
                        h.version,
                        time(h.at_ms),
                        h.who,
                        h.what,
                        h.why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()
                    );
                }
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            say!("");
        },
        LocationCommand::Freeze(a) => (LeverKind::Freeze, a, Vec::new()),
        LocationCommand::Unfreeze(a) => (LeverKind::Unfreeze, a, Vec::new()),
        LocationCommand::Evacuate { lever, to } => (LeverKind::Evacuate, lever, to),
        LocationCommand::Restore(a) => (LeverKind::Restore, a, Vec::new()),
        LocationCommand::Weight { lever, weight } => {
            let a = client.set_weight(&lever.name, weight, &lever.reason, lever.dry_run).await?;
            if json {
                return print_json(&a);
            }
            return print_answer(&a);
        }
    };
    let a = client.pull_lever(&lever.name, kind, &lever.reason, &to, lever.dry_run).await?;
    if json {
        return print_json(&a);
    }
    print_answer(&a)
}

#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// Per instance group: desired size, instances by state, booting, idle, demand and shortfall, and the last
    /// decisions with their reasons.
    Status,
}

pub async fn fleet(target: &Target, command: FleetCommand) -> anyhow::Result<()> {
    let client = target.client()?;
    match command {
        FleetCommand::Status => {
            let view = client.autoscaler().await?;
            if target.output == Output::Json {
                return print_json(&view);
            }
            if view.groups.is_empty() {
                say!("no instance group is autoscaled ([[autoscaler.groups]] in the cell's config)");
                return Ok(());
            }
            let count = |m: &std::collections::BTreeMap<String, u32>| {
                m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
            };
            let rows: Vec<Vec<String>> = view
                .groups
                .iter()
                .map(|g| {
                    vec![
                        g.name.clone(),
                        g.fleet.clone(),
                        g.policy.clone(),
                        format!("{}-{}", g.min, g.max),
                        g.desired.to_string(),
                        count(&g.instances),
                        g.booting.to_string(),
                        count(&g.agents),
                        g.idle.to_string(),
                        g.demand_slots.to_string(),
                        g.shortfall.to_string(),
                        g.forecast_slots.map_or("-".into(), |f| f.to_string()),
                    ]
                })
                .collect();
            let header = [
                "GROUP",
                "FLEET",
                "POLICY",
                "MIN-MAX",
                "DESIRED",
                "INSTANCES",
                "BOOTING",
                "AGENTS",
                "IDLE",
                "DEMAND SLOTS",
                "SHORTFALL",
                "FORECAST",
            ];
            say!("{}", table(&header, &rows));
            for g in &view.groups {
                if let Some(e) = &g.error {
                    say!("{}: last fleet call failed: {e}", g.name);
                }
                for d in &g.decisions {
                    say!(
                        "  {} {} {} to {}: {} ({})",
                        time(d.at_ms),
                        g.name,
                        d.direction,
                        d.desired,
                        d.reason,
                        d.actions.join("; ")
                    );
                }
            }
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum AclCommand {
    /// API tokens: create (the secret is printed once), list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Creates a token and prints its secret (shown only now: the cell keeps its hash).
    Create {
        /// Its name, recorded as the actor of what it does.
        #[arg(long)]
        name: String,
        /// admin, sre, owner, reader or agent.
        #[arg(long)]
        role: String,
        /// For an owner: an application it may change; repeatable.
        #[arg(long = "app")]
        applications: Vec<String>,
        /// For an agent token: the agent id it acts as.
        #[arg(long)]
        agent: Option<String>,
        /// Seconds until it expires.
        #[arg(long)]
        ttl_seconds: Option<u64>,
    },
    /// Every token (never a secret), revoked ones too.
    List,
    /// Revokes a token in every member and every cell.
    Revoke { name: String },
}

const TOKEN_HEADER: [&str; 6] = ["NAME", "ROLE", "SCOPE", "CREATED BY", "EXPIRES", "STATE"];

pub async fn acl(target: &Target, command: AclCommand) -> anyhow::Result<()> {
    let client = target.client()?;
    let json = target.output == Output::Json;
    let AclCommand::Token(command) = command;
    match command {
        TokenCommand::Create { name, role, applications, agent, ttl_seconds } => {
            let role: titan_api::acl::Role = serde_json::from_value(serde_json::Value::String(role.clone()))
                .map_err(|_| anyhow::anyhow!("--role {role:?}: one of admin, sre, owner, reader, agent"))?;
            let spec = titan_api::acl::TokenSpec { name, role, applications, agent, ttl_seconds };
            let created = client.create_token(&spec).await?;
            if json {
                return print_json(&created);
            }
            say!("token {} ({}) created; its secret, shown only now:", created.token.name, created.token.role);
            say!("{}", created.secret);
        }
        TokenCommand::List => {
            let list = client.list_tokens().await?;
            if json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .tokens
                .iter()
                .map(|t| {
                    let scope = match (&t.agent, t.applications.is_empty()) {
                        (Some(a), _) => format!("agent {a}"),
                        (None, false) => t.applications.join(","),
                        (None, true) => "-".into(),
                    };
                    let state = if t.revoked_at_ms.is_some() { "revoked" } else { "active" };
                    let expires = t.expires_at_ms.map(time).unwrap_or_else(|| "never".into());
                    vec![t.name.clone(), t.role.to_string(), scope, t.created_by.clone(), expires, state.into()]
                })
                .collect();
            say!("{}", table(&TOKEN_HEADER, &rows));
        }
        TokenCommand::Revoke { name } => {
            let t = client.revoke_token(&name).await?;
            if json {
                return print_json(&t);
            }
            say!("token {} revoked", t.name);
        }
    }
    Ok(())
}
