//! Upstream connections: name resolution with SSRF defence, the pooled HTTP client, and what
//! upstream failures mean for the client.
//!
//! Every upstream TCP connection — pooled client requests and raw `CONNECT` tunnels alike — is
//! made by [`Egress::connect`], which is the one place that enforces:
//! - `FLEETFORGE_RESOLVE` pins (`host=addr:port`): the pinned address is used and trusted;
//! - otherwise DNS, and refusal when any address is loopback, private, link-local or otherwise
//!   not public, unless `FLEETFORGE_ALLOW_PRIVATE` is set — so a name cannot point the proxy at
//!   169.254.169.254 or at a service on the proxy's own host;
//! - never this proxy's own listeners (loop guard);
//! - a connect timeout and `TCP_NODELAY`.
//!
//! Checking the addresses actually dialled (not a separate lookup) closes the DNS-rebinding gap.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::config::Config;
use crate::context::Target;
use crate::error::{ErrorKind, Phase, ProxyError, Side};

/// The pooled upstream client (HTTP/1.1 and HTTP/2 over TLS, or plain HTTP).
pub type HttpClient = Client<HttpsConnector<EgressConnector>, Full<Bytes>>;

/// Why an upstream connection was not made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The destination resolves to an address that is not public.
    #[error(
        "{host} resolves to {addr}, a {class} address; such destinations are denied unless FLEETFORGE_ALLOW_PRIVATE=true or the host is pinned with FLEETFORGE_RESOLVE"
    )]
    Private {
        /// Host asked for.
        host: String,
        /// The offending address.
        addr: IpAddr,
        /// What kind of address it is.
        class: &'static str,
    },
    /// The destination is one of this proxy's own listeners.
    #[error("{host}:{port} is this proxy's own listener; refusing to connect to myself")]
    Loop {
        /// Host asked for.
        host: String,
        /// Port asked for.
        port: u16,
    },
    /// DNS failed.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// Host asked for.
        host: String,
        /// The resolver error.
        source: io::Error,
    },
    /// DNS returned nothing.
    #[error("{host} has no address")]
    NoAddress {
        /// Host asked for.
        host: String,
    },
    /// Every address refused or failed.
    #[error("cannot connect to {host} at {addr}: {source}")]
    Connect {
        /// Host asked for.
        host: String,
        /// The last address tried.
        addr: SocketAddr,
        /// The socket error.
        source: io::Error,
    },
    /// The connect timeout passed.
    #[error("connecting to {host}:{port} timed out after {timeout:?}")]
    Timeout {
        /// Host asked for.
        host: String,
        /// Port asked for.
        port: u16,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The request URI has no host.
    #[error("upstream URI {0} has no host")]
    NoHost(String),
}

/// What the egress connector needs to know; shared by every connection attempt.
#[derive(Debug)]
pub struct Egress {
    resolve: HashMap<String, SocketAddr>,
    allow_private: bool,
    connect_timeout: Duration,
    own_listeners: RwLock<Vec<SocketAddr>>,
}

impl Egress {
    /// Builds the egress rules from the config.
    pub fn new(config: &Config) -> Self {
        Self {
            resolve: config.resolve.clone(),
            allow_private: config.allow_private,
            connect_timeout: config.connect_timeout,
            own_listeners: RwLock::new(Vec::new()),
        }
    }

    /// Registers the addresses this proxy listens on, so it never dials itself.
    pub fn set_own_listeners(&self, addrs: Vec<SocketAddr>) {
        *self.own_listeners.write().unwrap_or_else(|e| e.into_inner()) = addrs;
    }

    /// Whether `addr` is one of this proxy's listeners (an unspecified listen IP matches any).
    pub fn is_own_listener(&self, addr: SocketAddr) -> bool {
        self.own_listeners.read().unwrap_or_else(|e| e.into_inner()).iter().any(|own| {
            own.port() == addr.port() && (own.ip() == addr.ip() || own.ip().is_unspecified() && is_local(addr.ip()))
        })
    }

    /// Resolves and connects to `host:port` under the rules in the module docs.
    pub async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, ConnectError> {
        let addrs = self.resolve(host, port).await?;
        let attempt = async {
            let mut last = None;
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(stream) => {
                        // Latency matters more than packet count for request/response traffic.
                        let _ = stream.set_nodelay(true);
                        return Ok(stream);
                    }
                    Err(source) => last = Some(ConnectError::Connect { host: host.to_owned(), addr, source }),
                }
            }
            Err(last.unwrap_or_else(|| ConnectError::NoAddress { host: host.to_owned() }))
        };
        tokio::time::timeout(self.connect_timeout, attempt).await.map_err(|_| ConnectError::Timeout {
            host: host.to_owned(),
            port,
            timeout: self.connect_timeout,
        })?
    }

    /// The addresses to dial for `host:port`, after the pin, private-address and loop checks.
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ConnectError> {
        let loop_err = || ConnectError::Loop { host: host.to_owned(), port };
        if let Some(pinned) = self.resolve.get(host) {
            if self.is_own_listener(*pinned) {
                return Err(loop_err());
            }
            return Ok(vec![*pinned]);
        }
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|source| ConnectError::Resolve { host: host.to_owned(), source })?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(ConnectError::NoAddress { host: host.to_owned() });
        }
        for addr in &addrs {
            if self.is_own_listener(*addr) {
                return Err(loop_err());
            }
            if !self.allow_private
                && let Some(class) = non_public(addr.ip())
            {
                return Err(ConnectError::Private { host: host.to_owned(), addr: addr.ip(), class });
            }
        }
        Ok(addrs)
    }
}

fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified()
}

/// Classifies addresses that must not be reachable by default. `None` = public.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return non_public_v4(v4);
            }
            let seg0 = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if seg0 & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if seg0 & 0xfe00 == 0xfc00 {
                Some("unique-local (private)")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                // NAT64: judge the embedded IPv4 address.
                let o = v6.octets();
                non_public_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
            } else {
                None
            }
        }
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared (carrier-grade NAT)")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmarking")
    } else if o[0] >= 240 {
        Some("reserved")
    } else {
        None
    }
}

/// The `tower` connector the pooled client dials through; see [`Egress`].
#[derive(Debug, Clone)]
pub struct EgressConnector {
    egress: Arc<Egress>,
}

impl tower_service::Service<Uri> for EgressConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let egress = self.egress.clone();
        Box::pin(async move {
            let host =
                uri.host().map(crate::pattern::normalize_host).ok_or_else(|| ConnectError::NoHost(uri.to_string()))?;
            let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) { 443 } else { 80 };
            let port = uri.port_u16().unwrap_or(default_port);
            egress.connect(&host, port).await.map(TokioIo::new)
        })
    }
}

/// Builds the pooled client over `egress` with the given TLS client config.
///
/// With `http2` the client offers `h2` and `http/1.1` by ALPN; without it, HTTP/1.1 only, which
/// costs less CPU per streamed frame on both sides and is what nginx and Envoy do by default.
pub fn client(egress: Arc<Egress>, tls: rustls::ClientConfig, http2: bool) -> HttpClient {
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
    let connector = if http2 {
        builder.enable_all_versions().wrap_connector(EgressConnector { egress })
    } else {
        builder.enable_http1().wrap_connector(EgressConnector { egress })
    };
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_adaptive_window(true)
        .build(connector)
}

/// The next error in a cause chain. `io::Error` wrapping a custom error reports the *payload's*
/// source from `source()`, skipping the payload itself (where rustls puts its error), so step into
/// the payload instead.
fn next_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a (dyn std::error::Error + 'static)> {
    match e.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
        Some(payload) => Some(payload),
        None => e.source(),
    }
}

/// Turns a failure to get an upstream response into the error the client sees.
pub fn classify(err: &(dyn std::error::Error + 'static), target: &Target) -> ProxyError {
    let upstream = |kind, message: String| ProxyError::new(kind, Phase::Forward, Side::Upstream, message);
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(c) = e.downcast_ref::<ConnectError>() {
            return match c {
                ConnectError::Private { .. } => {
                    ProxyError::new(ErrorKind::PolicyDenied, Phase::Forward, Side::Agent, c.to_string())
                        .with_reason("private_destination")
                }
                ConnectError::Loop { .. } => {
                    ProxyError::new(ErrorKind::PolicyDenied, Phase::Forward, Side::Agent, c.to_string())
                        .with_reason("proxy_loop")
                }
                ConnectError::Timeout { .. } => upstream(ErrorKind::UpstreamTimeout, c.to_string()),
                _ => upstream(ErrorKind::UpstreamError, c.to_string()),
            };
        }
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return upstream(
                ErrorKind::UpstreamError,
                format!(
                    "TLS with {}:{} failed: {tls}; if the upstream uses a private CA, add it with FLEETFORGE_UPSTREAM_CA",
                    target.host, target.port
                ),
            )
            .with_reason("upstream_tls");
        }
        source = next_cause(e);
    }
    tracing::debug!(error = ?err, host = %target.host, "unclassified upstream failure");
    upstream(ErrorKind::UpstreamError, format!("upstream {}:{} failed: {err}", target.host, target.port))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::non_public;

    #[test]
    fn private_and_special_addresses_are_classified() {
        for (ip, class) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("fd00::1", "unique-local (private)"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
        ] {
            assert_eq!(non_public(ip.parse::<IpAddr>().unwrap()), Some(class), "{ip}");
        }
        for ip in ["1.1.1.1", "104.18.6.192", "2606:4700::6810:7fc0"] {
            assert_eq!(non_public(ip.parse().unwrap()), None, "{ip}");
        }
    }
}
