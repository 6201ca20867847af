//! A member's address as others reach it, `HOST:PORT`, where HOST is a DNS name, an IPv4 address or a bracketed
//! IPv6 one: what `peers`, `advertise` and `[federation] cells` hold, and what a member is in Raft's membership.
//!
//! A name is kept as given (lowercased) and resolved at each connection, so a member whose IP changes is found
//! again under its name. An IP address is kept in `SocketAddr`'s own spelling, so a member known by an IP has the
//! same membership address it had when `peers` held `SocketAddr`s.

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest DNS name (RFC 1035), and the longest label in one.
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// A validated `HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PeerAddr(String);

/// Why a string is not a `HOST:PORT`; each names the rule it breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("{0:?} is not HOST:PORT (no port)")]
    NoPort(String),
    #[error("{0:?}: the port must be 1-65535")]
    Port(String),
    #[error("{0:?}: the host is empty")]
    EmptyHost(String),
    #[error("{0:?}: an IPv6 address goes in brackets, as [::1]:7070")]
    Unbracketed(String),
    #[error("{0:?}: not an IPv6 address between the brackets")]
    Ipv6(String),
    #[error("{0:?}: not an IPv4 address (a name's last label is not all digits)")]
    Ipv4(String),
    #[error(
        "{0:?}: not a DNS name (labels of 1-{MAX_LABEL} letters, digits and '-', not starting or ending with '-', \
         separated by '.', at most {MAX_NAME} characters)"
    )]
    Name(String),
}

impl PeerAddr {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host: a name, an IPv4 address, or an IPv6 address in brackets.
    pub fn host(&self) -> &str {
        self.split().0
    }

    pub fn port(&self) -> u16 {
        self.split().1.parse().expect("a PeerAddr's port was checked when it was made")
    }

    fn split(&self) -> (&str, &str) {
        self.0.rsplit_once(':').expect("a PeerAddr has a port")
    }
}

impl FromStr for PeerAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<PeerAddr, AddrError> {
        let s = s.trim();
        if let Ok(ip) = s.parse::<SocketAddr>() {
            if ip.port() == 0 {
                return Err(AddrError::Port(s.to_string()));
            }
            return Ok(PeerAddr::from(ip));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| AddrError::NoPort(s.to_string()))?;
        // Checked as digits first: `u16::from_str` also takes a leading '+'.
        let port_ok = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
        match port.parse::<u16>() {
            Ok(p) if port_ok && p > 0 => {}
            _ => return Err(AddrError::Port(s.to_string())),
        }
        if host.is_empty() {
            return Err(AddrError::EmptyHost(s.to_string()));
        }
        // The port is good, so an IP address here would have been taken as a `SocketAddr` above.
        if host.starts_with('[') {
            return Err(AddrError::Ipv6(s.to_string()));
        }
        if host.parse::<Ipv6Addr>().is_ok() {
            return Err(AddrError::Unbracketed(s.to_string()));
        }
        // `10.0.0.256` would be a valid name by its characters; a top label of digits is a mistyped address.
        if host.rsplit('.').next().is_some_and(|top| !top.is_empty() && top.bytes().all(|b| b.is_ascii_digit())) {
            return Err(AddrError::Ipv4(s.to_string()));
        }
        if !is_dns_name(host) {
            return Err(AddrError::Name(s.to_string()));
        }
        // Names are case-insensitive: one spelling per member, so its identity compares equal however written.
        Ok(PeerAddr(format!("{}:{port}", host.to_ascii_lowercase())))
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and hyphens, none starting or ending with one.
fn is_dns_name(host: &str) -> bool {
    host.len() <= MAX_NAME
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> PeerAddr {
        PeerAddr(addr.to_string())
    }
}

impl TryFrom<String> for PeerAddr {
    type Error = AddrError;

