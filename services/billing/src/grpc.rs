//! The gRPC adapter of billing, with the access rule of every RPC.

use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::Stream;
use llmesh_kit::authn::{caller, principal};
use llmesh_kit::convert::{from_timestamp, timestamp};
use llmesh_kit::{Access, ApiError, Principal, validate};
use llmesh_proto::billing::v1 as pb;
use llmesh_proto::common::v1::{Money, TokenUsage};
use tonic::{Request, Response, Status};

use crate::service::{BillingService, Grouping, ReserveRequest, Usage};
use crate::store::{Price, Quota};

pub const SERVICE_NAME: &str = "llmesh.billing.v1.BillingService";

/// Who may call each billing RPC.
pub const ACCESS: &[(&str, Access)] = &[
    ("/llmesh.billing.v1.BillingService/SetPrice", Access::Admin),
    (
        "/llmesh.billing.v1.BillingService/ListPrices",
        Access::Viewer,
    ),
    (
        "/llmesh.billing.v1.BillingService/DeletePrice",
        Access::Admin,
    ),
    (
        "/llmesh.billing.v1.BillingService/GetBalance",
        Access::Viewer,
    ),
    (
        "/llmesh.billing.v1.BillingService/AdjustBalance",
        Access::Admin,
    ),
    ("/llmesh.billing.v1.BillingService/Reserve", Access::Service),
    ("/llmesh.billing.v1.BillingService/Settle", Access::Service),
    ("/llmesh.billing.v1.BillingService/Release", Access::Service),
    (
        "/llmesh.billing.v1.BillingService/MarkUserDeleted",
        Access::Service,
    ),
    ("/llmesh.billing.v1.BillingService/SetQuota", Access::Admin),
    ("/llmesh.billing.v1.BillingService/GetQuota", Access::Viewer),
    (
        "/llmesh.billing.v1.BillingService/ListUsage",
        Access::Viewer,
    ),
    (
        "/llmesh.billing.v1.BillingService/ExportUsage",
        Access::Viewer,
    ),
    ("/llmesh.billing.v1.BillingService/Reconcile", Access::Admin),
];

pub struct GrpcBillingAdapter {
    service: Arc<BillingService>,
}

impl GrpcBillingAdapter {
    pub fn new(service: Arc<BillingService>) -> Self {
        GrpcBillingAdapter { service }
    }

