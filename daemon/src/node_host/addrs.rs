//! The daemon addresses a node host dials, and the order it tries them in.
//!
//! Several `ternd` daemons may share one store, one CA and one server certificate, so the
//! fingerprint a node pinned at pairing holds for all of them; a name may also resolve to
//! several addresses. A node keeps a list of `host:port` names ([`parse_addrs`]) and, at
//! every attempt, resolves each of them afresh ([`DaemonAddrs::resolve`]) and tries what
//! they resolve to in the order [`order`] gives: the address that answered last first,
//! so a node stays on the daemon it has, then the others starting at a random one, so a
//! fleet spreads over the daemons instead of all trying the first name first.

use std::fmt;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Mutex, PoisonError};

/// Why a daemon address was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrError {
    /// An empty entry in a list (`a:7443,,b:7443`, or a trailing comma).
    Blank,
    /// Not `host:port`: a DNS name, an IPv4 address or a bracketed IPv6 address, then a
    /// port from 1 to 65535.
    Bad { addr: String, why: &'static str },
    /// No address at all where one is needed.
    Empty,
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrError::Blank => f.write_str("an empty entry in the list of daemon addresses"),
            AddrError::Bad { addr, why } => {
                write!(f, "daemon address {addr:?} is not host:port: {why}")
            }
            AddrError::Empty => f.write_str("no daemon address"),
        }
    }
}

impl std::error::Error for AddrError {}

/// Checks one `host:port`: a DNS name (letters, digits, `.`, `-`, `_`), an IPv4 address
/// or an IPv6 address in brackets, then a port from 1 to 65535.
pub fn check_addr(addr: &str) -> Result<(), AddrError> {
    let bad = |why| AddrError::Bad {
        addr: addr.to_owned(),
        why,
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the port is not a number"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(bad("the port is not from 1 to 65535")),
        Ok(_) => {}
    }
    if let Some(inner) = host.strip_prefix('[') {
        let v6 = inner
            .strip_suffix(']')
            .ok_or_else(|| bad("an unclosed bracket"))?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| bad("not an IPv6 address in the brackets"))?;
        return Ok(());
    }
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host.contains(':') {
        return Err(bad("an IPv6 address goes in brackets, as in [::1]:7443"));
    }
    if host.len() > 253
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(bad("the host is not a DNS name or an IP address"));
    }
    Ok(())
}

/// Daemon addresses from the command line, the environment or a file: each item may be
/// one `host:port` or several separated by commas (whitespace around each is ignored).
/// Every address is checked with [`check_addr`]; one given twice is kept once, where it
/// first appears. The list may be empty.
pub fn parse_addrs<I, S>(items: I) -> Result<Vec<String>, AddrError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out: Vec<String> = Vec::new();
    for item in items {
        for addr in item.as_ref().split(',').map(str::trim) {
            if addr.is_empty() {
                return Err(AddrError::Blank);
            }
            check_addr(addr)?;
            if !out.iter().any(|known| known == addr) {
                out.push(addr.to_owned());
            }
        }
    }
    Ok(out)
}

/// The order one round tries `resolved` in: `preferred` (the address that answered
/// last) first if it is still among them, then the others in their order, rotated to
/// start at the `start`-th (modulo their count). An address resolved twice is tried
/// once.
pub fn order(
    resolved: &[SocketAddr],
    preferred: Option<SocketAddr>,
    start: u64,
) -> Vec<SocketAddr> {
    let first = preferred.filter(|p| resolved.contains(p));
    let mut rest: Vec<SocketAddr> = Vec::with_capacity(resolved.len());
    for addr in resolved {
        if first != Some(*addr) && !rest.contains(addr) {
            rest.push(*addr);
        }
    }
    if let Some(len) = u64::try_from(rest.len()).ok().filter(|&n| n > 0) {
        rest.rotate_left(usize::try_from(start % len).unwrap_or(0));
    }
    first.into_iter().chain(rest).collect()
}

/// The daemon's addresses a node host dials, shared by its dialers (QUIC and TCP + TLS),
/// with the one that answered last.
#[derive(Debug)]
pub struct DaemonAddrs {
    names: Vec<String>,
    /// Start each round at a random address (else at the first listed).
    spread: bool,
    preferred: Mutex<Option<SocketAddr>>,
}

impl DaemonAddrs {
    /// `names` (`host:port` each), tried from a random one while none has answered.
    pub fn new(names: Vec<String>) -> Self {
        Self {
            names,
            spread: true,
            preferred: Mutex::new(None),
        }
    }

    /// Tries the addresses in the order listed while none has answered, rather than from
    /// a random one.
    #[must_use]
    pub fn in_listed_order(mut self) -> Self {
        self.spread = false;
        self
    }

