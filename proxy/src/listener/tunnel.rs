//! Byte-for-byte relay for `CONNECT` tunnels that are not intercepted.
//!
//! The client's own TLS (or whatever it speaks) reaches the upstream untouched. The tunnel is one
//! call: when either side closes, it is finished with the bytes relayed each way and its
//! duration, and recorded like any other call.

use std::sync::Arc;

use tokio::net::TcpStream;

use super::ClientIo;
use crate::context::{Call, Outcome};
use crate::flow;
use crate::metrics::ConnectMode;
use crate::proxy::Proxy;
use crate::shutdown::Watch;

/// Relays between `client` and `upstream` until one side closes, then records the tunnel.
pub async fn relay(proxy: Arc<Proxy>, mut call: Call, mut client: ClientIo, mut upstream: TcpStream, watch: Watch) {
    proxy.metrics.connect(ConnectMode::Tunnelled);
    let result = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    call.request_bytes = client.bytes_read();
    call.response_bytes = client.bytes_written();
    proxy.metrics.tunnel_bytes(call.request_bytes, call.response_bytes);
    let outcome = match result {
        Ok(_) => Outcome::Completed,
        Err(e) => Outcome::UpstreamAborted(e.to_string()),
    };
    flow::finish(&proxy, call, outcome);
    drop(watch);
}