    fn money(&self, micros: i64) -> Option<Money> {
        Some(Money {
            micros,
            currency: self.service.currency().to_owned(),
        })
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// The user a request is about: the caller, or anyone for an admin.
fn subject_user(p: &Principal, requested: &str) -> Result<String, ApiError> {
    if requested.is_empty() || requested == p.user_id {
        return Ok(p.user_id.clone());
    }
    if !p.is_admin() {
        return Err(ApiError::permission_denied(
            "only admins can see other users' billing",
        ));
    }
    Ok(validate::id("user_id", requested)?.to_string())
}

/// The principal a calling service forwards; internal RPCs act on its behalf.
fn forwarded<T>(req: &Request<T>) -> Result<Principal, ApiError> {
    caller(req).principal.ok_or_else(|| {
        ApiError::invalid(
            "forward the user's credential (authorization or x-api-key) with the service token",
        )
    })
}

fn range(
    start: &Option<prost_types::Timestamp>,
    end: &Option<prost_types::Timestamp>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let start = start
        .as_ref()
        .map(|t| from_timestamp("start", t))
        .transpose()?
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let end = end
        .as_ref()
        .map(|t| from_timestamp("end", t))
        .transpose()?
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    Ok((start, end))
}

fn price_pb(p: &Price) -> pb::Price {
    pb::Price {
        model: p.model.clone(),
        input_micros_per_mtok: p.input_micros_per_mtok,
        output_micros_per_mtok: p.output_micros_per_mtok,
        updated_at: Some(timestamp(p.updated_at)),
        micros_per_billion_fuel: p.micros_per_gfuel,
    }
}

fn quota_pb(q: &Quota) -> pb::Quota {
    pb::Quota {
        monthly_spend_micros: q.monthly_spend_micros,
        monthly_tokens: q.monthly_tokens.max(0) as u64,
        requests_per_minute: q.requests_per_minute.max(0) as u32,
        tokens_per_minute: q.tokens_per_minute.max(0) as u32,
    }
}

fn quota_subject(
    subject: Option<pb::set_quota_request::Subject>,
) -> Result<(String, String, &'static str), ApiError> {
    match subject {
        Some(pb::set_quota_request::Subject::UserId(id)) => {
            let id = validate::id("user_id", &id)?.to_string();
            Ok((format!("user:{id}"), id, "user_id"))
        }
        Some(pb::set_quota_request::Subject::ApiKeyId(id)) => {
            let id = validate::id("api_key_id", &id)?.to_string();
            Ok((format!("key:{id}"), id, "api_key_id"))
        }
        None => Err(ApiError::invalid("user_id or api_key_id is required")),
    }
}

#[tonic::async_trait]
impl pb::billing_service_server::BillingService for GrpcBillingAdapter {
    async fn set_price(&self, req: Request<pb::SetPriceRequest>) -> Reply<pb::SetPriceResponse> {
        let r = req.into_inner();
        let price = self
            .service
            .set_price(
                &r.model,
                r.input_micros_per_mtok,
                r.output_micros_per_mtok,
                r.micros_per_billion_fuel,
            )
            .await?;
        Ok(Response::new(pb::SetPriceResponse {
            price: Some(price_pb(&price)),
        }))
    }

    async fn list_prices(
        &self,
        _req: Request<pb::ListPricesRequest>,
    ) -> Reply<pb::ListPricesResponse> {
        let prices = self.service.prices().await?;
        Ok(Response::new(pb::ListPricesResponse {
            prices: prices.iter().map(price_pb).collect(),
            currency: self.service.currency().to_owned(),
        }))
    }

    async fn delete_price(
        &self,
        req: Request<pb::DeletePriceRequest>,
    ) -> Reply<pb::DeletePriceResponse> {
        self.service.delete_price(&req.into_inner().model).await?;
        Ok(Response::new(pb::DeletePriceResponse {}))
    }

    async fn get_balance(
        &self,
        req: Request<pb::GetBalanceRequest>,
    ) -> Reply<pb::GetBalanceResponse> {
        let p = principal(&req)?;
        let user = subject_user(&p, &req.into_inner().user_id)?;
        let (balance, reserved) = self.service.balance(&user).await?;
        Ok(Response::new(pb::GetBalanceResponse {
            balance: self.money(balance),
            reserved: self.money(reserved),
        }))
    }

    async fn adjust_balance(
        &self,
        req: Request<pb::AdjustBalanceRequest>,
    ) -> Reply<pb::AdjustBalanceResponse> {
        let r = req.into_inner();
        let user = validate::id("user_id", &r.user_id)?.to_string();
        let key = if r.idempotency_key.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            r.idempotency_key
        };
        let balance = self
            .service
            .adjust(&user, r.amount_micros, &r.reason, &key)
            .await?;
        Ok(Response::new(pb::AdjustBalanceResponse {
            balance: self.money(balance),
        }))
    }

    async fn reserve(&self, req: Request<pb::ReserveRequest>) -> Reply<pb::ReserveResponse> {
        let p = forwarded(&req)?;
        let r = req.into_inner();
        let reservation = self
            .service
            .reserve(
                &p,
                ReserveRequest {
                    model: r.model,
                    prompt_tokens: r.prompt_tokens,
                    max_tokens: r.max_tokens,
                    context_length: r.context_length,
                    idempotency_key: r.idempotency_key,
                    fuel: r.fuel,
                },
            )
            .await?;
        Ok(Response::new(pb::ReserveResponse {
            reservation_id: reservation.id,
            held: self.money(reservation.held_micros),
            expires_at: Some(timestamp(reservation.expires_at)),
            micros_per_billion_fuel: reservation.micros_per_gfuel,
        }))
    }

    async fn settle(&self, req: Request<pb::SettleRequest>) -> Reply<pb::SettleResponse> {
        let p = forwarded(&req)?;
        let r = req.into_inner();
        let usage = r.usage.unwrap_or_default();
        let s = self
            .service
            .settle(
                Some(&p.user_id),
                &r.reservation_id,
                Usage {
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    fuel: r.fuel_used,
                },
            )
            .await?;
        Ok(Response::new(pb::SettleResponse {
            charged: self.money(s.charged),
            released: self.money(s.released),
        }))
    }

    async fn release(&self, req: Request<pb::ReleaseRequest>) -> Reply<pb::ReleaseResponse> {
        let p = forwarded(&req)?;
        let released = self
            .service
            .release(Some(&p.user_id), &req.into_inner().reservation_id)
            .await?;
        Ok(Response::new(pb::ReleaseResponse {
            released: self.money(released),
        }))
    }

    async fn set_quota(&self, req: Request<pb::SetQuotaRequest>) -> Reply<pb::SetQuotaResponse> {
        let r = req.into_inner();
        let (subject, _, _) = quota_subject(r.subject)?;
        let q = r.quota.unwrap_or_default();
        let to_i32 = |v: u32| {
            i32::try_from(v).map_err(|_| ApiError::invalid("per-minute limits must fit in 31 bits"))
        };
        let quota = self
            .service
            .set_quota(
                &subject,
                Quota {
                    monthly_spend_micros: q.monthly_spend_micros,
                    monthly_tokens: i64::try_from(q.monthly_tokens)
                        .map_err(|_| ApiError::invalid("monthly_tokens is too large"))?,
                    requests_per_minute: to_i32(q.requests_per_minute)?,
                    tokens_per_minute: to_i32(q.tokens_per_minute)?,
                },
            )
            .await?;
        Ok(Response::new(pb::SetQuotaResponse {
            quota: Some(quota_pb(&quota)),
        }))
    }

    async fn get_quota(&self, req: Request<pb::GetQuotaRequest>) -> Reply<pb::GetQuotaResponse> {
        let p = principal(&req)?;
        let subject = match req.into_inner().subject {
            Some(pb::get_quota_request::Subject::UserId(id)) => Some(
                pb::set_quota_request::Subject::UserId(subject_user(&p, &id)?),
            ),
            Some(pb::get_quota_request::Subject::ApiKeyId(id)) => {
                if !p.is_admin() && p.api_key_id() != Some(id.as_str()) {
                    return Err(ApiError::permission_denied(
                        "only admins can see other keys' quotas",
                    )
                    .into());
                }
                Some(pb::set_quota_request::Subject::ApiKeyId(id))
            }
            None => Some(pb::set_quota_request::Subject::UserId(p.user_id.clone())),
        };
        let (subject, id, column) = quota_subject(subject)?;
        let (quota, spend, tokens) = self.service.quota(column, &id, &subject).await?;
        Ok(Response::new(pb::GetQuotaResponse {
            quota: Some(quota_pb(&quota)),
            month_spend_micros: spend,
            month_tokens: tokens.max(0) as u64,
        }))
    }

    async fn list_usage(&self, req: Request<pb::ListUsageRequest>) -> Reply<pb::ListUsageResponse> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let user = usage_subject(&p, &r.user_id, r.all_users)?;
        let (start, end) = range(&r.start, &r.end)?;
        let group = match pb::UsageGrouping::try_from(r.group_by) {
            Ok(pb::UsageGrouping::Model) => Grouping::Model,
            Ok(pb::UsageGrouping::ApiKey) => Grouping::ApiKey,
            Ok(pb::UsageGrouping::Day) | Ok(pb::UsageGrouping::Unspecified) => Grouping::Day,
            Err(_) => return Err(ApiError::invalid("group_by is not a known grouping").into()),
        };
        let (rows, total) = self
            .service
            .usage(user.as_deref(), start, end, group)
            .await?;
        Ok(Response::new(pb::ListUsageResponse {
            rows: rows
                .into_iter()
                .map(|row| pb::UsageRow {
                    key: row.key,
                    requests: row.requests,
                    tokens: Some(TokenUsage {
                        prompt_tokens: u32::try_from(row.prompt_tokens).unwrap_or(u32::MAX),
                        completion_tokens: u32::try_from(row.completion_tokens).unwrap_or(u32::MAX),
                    }),
                    spend: self.money(row.spend),
                    fuel: row.fuel,
                    overage: self.money(row.overage),
                })
                .collect(),
            total: self.money(total),
        }))
    }

