//! Health checks: probes (tcp, http, command) and the tracker that turns their results into a verdict, with a
//! grace period after start and a number of consecutive failures before a task is called unhealthy.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A task's health as reported with its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Inside the grace period, or no probe has passed yet.
    Starting,
    Healthy,
    Unhealthy,
}

/// The rules of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub interval: Duration,
    pub timeout: Duration,
    /// Failures inside it after start do not count.
    pub grace: Duration,
    /// Consecutive failures that make a task unhealthy.
    pub failure_threshold: u32,
}

/// Consecutive results turned into a verdict. Pure: time comes in as the elapsed time since the task started.
#[derive(Clone, Debug)]
pub struct Tracker {
    policy: Policy,
    failures: u32,
    state: Health,
}

impl Tracker {
    pub fn new(policy: Policy) -> Tracker {
        Tracker { policy, failures: 0, state: Health::Starting }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    /// Records one probe's result `since_start` after the task started; returns the verdict.
    pub fn observe(&mut self, since_start: Duration, ok: bool) -> Health {
        if ok {
            self.failures = 0;
            self.state = Health::Healthy;
        } else if since_start >= self.policy.grace {
            self.failures += 1;
            if self.failures >= self.policy.failure_threshold.max(1) {
                self.state = Health::Unhealthy;
            }
        }
        self.state
    }
}

/// Whether something accepts TCP connections at `addr` within `timeout`.
pub async fn probe_tcp(addr: &str, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, TcpStream::connect(addr)).await, Ok(Ok(_)))
}

/// Whether `GET path` at `addr` answers a 2xx or 3xx status within `timeout`.
pub async fn probe_http(addr: &str, path: &str, timeout: Duration) -> bool {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: titan-agent\r\n\r\n");
        s.write_all(request.as_bytes()).await.ok()?;
        let mut head = vec![0u8; 64];
        let n = s.read(&mut head).await.ok()?;
        let line = String::from_utf8_lossy(&head[..n]).lines().next()?.to_string();
        let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((200..400).contains(&status))
    };
    matches!(tokio::time::timeout(timeout, exchange).await, Ok(Some(true)))
}

/// Whether `argv` exits 0 within `timeout` (for checks run on the host, as the process runtime does).
pub async fn probe_command(argv: &[String], timeout: Duration) -> bool {
    let Some((program, args)) = argv.split_first() else { return false };
    let run = tokio::process::Command::new(program).args(args).kill_on_drop(true).status();
    matches!(tokio::time::timeout(timeout, run).await, Ok(Ok(status)) if status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            grace: Duration::from_secs(10),
            failure_threshold: 3,
        }
    }

    #[test]
    fn grace_and_threshold_decide_the_verdict() {
        let mut t = Tracker::new(policy());
        let s = Duration::from_secs;
        assert_eq!(t.observe(s(1), false), Health::Starting, "failures in the grace period do not count");
        assert_eq!(t.observe(s(2), false), Health::Starting);
        assert_eq!(t.observe(s(3), true), Health::Healthy);
        assert_eq!(t.observe(s(11), false), Health::Healthy, "one failure is not enough");
        assert_eq!(t.observe(s(12), false), Health::Healthy);
        assert_eq!(t.observe(s(13), false), Health::Unhealthy, "the third in a row is");
        assert_eq!(t.observe(s(14), true), Health::Healthy, "a pass resets the count");
        assert_eq!(t.observe(s(15), false), Health::Healthy);
    }

    #[tokio::test]
    async fn probes_reach_real_listeners() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let path = String::from_utf8_lossy(&buf[..n]).split_whitespace().nth(1).unwrap_or("").to_string();
                let status = if path == "/ok" { "200 OK" } else { "503 Service Unavailable" };
                let _ = s.write_all(format!("HTTP/1.0 {status}\r\n\r\n").as_bytes()).await;
            }
        });
        let t = Duration::from_secs(2);
        assert!(probe_tcp(&addr, t).await);
        assert!(probe_http(&addr, "/ok", t).await);
        assert!(!probe_http(&addr, "/sick", t).await);
        // A closed port: nothing listens on a port just released.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").to_string();
        assert!(!probe_tcp(&closed, t).await);
        assert!(!probe_http(&closed, "/ok", t).await);
        assert!(probe_command(&["true".to_string()], t).await);
        assert!(!probe_command(&["false".to_string()], t).await);
        assert!(!probe_command(&["sleep".to_string(), "5".to_string()], Duration::from_millis(100)).await);
        assert!(!probe_command(&[], t).await);
    }
}
