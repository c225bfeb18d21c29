//! Clients that hold a listener's resources without doing their share, for the hostile tests.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `count` connections to `address` that send nothing, then `count` that each send a TLS
/// ClientHello (made with `config` for `name`), read the first record of the server's answer
/// (so the server has done its first handshake step for every one) and then stall. Returns
/// both sets, to keep them open.
pub async fn idle_and_stalled_handshakes(
    address: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    name: &ServerName<'static>,
    count: usize,
) -> (Vec<TcpStream>, Vec<TcpStream>) {
    let mut idle = Vec::with_capacity(count);
    for _ in 0..count {
        idle.push(TcpStream::connect(address).await.unwrap());
    }
    let mut stalled = Vec::with_capacity(count);
    for _ in 0..count {
        let mut client = rustls::ClientConnection::new(config.clone(), name.clone()).unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        let mut tcp = TcpStream::connect(address).await.unwrap();
        tcp.write_all(&hello).await.unwrap();
        stalled.push(tcp);
    }
    for tcp in &mut stalled {
        let mut record_type = [0; 1];
        tcp.read_exact(&mut record_type).await.unwrap();
        assert_eq!(record_type[0], 0x16, "a handshake record");
    }
    (idle, stalled)
}
