//! A second yardstick: the least a forwarder built on hyper and tokio costs on this machine.
//! The benchmark runs itself again as a child process (`bench --floor-forwarder LISTEN
//! UPSTREAM`) that forwards every request as it came, on one worker thread, over one
//! instance connection per client connection: no routing, no header rules, no request log,
//! no timeouts. What emulate costs above this row is its features; what this row costs above
//! nginx is hyper and tokio.

use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;

use anyhow::Context;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The argument that makes the benchmark binary the forwarder.
pub const ARG: &str = "--floor-forwarder";

/// The forwarder, running as a child of the benchmark; killed when dropped.
pub struct Floor {
    child: Child,
    pub addr: SocketAddr,
}

impl Floor {
    /// Starts the forwarder on 127.0.0.1:PORT (a free port), forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> anyhow::Result<Floor> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = Command::new(std::env::current_exe()?)
            .args([ARG, &addr.to_string(), &upstream.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start the bare forwarder")?;
        Ok(Floor { child, addr })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The forwarder's process: `args` are LISTEN and UPSTREAM. Serves until killed.
pub fn serve(args: &[String]) -> ExitCode {
    let (Some(listen), Some(upstream)) = (args.first(), args.get(1)) else {
        eprintln!("usage: bench {ARG} LISTEN UPSTREAM");
        return ExitCode::from(2);
    };
    let (Ok(listen), Ok(upstream)) = (listen.parse::<SocketAddr>(), upstream.parse()) else {
        eprintln!("error: LISTEN and UPSTREAM are IP:PORT");
        return ExitCode::from(2);
    };
    // The same runtime as emulate's: one worker thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    match runtime.block_on(forward(listen, upstream)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: the bare forwarder failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn forward(listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = connection(client, upstream).await {
                eprintln!("bare forwarder: {e}");
            }
        });
    }
}

/// One client connection and its own instance connection, for its whole life.
async fn connection(client: TcpStream, upstream: SocketAddr) -> anyhow::Result<()> {
    client.set_nodelay(true)?;
    let instance = TcpStream::connect(upstream).await?;
    instance.set_nodelay(true)?;
    let (sender, driver) =
        hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(instance)).await?;
    tokio::spawn(driver);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let sender = sender.clone();
        async move {
            let mut sender = sender.lock().await;
            sender.ready().await?;
            // Origin form: the instance connection is already to the one upstream.
            let target = request.uri().path_and_query().cloned();
            *request.uri_mut() = target.map_or_else(|| "/".parse().expect("a path"), Into::into);
            let response: Response<Incoming> = sender.send_request(request).await?;
            Ok::<_, hyper::Error>(response)
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await?;
    Ok(())
}
