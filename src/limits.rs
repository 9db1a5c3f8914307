//! Bounds on what one client may cost: connections, topics, message size and
//! rate, and which web origins may connect. Every limit answers with a defined
//! error (README, "Security") instead of degrading service for other clients.

use axum::http::{HeaderMap, HeaderValue};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnRefused {
    Total,
    PerIp,
}

/// Counts open connections; a `ConnGuard` gives its slot back when dropped, so a
/// connection that ends in any way (error, panic, client gone) cannot leak one.
pub(crate) struct ConnLimiter {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

pub(crate) struct ConnGuard {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
    /// What the per-address cap counts: the address, or its /64 for IPv6
    /// (`client_block`: one host holds a whole /64); `None` for a slot of
    /// the total only (`acquire_in_total`).
    block: Option<IpAddr>,
}

impl ConnLimiter {
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            max_total,
            max_per_ip,
            state: Mutex::new((0, HashMap::new())),
        })
    }

    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, ConnRefused> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0 >= self.max_total {
            return Err(ConnRefused::Total);
        }
        let block = client_block(ip);
        let n = st.1.entry(block).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(ConnRefused::PerIp);
        }
        *n += 1;
        st.0 += 1;
        Ok(ConnGuard {
            limiter: Arc::clone(self),
            ip,
            block: Some(block),
        })
    }

    /// A slot of the total only, for a socket that stands beside one of its
    /// address's connections (a Socket.IO upgrade probe beside its session):
    /// the address's cap counts the connection once.
    pub(crate) fn acquire_in_total(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, ConnRefused> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0 >= self.max_total {
            return Err(ConnRefused::Total);
        }
        st.0 += 1;
        Ok(ConnGuard {
            limiter: Arc::clone(self),
            ip,
            block: None,
        })
    }
}

impl ConnGuard {
    pub(crate) fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut st = self.limiter.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 = st.0.saturating_sub(1);
        let Some(block) = self.block else {
            return;
        };
        if let Some(n) = st.1.get_mut(&block) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.1.remove(&block);
            }
        }
    }
}

/// Why a request body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyRefused {
    /// More than the route's bound.
    TooLarge,
    /// The connection failed while it was read.
    Unreadable,
    /// Not all there within the header timeout.
    Late,
}

/// A request body of at most `max` bytes, all of it arriving `within` (the
/// header timeout): a peer that announces a body and sends it slowly, or
/// never, holds its socket no longer than a slow request head would.
pub(crate) async fn read_body(
    body: axum::body::Body,
    max: usize,
    within: std::time::Duration,
) -> Result<bytes::Bytes, BodyRefused> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let read = async {
        let mut buf = bytes::BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| BodyRefused::Unreadable)?;
            if buf.len() + chunk.len() > max {
                return Err(BodyRefused::TooLarge);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(within, read)
        .await
        .map_err(|_| BodyRefused::Late)?
}

/// Token bucket: `rate` per second, bursts of `rate`.
pub(crate) struct RateLimiter {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub(crate) fn new(per_sec: u32) -> RateLimiter {
        let rate = f64::from(per_sec.max(1));
        RateLimiter {
            rate,
            tokens: rate,
            at: Instant::now(),
        }
    }

