//! Keeping a service registered with its agent as Connect-native: registered when asked,
//! registered again when the agent has forgotten it (a restarted `-dev` agent keeps nothing),
//! deregistered when the registration is dropped or the service shut down.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agent::{AgentClient, AgentError, QueryOptions};
use crate::api::{AgentService, ServiceConnect, ServiceRegistration};

/// How often a [`Registration`] checks that the agent still knows the service.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// A service kept registered with the agent; dropping it (or shutting the service down)
/// deregisters it. From [`ConnectService::register`](crate::ConnectService::register).
///
/// ```no_run
/// # async fn run(db: consul_connect::ConnectService) -> Result<(), Box<dyn std::error::Error>> {
/// let listener = consul_connect::ConnectListener::bind(&db, "127.0.0.1:9191").await?;
/// let registration = db.register(listener.local_addr()).await?;
/// // ... serve ...
/// drop(registration); // deregistered
/// # Ok(()) }
/// ```
pub struct Registration {
    id: String,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// Registers the service `name` at `addr` with `agent` as Connect-native (ID and name
    /// `name`) and starts keeping it registered, checking every `interval`, until dropped or
    /// until `shutdown` turns true.
    pub(crate) async fn start(
        agent: AgentClient,
        name: &str,
        addr: SocketAddr,
        interval: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, AgentError> {
        let registration = ServiceRegistration {
            id: name.to_owned(),
            name: name.to_owned(),
            port: addr.port(),
            address: addr.ip().to_string(),
            connect: Some(ServiceConnect {
                native: true,
                sidecar_service: None,
            }),
            ..ServiceRegistration::default()
        };
        agent.register(&registration).await?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(keep(agent, registration, interval, stopped, shutdown));
        Ok(Self {
            id: name.to_owned(),
            stop,
            task: Some(task),
        })
    }

    /// The registered service ID.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Deregisters now and waits for the agent's answer.
    pub async fn deregister(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // The task deregisters on its own once told to stop.
        self.stop.send_replace(true);
    }
}

/// Re-registers whenever the agent no longer lists the service; deregisters on stop.
async fn keep(
    agent: AgentClient,
    registration: ServiceRegistration,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let id = registration.id.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped.wait_for(|s| *s) => break,
            _ = shutdown.wait_for(|s| *s) => break,
        }
        let listed = agent
            .get::<BTreeMap<String, AgentService>>(
                "/v1/agent/services",
                &[],
                &QueryOptions::default(),
            )
            .await
            .map(|services| services.value.contains_key(&id));
        match listed {
            Ok(true) => {}
            Ok(false) => match agent.register(&registration).await {
                Ok(()) => {
                    tracing::info!(service = %id, "the agent had forgotten the service; registered it again")
                }
                Err(error) => {
                    tracing::warn!(service = %id, %error, "registering the service again failed")
                }
            },
            Err(error) => {
                tracing::debug!(service = %id, %error, "cannot check the service's registration")
            }
        }
    }
    if let Err(error) = agent.deregister(&id).await {
        tracing::warn!(service = %id, %error, "deregistering the service failed");
    }
}
