//! The SDK's core path against agent-sim in each Consul version it emulates: ready, listen,
//! dial by name, and a deny, with both authorizers. In 1.10.9 mode also the 1.9+ ways to
//! write intentions: a `service-intentions` config entry, and an L7 intention, which a plain
//! TCP (L4) connection never passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use agent_sim::profile::ConsulVersion;
use agent_sim::Agent;
use consul_connect::agent::AgentClient;
use consul_connect::api::{Intention, ServiceConnect, ServiceRegistration};
use consul_connect::dialer::{AttemptError, DialError, ServerRefusal};
use consul_connect::listener::Rejection;
use consul_connect::{ConnectListener, ConnectService};
use support::agent::{fast_watch, Raw, CLUSTER_ID};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{broadcast, watch};

const READY: Duration = Duration::from_secs(10);

/// `db` with the agent authorizer or the in-process intentions authorizer.
async fn db(client: &AgentClient, in_process: bool) -> ConnectService {
    let mut builder = ConnectService::builder("db")
        .agent(client.clone())
        .watch_config(fast_watch());
    if in_process {
        builder = builder.intentions_authorizer_from_agent();
    }
    let db = builder.build().await.unwrap();
    db.ready_timeout(READY).await.unwrap();
    db
}

/// Serves `db` with a line echo and registers it as Connect-native, so it is found by name.
async fn serve(db: &ConnectService) -> (SocketAddr, broadcast::Receiver<Rejection>) {
    let mut listener = ConnectListener::bind(db, "127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    let rejections = listener.rejections();
    db.agent()
        .register(&ServiceRegistration {
            name: "db".into(),
            port: addr.port(),
            address: addr.ip().to_string(),
            connect: Some(ServiceConnect {
                native: true,
                sidecar_service: None,
            }),
            ..ServiceRegistration::default()
        })
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = tokio::io::split(stream);
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = write.write_all(format!("{line}\n").as_bytes()).await;
                }
            });
        }
    });
    (addr, rejections)
}

/// Dials `db` by name and exchanges a line; the echo, or how the server refused.
async fn echo_by_name(web: &ConnectService) -> Result<String, ServerRefusal> {
    let mut stream = match web.dialer().dial_service("db").await {
        Ok(stream) => stream,
        Err(DialError::Failed { attempts, .. }) => match &attempts[..] {
            [(_, AttemptError::Refused(r))] => return Err(*r),
            other => panic!("dial failed otherwise: {other:?}"),
        },
        Err(e) => panic!("dial failed: {e}"),
    };
    let _ = stream.write_all(b"ping\n").await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an answer or a refusal within 5 s")
    {
        Ok(n) if n > 0 => Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Ok(_) => panic!("closed without a refusal"),
        Err(e) => Err(ServerRefusal::from_io(&e).unwrap_or_else(|| panic!("not a refusal: {e}"))),
    }
}

/// Waits for the next refusal report and returns its reason.
async fn refusal_reason(rejections: &mut broadcast::Receiver<Rejection>) -> String {
    tokio::time::timeout(Duration::from_secs(5), rejections.recv())
        .await
        .expect("a refusal is reported")
        .unwrap()
        .reason
}

/// Dials until `web` is refused by `db`, waiting between tries for `db`'s authorizer to see a
/// change of intentions (the in-process one learns of a new intention through its watch), and
/// returns the server's reason.
async fn refused(
    web: &ConnectService,
    changes: &mut watch::Receiver<u64>,
    rejections: &mut broadcast::Receiver<Rejection>,
) -> String {
    let refusal = async {
        loop {
            match echo_by_name(web).await {
                Err(refusal) => return refusal,
                Ok(_) => changes.changed().await.expect("the authorizer is running"),
            }
        }
    };
    let refusal = tokio::time::timeout(Duration::from_secs(5), refusal)
        .await
        .expect("refused within 5 s");
    assert_eq!(refusal, ServerRefusal::Denied);
    refusal_reason(rejections).await
}

/// What moves when `db`'s authorizer may decide differently.
fn changes(db: &ConnectService) -> watch::Receiver<u64> {
    db.authorizer()
        .changes("db")
        .expect("both authorizers follow intentions")
}

