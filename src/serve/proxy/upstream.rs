//! The connection to an instance that one client connection's requests go over. An HTTP/1
//! client sends its requests one at a time, so each of its requests can take the same
//! instance connection, kept beside the client connection, instead of checking one out of a
//! shared pool: no pool lock, no key hashing, no task spawned per request to put the
//! connection back. A request finds it free again once the previous response has been sent
//! (the [`Checkout`] goes back when the response body ends).
//!
//! The connection is reused only for the same instance address and only while hyper says it
//! is ready; otherwise a new one is opened. A request that hyper hands back unsent (the
//! instance closed the idle connection just as it was sent) is sent once more on a new
//! connection, as a pool's client does.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::{BoxError, CappedBody};

/// How long opening a connection to an instance may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One client connection's instance connection, when it has one that is not in use.
#[derive(Default)]
pub struct Pinned {
    idle: Mutex<Option<Connection>>,
}

/// An open HTTP/1 connection to an instance.
struct Connection {
    authority: Authority,
    sender: http1::SendRequest<CappedBody>,
}

/// A connection lent to one request: back to its [`Pinned`] when dropped, with the response
/// body (by then the connection is free again, or closed, which the next request sees).
pub struct Checkout {
    home: Arc<Pinned>,
    connection: Option<Connection>,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            *self.home.idle.lock().unwrap_or_else(|e| e.into_inner()) = Some(connection);
        }
    }
}

/// Why a request could not be forwarded.
#[derive(Debug)]
pub struct SendError {
    pub error: BoxError,
    /// No connection could be opened: the instance is not listening (or not there).
    pub connect: bool,
}

impl Pinned {
    /// Sends `request` (origin-form target, `Host` set) to the instance at `authority` over
    /// this client connection's instance connection, opening one if needed.
    pub async fn send(
        self: &Arc<Self>,
        authority: &Authority,
        mut request: Request<CappedBody>,
    ) -> Result<(Response<Incoming>, Checkout), SendError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut reused = idle.filter(|c| &c.authority == authority);
        let mut opened = 0;
        loop {
            let mut connection = match reused.take() {
                Some(mut connection) => match connection.sender.ready().await {
                    Ok(()) => connection,
                    // Closed by the instance while idle: open another.
                    Err(_) => open(authority).await?,
                },
                None => open(authority).await?,
            };
            opened += 1;
            match connection.sender.try_send_request(request).await {
                Ok(response) => {
                    let checkout = Checkout {
                        home: self.clone(),
                        connection: Some(connection),
                    };
                    return Ok((response, checkout));
                }
                Err(mut error) => match error.take_message() {
                    // Never written: safe to send again, once, on a new connection.
                    Some(unsent) if opened < 2 => request = unsent,
                    _ => {
                        return Err(SendError {
                            error: error.into_error().into(),
                            connect: false,
                        })
                    }
                },
            }
        }
    }
}

/// Opens a connection to the instance and starts driving it.
async fn open(authority: &Authority) -> Result<Connection, SendError> {
    let connect_failed = |error: BoxError| SendError {
        error,
        connect: true,
    };
    // Instances are reached at IP:PORT (the pool makes the authority from the address).
    let address: SocketAddr = authority
        .as_str()
        .parse()
        .map_err(|e: std::net::AddrParseError| connect_failed(e.into()))?;
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(connect_failed(e.into())),
        Err(elapsed) => return Err(connect_failed(elapsed.into())),
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| connect_failed(e.into()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("a connection to an instance ended: {e}");
        }
    });
    Ok(Connection {
        authority: authority.clone(),
        sender,
    })
}