    fn try_from(s: String) -> Result<PeerAddr, AddrError> {
        s.parse()
    }
}

impl From<PeerAddr> for String {
    fn from(addr: PeerAddr) -> String {
        addr.0
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `input` parses to `expected`: the address it keeps, or the error.
    fn check(input: &str, expected: Result<&str, AddrError>) {
        let got = input.parse::<PeerAddr>().map(String::from);
        assert_eq!(got, expected.map(str::to_string), "{input:?}");
    }

    #[test]
    fn an_ip_address_keeps_its_socket_addr_spelling() {
        check("127.0.0.1:7001", Ok("127.0.0.1:7001"));
        check(" 10.0.0.3:7070 ", Ok("10.0.0.3:7070"));
        check("[fd00::1]:7070", Ok("[fd00::1]:7070"));
        check("[fd00:0:0::1]:7070", Ok("[fd00::1]:7070"));
        let ip: SocketAddr = "127.0.0.1:7001".parse().expect("valid");
        assert_eq!(PeerAddr::from(ip).as_str(), ip.to_string());
    }

    #[test]
    fn a_dns_name_is_taken_and_lowercased() {
        check("localhost:7070", Ok("localhost:7070"));
        check("titan-0.titan-peers.ns.svc.cluster.local:7070", Ok("titan-0.titan-peers.ns.svc.cluster.local:7070"));
        check("Titan-0.Example.COM:1", Ok("titan-0.example.com:1"));
        check("1password.example.com:443", Ok("1password.example.com:443"));
        let a: PeerAddr = "dc2.example.com:7070".parse().expect("valid");
        assert_eq!((a.host(), a.port()), ("dc2.example.com", 7070));
        let v6: PeerAddr = "[::1]:7070".parse().expect("valid");
        assert_eq!((v6.host(), v6.port()), ("[::1]", 7070));
    }

    #[test]
    fn without_a_port_it_is_refused() {
        check("localhost", Err(AddrError::NoPort("localhost".into())));
        check("", Err(AddrError::NoPort("".into())));
    }

    #[test]
    fn the_port_is_1_to_65535() {
        for bad in ["localhost:0", "localhost:65536", "localhost:", "localhost:+80", "localhost:http", "10.0.0.1:0"] {
            check(bad, Err(AddrError::Port(bad.into())));
        }
        check("[::1]:0", Err(AddrError::Port("[::1]:0".into())));
        check("localhost:65535", Ok("localhost:65535"));
    }

    #[test]
    fn the_host_is_not_empty() {
        check(":7070", Err(AddrError::EmptyHost(":7070".into())));
    }

    #[test]
    fn an_ipv6_address_is_bracketed() {
        check("::1:7070", Err(AddrError::Unbracketed("::1:7070".into())));
        check("fd00::1:7070", Err(AddrError::Unbracketed("fd00::1:7070".into())));
        check("[fd00::g]:7070", Err(AddrError::Ipv6("[fd00::g]:7070".into())));
        check("[fd00::1:7070", Err(AddrError::Ipv6("[fd00::1:7070".into())));
    }

    #[test]
    fn a_host_of_digits_is_an_ipv4_address() {
        check("10.0.0.256:7070", Err(AddrError::Ipv4("10.0.0.256:7070".into())));
        check("10.0.0:7070", Err(AddrError::Ipv4("10.0.0:7070".into())));
        check("7070:7070", Err(AddrError::Ipv4("7070:7070".into())));
    }

    #[test]
    fn a_name_is_made_of_valid_labels() {
        let long_label = format!("{}.example.com:1", "a".repeat(64));
        let long_name = format!("{}.com:1", "abcdefgh.".repeat(28));
        for bad in [
            "under_score.example.com:1",
            "-lead.example.com:1",
            "trail-.example.com:1",
            "double..dot:1",
            "trailing.dot.:1",
            "http://x:1",
            "sp ace:1",
            "ünicode.example:1",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            check(bad, Err(AddrError::Name(bad.into())));
        }
        let longest_label = format!("{}.example.com:1", "a".repeat(63));
        check(&longest_label, Ok(longest_label.as_str()));
    }

    #[test]
    fn it_reads_and_writes_as_a_plain_string() {
        let a: PeerAddr = serde_json::from_str(r#""localhost:7070""#).expect("valid");
        assert_eq!(serde_json::to_string(&a).expect("serializes"), r#""localhost:7070""#);
        let err = serde_json::from_str::<PeerAddr>(r#""localhost""#).expect_err("no port");
        assert!(err.to_string().contains("is not HOST:PORT"), "{err}");
    }
}