async fn start(version: ConsulVersion) -> (Agent, AgentClient, Raw) {
    let agent = Agent::builder()
        .cluster_id(CLUSTER_ID)
        .consul_version(version)
        .start()
        .await
        .unwrap();
    let client = AgentClient::new(&agent.addr().to_string()).unwrap();
    let raw = Raw::new(&agent);
    (agent, client, raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_listen_dial_by_name_and_a_legacy_deny_in_each_version() {
    for version in ConsulVersion::ALL {
        for in_process in [false, true] {
            let what = format!("{version}, in-process authorizer: {in_process}");
            let (_agent, client, _raw) = start(version).await;
            let db = db(&client, in_process).await;
            let (_, mut rejections) = serve(&db).await;
            let web = ConnectService::builder("web")
                .agent(client.clone())
                .watch_config(fast_watch())
                .build()
                .await
                .unwrap();
            web.ready_timeout(READY).await.unwrap();
            assert_eq!(echo_by_name(&web).await, Ok("ping\n".into()), "{what}");
            let mut changes = changes(&db);

            let deny = Intention {
                source_name: "web".into(),
                destination_name: "db".into(),
                action: "deny".into(),
                ..Intention::default()
            };
            client.create_intention(&deny).await.unwrap();
            let reason = refused(&web, &mut changes, &mut rejections).await;
            // Both authorizers word it as the agent's version does.
            let wording = match version {
                ConsulVersion::V1_4_5 => "Matched intention: DENY default/web => default/db",
                _ => "Matched L4 intention: default/web => default/db",
            };
            assert!(reason.contains(wording), "{what}: {reason}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_entry_and_l7_intentions_in_1_10() {
    for in_process in [false, true] {
        let (_agent, client, raw) = start(ConsulVersion::V1_10_9).await;
        let db = db(&client, in_process).await;
        let (_, mut rejections) = serve(&db).await;
        let web = ConnectService::builder("web")
            .agent(client.clone())
            .watch_config(fast_watch())
            .build()
            .await
            .unwrap();
        web.ready_timeout(READY).await.unwrap();
        assert_eq!(echo_by_name(&web).await, Ok("ping\n".into()));
        let mut changes = changes(&db);

        // A deny written as a service-intentions config entry (as the consul CLI, Terraform
        // and py-consul write them today).
        let entry = r#"{"Kind":"service-intentions","Name":"db","Sources":[{"Name":"web","Action":"deny"}]}"#;
        assert_eq!(raw.put("/v1/config", entry).await.status, 200);
        let reason = refused(&web, &mut changes, &mut rejections).await;
        assert!(
            reason.contains("Matched L4 intention: default/web => default/db"),
            "{reason}"
        );

        // An L7 allow (HTTP paths) is not an L4 allow: the plain TCP connection is refused.
        let defaults = r#"{"Kind":"service-defaults","Name":"db","Protocol":"http"}"#;
        assert_eq!(raw.put("/v1/config", defaults).await.status, 200);
        let l7 = r#"{"Kind":"service-intentions","Name":"db","Sources":[{"Name":"web","Permissions":[{"Action":"allow","HTTP":{"PathPrefix":"/"}}]}]}"#;
        let put = raw.put("/v1/config", l7).await;
        assert_eq!(put.status, 200, "{}", put.body);
        // The in-process authorizer refuses inside the handshake, the agent after it: either
        // way with Consul's L7 reason once the authorizer has the new entry.
        let l7_reason = async {
            loop {
                assert_eq!(echo_by_name(&web).await, Err(ServerRefusal::Denied));
                let reason = refusal_reason(&mut rejections).await;
                if reason.contains("Matched L7 intention: default/web => default/db") {
                    return;
                }
                changes.changed().await.expect("the authorizer is running");
            }
        };
        tokio::time::timeout(Duration::from_secs(5), l7_reason)
            .await
            .expect("the L7 intention decides within 5 s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_ready_returns_a_ready_service_or_says_what_is_missing() {
    let (_agent, client, _raw) = start(ConsulVersion::V1_10_9).await;
    let web = ConnectService::builder("web")
        .agent(client)
        .build_ready(READY)
        .await
        .unwrap();
    assert!(web.status().ready);
    assert_eq!(web.identity().unwrap().service(), "web");
    // ready() hands out the identity it waited for.
    assert_eq!(web.ready().await.unwrap(), web.identity().unwrap());

    // Nothing listens there: the wait runs out and says what is missing.
    let nowhere = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    };
    let err = ConnectService::builder("web")
        .agent(AgentClient::new(&nowhere.to_string()).unwrap())
        .build_ready(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(err, consul_connect::service::BuildError::NotReady(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("CA roots"), "{err}");
}

/// Polls the agent's service list until `present` holds for `id`, at most 5 s.
async fn listed(raw: &Raw, id: &str, present: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let services = raw.get("/v1/agent/services").await.json();
        if services.get(id).is_some() == present {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} listed: {} after 5 s, wanted {present}",
            !present
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_is_kept_and_removed_with_its_service() {
    for version in ConsulVersion::ALL {
        let (_agent, client, raw) = start(version).await;
        let db = ConnectService::builder("db")
            .agent(client.clone())
            .build_ready(READY)
            .await
            .unwrap();
        let listener = ConnectListener::bind(&db, "127.0.0.1:0").await.unwrap();
        let registration = db
            .register_checking_every(listener.local_addr(), Duration::from_millis(50))
            .await
            .unwrap();
        let services = raw.get("/v1/agent/services").await.json();
        assert_eq!(
            services["db"]["Port"],
            listener.local_addr().port(),
            "{version}"
        );
        assert_eq!(services["db"]["Connect"]["Native"], true, "{version}");

        // The agent forgets it (a restarted dev agent): it is registered again.
        let forgot = raw.put("/v1/agent/service/deregister/db", "").await;
        assert_eq!(forgot.status, 200, "{}", forgot.body);
        listed(&raw, "db", true).await;

        // Dropping the registration deregisters it.
        drop(registration);
        listed(&raw, "db", false).await;

        // So does shutting the service down.
        let again = db
            .register_checking_every(listener.local_addr(), Duration::from_millis(50))
            .await
            .unwrap();
        listed(&raw, "db", true).await;
        db.shutdown();
        listed(&raw, "db", false).await;
        drop(again);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_by_name_goes_on_while_the_agent_is_down() {
    let (agent, client, _raw) = start(ConsulVersion::V1_10_9).await;
    let db = db(&client, true).await;
    let _served = serve(&db).await;
    let web = ConnectService::builder("web")
        .agent(client.clone())
        .build_ready(READY)
        .await
        .unwrap();
    assert_eq!(echo_by_name(&web).await, Ok("ping\n".into()));

    agent.shutdown().await;
    // A resolver without the service's memory cannot discover db now...
    let forgetful = consul_connect::CatalogResolver::new(client.clone(), "db");
    let err = consul_connect::Resolver::resolve(&forgetful)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot reach"), "{err}");
    // ...the service's dialer dials the instances the agent last named, verified as ever.
    assert_eq!(echo_by_name(&web).await, Ok("ping\n".into()));
}
