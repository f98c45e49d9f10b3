//! Readiness as the standard gRPC health service reports it. A service is SERVING when
//! every condition it registered holds: its own (llm: its default model is loaded) and
//! those of the peers it cannot work without (chat: llm answers). The empty service name
//! stands for the whole process: SERVING when every service is.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::peer::Peer;

/// How often an unreachable required peer is checked again (and a reachable one).
const PEER_PROBE: Duration = Duration::from_secs(5);

/// One condition: None while it holds, else why not.
type Condition = watch::Receiver<Option<String>>;

/// Sets a condition registered with [`Readiness::gate`].
pub struct Gate(watch::Sender<Option<String>>, Arc<Notify>);

impl Gate {
    /// The condition holds.
    pub fn open(&self) {
        self.0.send_replace(None);
        self.1.notify_one();
    }

    /// The condition does not hold, for `reason`.
    pub fn close(&self, reason: impl Into<String>) {
        self.0.send_replace(Some(reason.into()));
        self.1.notify_one();
    }
}

struct PeerCheck {
    service: &'static str,
    peer: Peer,
    peer_service: &'static str,
    gate: Gate,
}

/// The conditions of one process's services.
#[derive(Default)]
pub struct Readiness {
    conditions: Vec<(&'static str, Condition)>,
    peers: Vec<PeerCheck>,
    changed: Arc<Notify>,
}

impl Readiness {
    /// Registers a condition of `service`, closed (not ready) until the gate opens.
    pub fn gate(&mut self, service: &'static str, reason: &str) -> Gate {
        let (tx, rx) = watch::channel(Some(reason.to_owned()));
        self.conditions.push((service, rx));
        Gate(tx, self.changed.clone())
    }

    /// Makes `service` ready only while `peer` reports `peer_service` SERVING. A peer in
    /// this process needs no check.
    pub fn require(&mut self, service: &'static str, peer: &Peer, peer_service: &'static str) {
        if peer.is_local() {
            return;
        }
        let gate = self.gate(
            service,
            &format!(
                "waiting for the {} service at {}",
                peer.name(),
                peer.location()
            ),
        );
        self.peers.push(PeerCheck {
            service,
            peer: peer.clone(),
            peer_service,
            gate,
        });
    }

    /// Keeps `reporter` in line with the conditions of `names` until `draining` is set
    /// (shutdown then reports NOT_SERVING itself).
    pub fn spawn(
        self,
        reporter: HealthReporter,
        names: Vec<&'static str>,
        draining: Arc<AtomicBool>,
    ) {
        for check in self.peers {
            tokio::spawn(probe(check));
        }
        let conditions = self.conditions;
        let changed = self.changed;
        tokio::spawn(async move {
            let mut last: Vec<Option<bool>> = vec![None; names.len() + 1];
            loop {
                if draining.load(Ordering::SeqCst) {
                    return;
                }
                let mut all = true;
                for (i, name) in names.iter().enumerate() {
                    let blocked: Vec<String> = conditions
                        .iter()
                        .filter(|(s, _)| s == name)
                        .filter_map(|(_, c)| c.borrow().clone())
                        .collect();
                    let ready = blocked.is_empty();
                    all &= ready;
                    if last[i] != Some(ready) {
                        if ready {
                            tracing::info!(service = name, "ready");
                        } else {
                            tracing::info!(service = name, waiting_for = %blocked.join("; "), "not ready");
                        }
                        reporter.set_service_status(*name, status(ready)).await;
                        last[i] = Some(ready);
                    }
                }
                if last[names.len()] != Some(all) {
                    reporter.set_service_status("", status(all)).await;
                    last[names.len()] = Some(all);
                }
                tokio::select! {
                    _ = changed.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }
}

fn status(ready: bool) -> ServingStatus {
    if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Checks a required peer's health now and every few seconds.
async fn probe(check: PeerCheck) {
    use tonic_health::pb::health_client::HealthClient;
    let client = HealthClient::new(check.peer.transport());
    let mut was: Option<bool> = None;
    loop {
        let answer = check
            .peer
            .unary("/grpc.health.v1.Health/Check", || {
                let mut client = client.clone();
                let req = check.peer.request(tonic_health::pb::HealthCheckRequest {
                    service: check.peer_service.to_owned(),
                });
                async move { client.check(req).await }
            })
            .await;
        // Behind an edge, health may be answered by another process that does not serve
        // the peer ("not registered"): then whether the peer's own path answers decides.
        let answer = match answer {
            Err(s) if s.code() == tonic::Code::NotFound => {
                reachable(&check.peer, check.peer_service).await.map(|()| {
                    tonic_health::pb::HealthCheckResponse {
                        status: tonic_health::pb::health_check_response::ServingStatus::Serving
                            as i32,
                    }
                })
            }
            other => other,
        };
        let serving = matches!(&answer, Ok(r) if r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
        if serving {
            check.gate.open();
        } else {
            let why = match answer {
                Ok(_) => format!(
                    "the {} service at {} is not ready",
                    check.peer.name(),
                    check.peer.location()
                ),
                Err(status) => status.message().to_owned(),
            };
            if was != Some(false) {
                tracing::warn!(service = check.service, peer = check.peer.name(), reason = %why, "a required peer is unavailable");
            }
            check.gate.close(why);
        }
        was = Some(serving);
        tokio::time::sleep(PEER_PROBE).await;
    }
}

/// Whether the process serving `service` answers at all: a call to a method no service
/// has, under the service's own path, so an edge routes it there; the answer is
/// UNIMPLEMENTED from that process, or UNAVAILABLE when nothing is there.
async fn reachable(peer: &Peer, service: &str) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(peer.transport());
    grpc.ready()
        .await
        .map_err(|e| peer.error(tonic::Status::unavailable(e.to_string())))?;
    let path: http::uri::PathAndQuery = format!("/{service}/Llmesh.Probe")
        .parse()
        .map_err(|_| tonic::Status::internal("probe path"))?;
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    match grpc.unary(peer.request(()), path, codec).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::Unimplemented => Ok(()),
        Err(s) => Err(peer.error(s)),
    }
}