    /// The configured names.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The address that answered last, tried first.
    pub fn preferred(&self) -> Option<SocketAddr> {
        *self
            .preferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `addr` answered: try it first from now on.
    pub fn answered(&self, addr: SocketAddr) {
        *self
            .preferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(addr);
    }

    /// Resolves every name (at once), in the order listed, each name's addresses in the
    /// resolver's order. A name that does not resolve is skipped; an error only when none
    /// resolves.
    pub async fn resolve(&self) -> io::Result<Vec<SocketAddr>> {
        let lookups: Vec<_> = self
            .names
            .iter()
            .map(|name| {
                let name = name.clone();
                tokio::spawn(async move {
                    tokio::net::lookup_host(name.as_str())
                        .await
                        .map(Iterator::collect::<Vec<_>>)
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut last = None;
        for (name, lookup) in self.names.iter().zip(lookups) {
            match lookup.await {
                Ok(Ok(addrs)) => all.extend(addrs),
                Ok(Err(e)) => {
                    tracing::debug!(daemon = %name, error = %e, "cannot resolve");
                    last = Some(e);
                }
                Err(e) => last = Some(io::Error::other(e)),
            }
        }
        if all.is_empty() {
            return Err(last.unwrap_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} resolves to no address", self.names.join(", ")),
                )
            }));
        }
        Ok(all)
    }

    /// The addresses to try this round, in [`order`]: resolved afresh, the one that
    /// answered last first, the others from a random one.
    pub async fn round(&self) -> io::Result<Vec<SocketAddr>> {
        let resolved = self.resolve().await?;
        let start = if self.spread {
            // Without OS randomness every round starts at the first listed.
            getrandom::u64().unwrap_or(0)
        } else {
            0
        };
        Ok(order(&resolved, self.preferred(), start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn addresses_are_host_and_port() {
        for good in [
            "ternd.example:7443",
            "127.0.0.1:1",
            "[::1]:65535",
            "[fe80::1]:7443",
            "localhost:4433",
            "daemon_b.internal:7443",
        ] {
            assert_eq!(check_addr(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "ternd.example",
            "ternd.example:",
            ":7443",
            "ternd.example:0",
            "ternd.example:65536",
            "ternd.example:+80",
            "ternd.example:http",
            "::1:7443",
            "[::1:7443",
            "[not-v6]:7443",
            "a b:7443",
            "a/b:7443",
        ] {
            assert!(
                matches!(check_addr(bad), Err(AddrError::Bad { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn lists_split_on_commas_keep_their_order_and_drop_repeats() {
        assert_eq!(
            parse_addrs(["a:1, b:2", "c:3", "a:1"]),
            Ok(vec!["a:1".to_owned(), "b:2".to_owned(), "c:3".to_owned()])
        );
        assert_eq!(parse_addrs(Vec::<String>::new()), Ok(Vec::new()));
        assert_eq!(parse_addrs(["a:1,,b:2"]), Err(AddrError::Blank));
        assert_eq!(parse_addrs(["a:1,"]), Err(AddrError::Blank));
        assert!(matches!(
            parse_addrs(["a:1", "b"]),
            Err(AddrError::Bad { addr, .. }) if addr == "b"
        ));
    }

    #[test]
    fn the_address_that_answered_goes_first_and_the_others_rotate() {
        let (x, y, z) = (a("10.0.0.1:1"), a("10.0.0.2:1"), a("[::1]:1"));
        let all = [x, y, z];
        // Nothing answered yet: the start chooses the first, the order is kept.
        assert_eq!(order(&all, None, 0), [x, y, z]);
        assert_eq!(order(&all, None, 1), [y, z, x]);
        assert_eq!(order(&all, None, 5), [z, x, y]);
        // The one that answered first, whatever the start; the others rotate.
        assert_eq!(order(&all, Some(z), 0), [z, x, y]);
        assert_eq!(order(&all, Some(z), 1), [z, y, x]);
        assert_eq!(order(&all, Some(y), 7), [y, z, x]);
        // One that no longer resolves is forgotten for this round.
        assert_eq!(order(&[x, y], Some(z), 0), [x, y]);
        // Two names resolving to the same address: tried once.
        assert_eq!(order(&[x, y, x, z, y], Some(y), 0), [y, x, z]);
        assert_eq!(order(&[], Some(x), 3), []);
        assert_eq!(order(&[x], None, u64::MAX), [x]);
    }

    #[test]
    fn every_start_is_as_likely() {
        // Over all starts, each address comes first equally often.
        let all: Vec<SocketAddr> = (1..=4).map(|i| a(&format!("10.0.0.{i}:7443"))).collect();
        let mut firsts = [0usize; 4];
        for start in 0..400u64 {
            let first = order(&all, None, start)[0];
            firsts[all.iter().position(|x| *x == first).unwrap_or(0)] += 1;
        }
        assert_eq!(firsts, [100; 4]);
    }

    #[tokio::test]
    async fn rounds_resolve_every_name_and_stay_on_the_one_that_answered() {
        let addrs = DaemonAddrs::new(vec![
            "127.0.0.1:7001".into(),
            "localhost:7002".into(),
            "[::1]:7003".into(),
        ])
        .in_listed_order();
        let resolved = addrs.resolve().await.unwrap();
        assert_eq!(resolved.first(), Some(&a("127.0.0.1:7001")));
        assert_eq!(resolved.last(), Some(&a("[::1]:7003")));
        assert!(resolved.iter().any(|x| x.port() == 7002));
        assert_eq!(addrs.round().await.unwrap(), order(&resolved, None, 0));
        addrs.answered(a("[::1]:7003"));
        let round = addrs.round().await.unwrap();
        assert_eq!(round[0], a("[::1]:7003"));
        assert_eq!(round[1], a("127.0.0.1:7001"));

        // A name that does not resolve is skipped; none at all is an error.
        let some = DaemonAddrs::new(vec!["no-such-host.invalid:1".into(), "127.0.0.1:9".into()]);
        assert_eq!(some.round().await.unwrap(), [a("127.0.0.1:9")]);
        let none = DaemonAddrs::new(vec!["no-such-host.invalid:1".into()]);
        assert!(none.round().await.is_err());
    }
}