    /// Takes one token; false when the client is over its rate.
    pub(crate) fn allow(&mut self) -> bool {
        let now = Instant::now();
        let dt = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The block of addresses one client usually holds: an IPv4 address, or an
/// IPv6 /64 (IPv4-mapped IPv6 addresses count as their IPv4 address).
pub(crate) fn client_block(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        IpAddr::V6(v6) => IpAddr::V4(
            v6.to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        ),
        v4 => v4,
    }
}

/// Token buckets per client address: `rate` per second, bursts of `burst`.
///
/// Used for `rowcast.authorize` checks (cache misses): each costs a database
/// round trip, and a client can ask for any number of distinct topics
/// (`order-1`, `order-2`, ...), so without a budget a handful of WebSockets
/// sending subscribes could keep the pool busy with policy queries. IPv6
/// clients are budgeted per /64, the block one host usually holds.
pub(crate) struct IpBudget {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Addresses tracked at most; past it, full (idle) buckets are forgotten,
/// and if that is not enough, all of them: memory stays bounded, and a
/// forgotten address only gets the full budget a new one gets anyway.
const MAX_BUDGETED_IPS: usize = 100_000;

impl IpBudget {
    pub(crate) fn new(per_sec: u32, burst: usize) -> IpBudget {
        let rate = f64::from(per_sec.max(1));
        IpBudget {
            rate,
            burst: (burst.max(1) as f64).max(rate),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `n` tokens from the address's bucket; false, taking nothing,
    /// when fewer are left.
    pub(crate) fn take(&self, ip: IpAddr, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        let key = client_block(ip);
        let now = Instant::now();
        let mut m = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_BUDGETED_IPS && !m.contains_key(&key) {
            let (rate, burst) = (self.rate, self.burst);
            m.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
            if m.len() >= MAX_BUDGETED_IPS {
                m.clear();
            }
        }
        let (tokens, at) = m.entry(key).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= n as f64 {
            *tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

/// Which `Origin`s may use the API. Browsers send `Origin` on WebSocket
/// upgrades and cross-origin requests; without this check any web page could
/// open a socket with the visitor's cookies or reach an intranet rowcast.
#[derive(Clone, Debug, Default)]
pub struct Origins {
    /// Empty: same origin only. Entries: `*`, an exact origin
    /// (`https://shop.example`), or an origin with any port (`http://localhost:*`).
    pub allowed: Vec<String>,
}

impl Origins {
    pub fn parse(list: &str) -> Origins {
        Origins {
            allowed: list
                .split(',')
                .map(|s| without_default_port(&s.trim().trim_end_matches('/').to_ascii_lowercase()))
                .filter(|s| !s.is_empty())
                .collect(),
        }
    }

    /// Whether an entry can match some `Origin`: `*`, or `http(s)://host`
    /// with an optional port or `:*`; no path, no other wildcard, no space.
    pub fn can_match(entry: &str) -> bool {
        if entry == "*" {
            return true;
        }
        let Some(rest) = entry
            .strip_prefix("http://")
            .or_else(|| entry.strip_prefix("https://"))
        else {
            return false;
        };
        let host = rest.strip_suffix(":*").unwrap_or(rest);
        !host.is_empty()
            && !host.contains(['/', '*', '?', '#', '@', ' ', ','])
            && !host.ends_with(':')
    }

    /// The localhost origins `rowcast demo` allows.
    pub fn localhost() -> Origins {
        Origins::parse("http://localhost:*,http://127.0.0.1:*,http://[::1]:*")
    }

    /// `Ok(None)` for a request without `Origin` (not a browser, or same-origin
    /// GET), `Ok(Some(origin))` for an allowed one, `Err` for a refused one.
    pub fn check(&self, headers: &HeaderMap) -> Result<Option<HeaderValue>, OriginRefused> {
        let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
            return Ok(None);
        };
        let o = origin
            .to_str()
            .map_err(|_| OriginRefused)?
            .trim()
            .to_ascii_lowercase();
        let o = without_default_port(&o);
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_ascii_lowercase);
        let same = host.is_some_and(|h| {
            o.strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
                .is_some_and(|rest| rest == h)
        });
        if same || self.allowed.iter().any(|a| origin_matches(a, &o)) {
            Ok(Some(origin.clone()))
        } else {
            Err(OriginRefused)
        }
    }
}

/// An origin as browsers write it: without its scheme's default port
/// (`https://shop.example:443` is `https://shop.example`; an entry written
/// with it would otherwise never match a browser's `Origin`).
fn without_default_port(origin: &str) -> String {
    let default = if origin.starts_with("https://") {
        ":443"
    } else if origin.starts_with("http://") {
        ":80"
    } else {
        return origin.to_string();
    };
    origin.strip_suffix(default).unwrap_or(origin).to_string()
}

/// The request's `Origin` is neither the server's own nor an allowed one.
#[derive(Debug, PartialEq, Eq)]
pub struct OriginRefused;

fn origin_matches(pattern: &str, origin: &str) -> bool {
    if pattern == "*" || pattern == origin {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix(":*") {
        if origin == prefix {
            return true;
        }
        if let Some(port) = origin
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix(':'))
        {
            return !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-address connection cap counts an IPv6 client's /64, as the
    /// other per-address budgets do: one host holds a whole /64.
    #[test]
    fn connections_per_address_count_an_ipv6_slash_64() {
        let l = ConnLimiter::new(100, 2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = l.acquire(ip("2001:db8:1:2::1")).unwrap();
        let _b = l.acquire(ip("2001:db8:1:2:ffff::7")).unwrap();
        assert_eq!(
            l.acquire(ip("2001:db8:1:2::99")).err(),
            Some(ConnRefused::PerIp)
        );
        assert!(l.acquire(ip("2001:db8:1:3::1")).is_ok(), "another /64");
        assert_eq!(a.ip(), ip("2001:db8:1:2::1"), "the guard keeps the address");
        drop(a);
        assert!(l.acquire(ip("2001:db8:1:2::99")).is_ok(), "slot given back");
        // IPv4 (and IPv4-mapped) addresses count one by one
        let _c = l.acquire(ip("10.0.0.1")).unwrap();
        let _d = l.acquire(ip("10.0.0.1")).unwrap();
        assert!(l.acquire(ip("10.0.0.2")).is_ok());
    }

    /// Entries that can match an `Origin`, and ones that never could.
    #[test]
    fn origin_entries_that_can_match() {
        for ok in [
            "*",
            "https://shop.example",
            "https://shop.example:8443",
            "http://localhost:*",
            "http://[::1]:*",
        ] {
            assert!(Origins::can_match(ok), "{ok}");
        }
        for never in [
            "shop.example",
            "https://*.example.com",
            "https://shop.example/app",
            "ftp://shop.example",
            "https://",
            "https://shop.example:",
        ] {
            assert!(!Origins::can_match(never), "{never}");
        }
    }

    #[test]
    fn origins() {
        let o = Origins::localhost();
        assert!(origin_matches(
            "http://localhost:*",
            "http://localhost:3000"
        ));
        assert!(!origin_matches(
            "http://localhost:*",
            "http://localhost.evil:3000"
        ));
        assert!(!origin_matches(
            "http://localhost:*",
            "http://localhost:3000x"
        ));
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("rowcast.example:8080"));
        assert_eq!(o.check(&h), Ok(None));
        h.insert(
            "origin",
            HeaderValue::from_static("http://rowcast.example:8080"),
        );
        assert!(Origins::default().check(&h).is_ok());
        h.insert("origin", HeaderValue::from_static("https://evil.example"));
        assert!(Origins::default().check(&h).is_err());
        h.insert("origin", HeaderValue::from_static("null"));
        assert!(Origins::default().check(&h).is_err());
    }

    /// A scheme's default port in an entry (or an `Origin`) is dropped, as
    /// browsers drop it from theirs; another port is kept.
    #[test]
    fn default_ports_are_as_browsers_write_them() {
        let o = Origins::parse("https://shop.example:443, http://[::1]:80,https://x.example:8443");
        assert_eq!(
            o.allowed,
            [
                "https://shop.example",
                "http://[::1]",
                "https://x.example:8443"
            ]
        );
        let mut h = HeaderMap::new();
        for (origin, ok) in [
            ("https://shop.example", true),
            ("https://shop.example:443", true),
            ("http://shop.example", false),
            ("https://x.example", false),
            ("https://x.example:8443", true),
            ("http://[::1]", true),
        ] {
            h.insert("origin", HeaderValue::from_static(origin));
            assert_eq!(o.check(&h).is_ok(), ok, "{origin}");
        }
    }

    #[test]
    fn authorize_budget_per_address() {
        let b = IpBudget::new(1, 10);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(b.take(a, 10));
        assert!(!b.take(a, 1), "the burst is spent");
        assert!(b.take("127.0.0.2".parse().unwrap(), 10), "another address");
        // one IPv6 /64 is one budget
        assert!(b.take("2001:db8::1".parse().unwrap(), 10));
        assert!(!b.take("2001:db8::2".parse().unwrap(), 1));
        assert!(b.take("2001:db8:0:1::1".parse().unwrap(), 1));
        assert!(b.take(a, 0), "asking nothing costs nothing");
    }

    #[test]
    fn connection_slots_come_back() {
        let l = ConnLimiter::new(3, 2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = l.acquire(ip).unwrap();
        let _b = l.acquire(ip).unwrap();
        assert_eq!(l.acquire(ip).err(), Some(ConnRefused::PerIp));
        drop(a);
        assert!(l.acquire(ip).is_ok());
    }

    #[test]
    fn a_slot_beside_counts_in_the_total_only() {
        let l = ConnLimiter::new(3, 1);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let _session = l.acquire(ip).unwrap();
        // at the address's cap, a probe still goes
        let probe = l.acquire_in_total(ip).unwrap();
        let _other = l.acquire("127.0.0.2".parse().unwrap()).unwrap();
        // the total is full
        assert_eq!(l.acquire_in_total(ip).err(), Some(ConnRefused::Total));
        drop(probe);
        assert!(l.acquire_in_total(ip).is_ok());
        assert_eq!(
            l.acquire(ip).err(),
            Some(ConnRefused::PerIp),
            "the address's count is untouched"
        );
    }
}
