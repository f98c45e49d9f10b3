//! Delivery of auth's outbox notices to billing, through billing's contract: in memory
//! when billing runs in this process, over the network otherwise.

use llmesh_kit::authn::SERVICE_TOKEN_HEADER;
use llmesh_kit::outbox::Deliver;
use llmesh_kit::peer::{Peer, Transport};
use llmesh_proto::billing::v1 as pb;
use llmesh_proto::billing::v1::billing_service_client::BillingServiceClient;

const MARK_USER_DELETED: &str = "/llmesh.billing.v1.BillingService/MarkUserDeleted";

/// Tells billing that a user was deleted (the payload is the user id).
pub struct UserDeletedToBilling {
    peer: Peer,
    client: BillingServiceClient<Transport>,
    service_token: String,
}

impl UserDeletedToBilling {
    pub fn new(peer: Peer, service_token: String) -> Self {
        UserDeletedToBilling {
            client: BillingServiceClient::new(peer.transport()),
            peer,
            service_token,
        }
    }
}

#[async_trait::async_trait]
impl Deliver for UserDeletedToBilling {
    async fn deliver(&self, user_id: &str) -> Result<(), String> {
        let token = self
            .service_token
            .parse::<tonic::metadata::MetadataValue<_>>()
            .map_err(|_| "peers.service_token is not valid metadata".to_owned())?;
        self.peer
            .unary(MARK_USER_DELETED, || {
                let mut req = self.peer.request(pb::MarkUserDeletedRequest {
                    user_id: user_id.to_owned(),
                });
                req.metadata_mut()
                    .insert(SERVICE_TOKEN_HEADER, token.clone());
                let mut client = self.client.clone();
                async move { client.mark_user_deleted(req).await }
            })
            .await
            .map(|_| ())
            .map_err(|s| s.message().to_owned())
    }
}
