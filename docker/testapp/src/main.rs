//! The test app the emulator's tests run in containers: start-up behaviour chosen by
//! environment variables, and per-request behaviour chosen by path (see `routes`).

// The test app is not the emulator: it prints and reads the clock as any app would, so
// clippy.toml's rules for the emulator's code do not apply.
#![allow(clippy::disallowed_methods, clippy::disallowed_macros)]

mod background;
mod lifecycle;
mod output;
mod query;
mod routes;
mod websocket;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::watch;

fn main() {
    // A Dockerfile's RUN step (tests of builds from source, where FROM scratch has no shell):
    // `testapp step CODE [LINE...]` prints the lines and exits with CODE; `testapp step
    // sleep SECONDS` sleeps (a slow step to interrupt).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("step") {
        build_step(&args[2..]);
    }
    // A crash at start must happen before anything else, the runtime included.
    if let Some(code) = env_parse::<i32>("CRASH_AT_START") {
        eprintln!("crashing at start with code {code}");
        std::process::exit(code);
    }
    // Crashes at start from a moment on (seconds since the epoch): a revision that deploys
    // fine and then cannot start again, as after a broken dependency.
    if let Some(after) = env_parse::<u64>("CRASH_AT_START_AFTER_UNIX") {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now >= after {
            eprintln!("crashing at start: it is past {after}");
            std::process::exit(1);
        }
    }
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    runtime.block_on(run());
}

fn build_step(args: &[String]) -> ! {
    if args.first().map(String::as_str) == Some("sleep") {
        let seconds = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(60);
        println!("sleeping {seconds} s");
        std::thread::sleep(Duration::from_secs(seconds));
        std::process::exit(0);
    }
    for line in args.iter().skip(1) {
        println!("{line}");
    }
    std::process::exit(args.first().and_then(|c| c.parse().ok()).unwrap_or(0));
}

/// Reads and parses an environment variable; unset or malformed counts as absent.
fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// Whether a flag variable is set to a true-ish value.
fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes"))
}

async fn run() {
    // NO_SIGNAL_HANDLERS: no handler at all, as many apps and shell entrypoints are; as PID 1
    // the process then ignores SIGTERM (the kernel protects a namespace's init).
    let stop = match env_flag("NO_SIGNAL_HANDLERS") {
        true => {
            // Kept forever: a dropped sender would read as "stop".
            let (never, stop) = tokio::sync::watch::channel(false);
            std::mem::forget(never);
            stop
        }
        false => lifecycle::install(env_flag("IGNORE_SIGTERM")),
    };
    // Health checks (HTTP /healthz and gRPC) fail from the start: a startup probe never passes.
    if env_flag("START_SICK") {
        routes::SICK.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    if env_flag("NEVER_LISTEN") {
        output::line("never listening");
        // The signal handler ends the process; until then there is nothing to do.
        std::future::pending::<()>().await;
    }
    if let Some(ms) = env_parse::<u64>("STARTUP_DELAY_MS") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    let addr = listen_addr();
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("cannot listen on {addr}: {err}");
            std::process::exit(1);
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    output::json("INFO", &format!("testapp listening on {bound}"));
    serve(listener, stop).await;
    // Once accepting has stopped, the signal handler finishes the drain and exits.
    std::future::pending::<()>().await;
}

/// Works out where to listen: `LISTEN_HOST` (an IP address; default all interfaces)
/// and `LISTEN_PORT`, falling back to `PORT`, then 8080.
fn listen_addr() -> SocketAddr {
    let host = match std::env::var("LISTEN_HOST") {
        Ok(host) if host.trim() == "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Ok(host) => host.trim().parse().unwrap_or_else(|_| {
            eprintln!("LISTEN_HOST must be an IP address, got {host:?}");
            std::process::exit(1);
        }),
        Err(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let port = env_parse::<u16>("LISTEN_PORT")
        .or_else(|| env_parse("PORT"))
        .unwrap_or(8080);
    SocketAddr::new(host, port)
}

/// Accepts connections until told to stop, serving HTTP/1.1 and h2c (prior knowledge)
/// on the same port.
async fn serve(listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let builder = Builder::new(TokioExecutor::new());
    loop {
        let stream = tokio::select! {
            biased;
            _ = stop.wait_for(|stopping| *stopping) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Usually a full file table; waiting a little lets it recover.
                    eprintln!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // Streamed chunks must leave as soon as they are written, not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service_fn(routes::handle));
            // A client going away mid-request is routine in tests, so errors are dropped.
            let _ = conn.await;
        });
    }
}
