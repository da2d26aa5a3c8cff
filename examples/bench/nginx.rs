//! The yardstick: nginx as a reverse proxy in front of the same container (one worker,
//! upstream keep-alive 64, access log off), run as a child of the benchmark with a
//! configuration of its own in a temporary directory, and stopped with it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

/// A running nginx.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
}

/// Whether nginx is installed (the yardstick is skipped when not).
pub fn available() -> bool {
    Command::new("nginx")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

impl Nginx {
    /// Starts nginx proxying 127.0.0.1:PORT (a free port) to `upstream`.
    pub fn start(upstream: SocketAddr) -> anyhow::Result<Nginx> {
        Nginx::start_under(&[], upstream)
    }

    /// [`Nginx::start`] under `wrapper` (valgrind's command line) when it is not empty; then
    /// as one process (`master_process off`), which does what the worker does otherwise.
    pub fn start_under(wrapper: &[String], upstream: SocketAddr) -> anyhow::Result<Nginx> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir =
            std::env::temp_dir().join(format!("emulate-bench-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join("logs"))?;
        let conf = format!(
            "{master}worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/logs/error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  upstream app {{ server {upstream}; keepalive 64; }}\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://app;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n    }}\n  }}\n}}\n",
            dir = dir.display(),
            master = match wrapper.is_empty() {
                true => "",
                false => "master_process off;\n",
            },
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let mut command = Command::new("nginx");
        command.arg("-p").arg(&dir).arg("-c").arg(&path).args([
            "-e",
            "stderr",
            "-g",
            "daemon off;",
        ]);
        let child = crate::harness::wrapped(wrapper, command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start nginx")?;
        let nginx = Nginx {
            child,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        Ok(nginx)
    }

    /// The master's and its workers' pids, for their CPU time.
    pub fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut pids = vec![master];
        pids.extend(crate::procstat::children(master));
        pids
    }

    /// Fails if nginx ended (a bad configuration ends it at once).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let mut err = String::new();
            if let Some(mut stderr) = self.child.stderr.take() {
                use std::io::Read;
                let _ = stderr.read_to_string(&mut err);
            }
            bail!("nginx exited with {status}: {err}");
        }
        Ok(())
    }
}

impl Drop for Nginx {
    /// A fast shutdown (SIGTERM: the master stops its workers), SIGKILL for any left.
    fn drop(&mut self) {
        let pids = self.pids();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in pids {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
