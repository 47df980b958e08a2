//! Connect end to end with nothing running: an embedded agent-sim, an `echo` service, a `web`
//! client that talks to it, then a deny intention that refuses the client.
//!
//! ```text
//! cargo run --example demo
//! ```

use std::time::Duration;

use consul_connect::api::Intention;
use consul_connect::{AgentClient, ConnectListener, ConnectService};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let agent = agent_sim::Agent::builder().start().await?;
    println!("agent-sim listening on http://{}", agent.addr());
    let client = AgentClient::new(&agent.addr().to_string())?;

    // The echo service: identity from the agent, registered as Connect-native, serving lines.
    let echo = ConnectService::builder("echo")
        .agent(client.clone())
        .build()
        .await?;
    let echo_id = echo.ready_timeout(Duration::from_secs(10)).await?;
    let mut listener = ConnectListener::bind(&echo, "127.0.0.1:0").await?;
    let addr = listener.local_addr();
    // Deregistered when `_registered` is dropped.
    let _registered = echo.register(addr).await?;
    println!("echo  serving on {addr} as {echo_id}");
    let mut rejections = listener.rejections();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            println!("echo  accepted a connection from {peer}");
            tokio::spawn(async move {
                let (read, mut write) = tokio::io::split(stream);
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = write.write_all(format!("{line}\n").as_bytes()).await;
                }
            });
        }
    });

    // The web client finds echo through the catalog and talks to it.
    let web = ConnectService::builder("web")
        .agent(client.clone())
        .build()
        .await?;
    let web_id = web.ready_timeout(Duration::from_secs(10)).await?;
    println!("web   ready as {web_id}");
    let answer = echo_once(&web, "hello over Connect").await?;
    println!("web   sent \"hello over Connect\", echo answered {answer:?}");

    // A deny intention: the next connection is refused before any byte reaches the app.
    let deny = Intention {
        source_name: "web".into(),
        destination_name: "echo".into(),
        action: "deny".into(),
        description: "demo: web may not call echo".into(),
        ..Intention::default()
    };
    let id = client.create_intention(&deny).await?;
    println!("intention {id}: DENY web => echo");
    match echo_once(&web, "hello again").await {
        Ok(answer) => {
            return Err(format!("the deny intention did not refuse web (answer {answer:?})").into())
        }
        Err(e) => println!("web   refused: {e}"),
    }
    let rejection = tokio::time::timeout(Duration::from_secs(5), rejections.recv()).await??;
    println!(
        "echo  refused {}: {}",
        rejection.peer.map(|p| p.to_string()).unwrap_or_default(),
        rejection.reason
    );

    web.shutdown();
    echo.shutdown();
    agent.shutdown().await;
    println!("demo done");
    Ok(())
}

/// Dials echo as `web`, sends one line and reads the answer.
async fn echo_once(web: &ConnectService, line: &str) -> Result<String, Error> {
    let stream = web.dialer().dial_service("echo").await?;
    let (read, mut write) = tokio::io::split(stream);
    write.write_all(format!("{line}\n").as_bytes()).await?;
    let mut answers = BufReader::new(read).lines();
    match answers.next_line().await {
        Ok(Some(answer)) => Ok(answer),
        Ok(None) => Err("echo closed the connection without answering".into()),
        Err(e) => Err(format!("echo closed the connection: {e}").into()),
    }
}
