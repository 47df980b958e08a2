//! Interop with a real third-party client: the `py-consul` Python package (PyPI
//! `py-consul==1.8.0`) drives an embedded agent-sim through `tests/py/py_consul_check.py`:
//! Connect-native registration, agent services, CA roots, leaf, Connect discovery, intentions
//! through the `exact` API and agent authorize, each answer checked against real Consul's.
//! It runs once per emulated version, and the script (told the version through
//! `CONSUL_EXPECT_VERSION`) expects what that Consul answers: 1.4.5's answers in 1.4.5 mode,
//! 1.10.9's (`tests/data/consul-1.10.9`) in 1.10.9 mode.
//!
//! `scripts/test.sh` installs py-consul into `.venv` and exports `PY_CONSUL_PYTHON`. Without
//! that interpreter this test fails (it never skips): run `scripts/test.sh`, or
//! `python3 -m venv .venv && .venv/bin/pip install py-consul==1.8.0`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use agent_sim::profile::ConsulVersion;
use agent_sim::Agent;
use support::agent::{Raw, CLUSTER_ID, TRUST_DOMAIN};

/// The script, relative to the crate root.
const SCRIPT: &str = "tests/py/py_consul_check.py";
/// Longest the script may run; each py-consul request has its own 30 s timeout too.
const DEADLINE: Duration = Duration::from_secs(180);

/// `$PY_CONSUL_PYTHON`, else `.venv/bin/python` under the crate root; fails when neither exists.
fn python(root: &Path) -> PathBuf {
    let from_env = std::env::var_os("PY_CONSUL_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    if let Some(p) = from_env.as_ref().filter(|p| p.exists()) {
        return p.clone();
    }
    let venv = root.join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    panic!(
        "no Python with py-consul: PY_CONSUL_PYTHON is {} and {} does not exist. Run \
         scripts/test.sh (it installs py-consul==1.8.0 into .venv and exports PY_CONSUL_PYTHON), \
         or: python3 -m venv .venv && .venv/bin/pip install py-consul==1.8.0",
        from_env.map_or_else(
            || "unset".to_owned(),
            |p| format!("{} (missing)", p.display())
        ),
        venv.display()
    );
}

/// The script's exit status, stdout and stderr.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `python SCRIPT` against `addr`, expecting `version`'s answers, killing it after
/// `DEADLINE`. Blocking: call it from `spawn_blocking` so the embedded agent keeps serving.
fn run_script(python: &Path, root: &Path, addr: &str, version: ConsulVersion) -> Run {
    let mut child = Command::new(python)
        .arg(root.join(SCRIPT))
        .current_dir(root)
        .env("CONSUL_HTTP_ADDR", addr)
        .env("CONSUL_CHECK_TRUST_DOMAIN", TRUST_DOMAIN)
        .env("CONSUL_CHECK_DATACENTER", "dc1")
        .env("CONSUL_EXPECT_VERSION", version.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        // The caller's Consul settings must not redirect or authenticate the client.
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("CONSUL_HTTP_SSL")
        .env_remove("CONSUL_HTTP_SSL_VERIFY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {} {SCRIPT}: {e}", python.display()));
    // Drain both pipes while waiting so a chatty script never blocks on a full pipe.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout piped")));
    let err = drain(Box::new(child.stderr.take().expect("stderr piped")));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the script") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let status = child.wait().expect("reaping the script");
            let stdout = out.join().unwrap_or_default();
            panic!("{SCRIPT} ran longer than {DEADLINE:?} and was killed ({status}); output so far:\n{stdout}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_consul_client_works_against_agent_sim_as_consul_1_4_5() {
    py_consul_against(ConsulVersion::V1_4_5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_consul_client_works_against_agent_sim_as_consul_1_10_9() {
    py_consul_against(ConsulVersion::V1_10_9).await;
}

/// Runs the script against an agent-sim emulating `version`, the script expecting that
/// version's answers, and checks the state it leaves.
async fn py_consul_against(version: ConsulVersion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = python(&root);
    let agent = Agent::builder()
        .cluster_id(CLUSTER_ID)
        .consul_version(version)
        .start()
        .await
        .expect("agent-sim starts");
    let addr = agent.addr().to_string();

    let run = {
        let (python, root, addr) = (python.clone(), root.clone(), addr.clone());
        tokio::task::spawn_blocking(move || run_script(&python, &root, &addr, version))
            .await
            .expect("script runner")
    };
    println!("{}", run.stdout);
    let report = format!(
        "{} {SCRIPT} against agent-sim at {addr} (Consul {version} mode) exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        python.display(),
        run.status,
        run.stdout,
        run.stderr
    );

    let summary = run
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let counts: Option<(u32, u32)> = summary
        .strip_suffix(" failed")
        .and_then(|s| s.split_once(" passed, "))
        .and_then(|(p, f)| Some((p.parse().ok()?, f.parse().ok()?)));
    let Some((passed, failed)) = counts else {
        panic!("the script did not end with `N passed, M failed`:\n{report}");
    };
    assert!(
        run.status.success() && failed == 0,
        "py-consul interop: {failed} check(s) failed (FAIL lines show the request py-consul \
         sent, agent-sim's answer and what Consul answers):\n{report}"
    );
    assert!(passed >= 30, "only {passed} checks ran:\n{report}");

    // The script talked to this agent and left it as it says: db registered, web gone, no
    // intentions.
    let raw = Raw::new(&agent);
    let services = raw.get("/v1/agent/services").await.json();
    assert!(
        services.get("db").is_some(),
        "db not registered: {services}"
    );
    assert!(
        services.get("web").is_none(),
        "web still registered: {services}"
    );
    let intentions = raw.get("/v1/connect/intentions").await;
    assert_eq!(intentions.body, "[]", "intentions left behind");

    agent.shutdown().await;
}
