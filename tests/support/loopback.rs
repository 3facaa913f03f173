//! Loopback addresses that fail the way a network does, for the tests that drive a real HTTP
//! client: a port nothing listens on, and a server that hangs up without answering. Included
//! with `#[path]`.
#![allow(dead_code)]

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// A port nothing listens on: bound, then closed.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// A server that reads each request and closes the connection without answering.
pub async fn resetting() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mut buf = vec![0; 64 * 1024];
            let mut read = Vec::new();
            // Until the end of the (small) JSON body: the whole request was written.
            while stream.readable().await.is_ok() {
                match stream.try_read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        read.extend_from_slice(&buf[..n]);
                        if read.ends_with(b"]}") {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => break,
                }
            }
            drop(stream);
        }
    });
    addr
}
