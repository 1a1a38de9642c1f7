//! Starts a real single-node Garage (S3 server) on free loopback ports in a temp dir.
//!
//! The binary is `$GARAGE_BIN`, else `garage` on PATH, else `~/.cargo/bin/garage`.
//! When absent, tests skip with a loud message — unless `SNAPBLK_REQUIRE_GARAGE=1`, in
//! which case absence is a failure (CI installs Garage first).

use shipper::{Credentials, Retry};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGION: &str = "garage";
pub const BUCKET: &str = "snapblk-test";

pub struct Garage {
    child: Option<Child>,
    bin: PathBuf,
    pub dir: PathBuf,
    pub s3_port: u16,
    pub access_key: String,
    pub secret_key: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn rand_hex(n: usize) -> String {
    let mut b = vec![0u8; n / 2];
    getrandom::getrandom(&mut b).expect("randomness");
    hex::encode(b)
}

pub fn binary() -> Option<PathBuf> {
    if let Ok(b) = std::env::var("GARAGE_BIN") {
        return Some(PathBuf::from(b));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for p in std::env::split_paths(&paths) {
            let c = p.join("garage");
            if c.is_file() {
                return Some(c);
            }
        }
    }
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let c = home.join(".cargo/bin/garage");
    c.is_file().then_some(c)
}

impl Garage {
    /// Starts Garage in `dir`, or returns `None` (after a loud message) when it is not installed.
    pub fn start(dir: &Path) -> Option<Garage> {
        let Some(bin) = binary() else {
            if std::env::var("SNAPBLK_REQUIRE_GARAGE").as_deref() == Ok("1") {
                panic!("garage binary not found but SNAPBLK_REQUIRE_GARAGE=1: run `cargo install garage --version 2.5.0 --locked`");
            }
            eprintln!("\n**********************************************************************");
            eprintln!("*** SKIPPED: garage binary not found (GARAGE_BIN, PATH, ~/.cargo/bin)");
            eprintln!("*** install: cargo install garage --version 2.5.0 --locked");
            eprintln!("**********************************************************************\n");
            return None;
        };
        let (rpc, s3) = (free_port(), free_port());
        std::fs::create_dir_all(dir).expect("garage dir");
        let conf = format!(
            "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
             rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\n\
             [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n",
            d = dir.display(),
            secret = rand_hex(64)
        );
        std::fs::write(dir.join("garage.toml"), conf).expect("garage.toml");
        let mut g = Garage {
            child: None,
            bin,
            dir: dir.to_path_buf(),
            s3_port: s3,
            access_key: format!("GK{}", rand_hex(24)),
            secret_key: rand_hex(64),
        };
        g.spawn();
        Some(g)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("garage.log"))
            .expect("garage log");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.join("garage.toml"))
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &self.access_key)
            .env("GARAGE_DEFAULT_SECRET_KEY", &self.secret_key)
            .env("GARAGE_DEFAULT_BUCKET", BUCKET)
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn garage");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let target = shipper::S3Target::new(BUCKET, "", &self.creds()).expect("s3 target");
        loop {
            let up = TcpStream::connect(("127.0.0.1", self.s3_port)).is_ok()
                && shipper::Target::list(&target, "readiness-probe/").is_ok();
            if up {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("garage.log")).unwrap_or_default();
                panic!("garage did not become ready in 60 s; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Credentials for this server, with a quick retry policy.
    pub fn creds(&self) -> Credentials {
        Credentials {
            endpoint: Some(self.endpoint()),
            region: Some(REGION.into()),
            access_key: Some(self.access_key.clone()),
            secret_key: Some(self.secret_key.clone()),
            peer_key: None,
            retry: Retry {
                attempts: 4,
                initial: Duration::from_millis(100),
                max_delay: Duration::from_millis(500),
                give_up_after: Duration::from_secs(60),
            },
        }
    }

    /// SIGKILLs the server (data stays on disk).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.kill();
    }
}