    type ExportUsageStream =
        Pin<Box<dyn Stream<Item = Result<pb::ExportUsageResponse, Status>> + Send>>;

    async fn export_usage(
        &self,
        req: Request<pb::ExportUsageRequest>,
    ) -> Reply<Self::ExportUsageStream> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let user = usage_subject(&p, &r.user_id, r.all_users)?;
        let (start, end) = range(&r.start, &r.end)?;
        let lines = self.service.usage_csv(user.as_deref(), start, end).await?;
        // About 64 KiB per message.
        let mut chunks = Vec::new();
        let mut current = Vec::new();
        for line in lines {
            current.extend_from_slice(line.as_bytes());
            if current.len() >= 64 * 1024 {
                chunks.push(std::mem::take(&mut current));
            }
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        let stream = tokio_stream::iter(
            chunks
                .into_iter()
                .map(|csv_chunk| Ok(pb::ExportUsageResponse { csv_chunk })),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn mark_user_deleted(
        &self,
        req: Request<pb::MarkUserDeletedRequest>,
    ) -> Reply<pb::MarkUserDeletedResponse> {
        let user_id = req.into_inner().user_id;
        llmesh_kit::validate::id("user_id", &user_id)?;
        self.service.user_deleted(&user_id).await?;
        Ok(Response::new(pb::MarkUserDeletedResponse {}))
    }

    async fn reconcile(&self, _req: Request<pb::ReconcileRequest>) -> Reply<pb::ReconcileResponse> {
        let (checked, mismatches) = self.service.reconcile().await?;
        Ok(Response::new(pb::ReconcileResponse {
            accounts_checked: checked as u64,
            mismatches: mismatches
                .into_iter()
                .map(|m| pb::ReconcileMismatch {
                    user_id: m.user_id,
                    stored_micros: m.stored,
                    ledger_micros: m.ledger,
                })
                .collect(),
        }))
    }
}

/// Whose usage a report covers: None means everyone (admins only).
fn usage_subject(p: &Principal, user_id: &str, all: bool) -> Result<Option<String>, ApiError> {
    if all {
        if !p.is_admin() {
            return Err(ApiError::permission_denied(
                "only admins can see everyone's usage",
            ));
        }
        return Ok(None);
    }
    subject_user(p, user_id).map(Some)
}
