//! Billing over real gRPC on SQLite and Postgres: racing reservations, idempotency,
//! restarts, quotas and rate limits, usage reports, reconciliation, deleted users.

use chrono::Duration;
use llmesh_proto::auth::v1 as auth_pb;
use llmesh_proto::billing::v1 as pb;
use llmesh_proto::billing::v1::billing_service_client::BillingServiceClient;
use llmesh_proto::common::v1::TokenUsage;
use llmesh_tests::{Backend, TestServer, bearer, both_backends, every_shape};
use tonic::Code;
use tonic::transport::Channel;

const SERVICE_TOKEN: &str = "0123456789abcdef0123456789abcdef-billing";

struct Setup {
    s: TestServer,
    admin: String,
    user: String,
    user_id: String,
}

async fn setup(backend: Backend, tweak: impl FnOnce(&mut llmesh::Config)) -> Option<Setup> {
    let s = TestServer::start_with(backend, |c| {
        c.peers.service_token = Some(SERVICE_TOKEN.into());
        tweak(c);
    })
    .await?;
    let (_, admin) = s.signup("admin@example.com").await;
    let (user, tokens) = s.signup("user@example.com").await;
    Some(Setup {
        admin: admin.access_token,
        user: tokens.access_token,
        user_id: user.id,
        s,
    })
}

fn client(s: &TestServer) -> BillingServiceClient<Channel> {
    BillingServiceClient::new(s.channel.clone())
}

/// A request as the llm service sends it: the service token plus the user's credential.
fn internal<T>(user_token: &str, message: T) -> tonic::Request<T> {
    let mut req = bearer(user_token, message);
    req.metadata_mut().insert(
        "x-llmesh-service-token",
        SERVICE_TOKEN.parse().expect("ascii"),
    );
    req
}

fn reserve(key: &str) -> pb::ReserveRequest {
    pb::ReserveRequest {
        model: "m".into(),
        prompt_tokens: 10,
        max_tokens: Some(90),
        context_length: 2048,
        idempotency_key: key.into(),
        api_key_id: String::new(),
        ..Default::default()
    }
}

/// One micro-unit per token in and out: a 10 + 90 token reservation holds 100.
async fn price_one_per_token(b: &mut BillingServiceClient<Channel>, admin: &str) {
    b.set_price(bearer(
        admin,
        pb::SetPriceRequest {
            model: "m".into(),
            input_micros_per_mtok: 1_000_000,
            output_micros_per_mtok: 1_000_000,
            ..Default::default()
        },
    ))
    .await
    .expect("price");
}

async fn credit(
    b: &mut BillingServiceClient<Channel>,
    admin: &str,
    user_id: &str,
    amount: i64,
    key: &str,
) -> i64 {
    b.adjust_balance(bearer(
        admin,
        pb::AdjustBalanceRequest {
            user_id: user_id.into(),
            amount_micros: amount,
            reason: "test".into(),
            idempotency_key: key.into(),
        },
    ))
    .await
    .expect("credit")
    .into_inner()
    .balance
    .expect("balance")
    .micros
}

async fn balance(b: &mut BillingServiceClient<Channel>, token: &str) -> (i64, i64) {
    let r = b
        .get_balance(bearer(token, pb::GetBalanceRequest::default()))
        .await
        .expect("balance")
        .into_inner();
    (r.balance.expect("b").micros, r.reserved.expect("r").micros)
}

async fn reconciled(b: &mut BillingServiceClient<Channel>, admin: &str) {
    let r = b
        .reconcile(bearer(admin, pb::ReconcileRequest {}))
        .await
        .expect("reconcile")
        .into_inner();
    assert!(r.accounts_checked >= 1);
    assert!(
        r.mismatches.is_empty(),
        "ledger and balances disagree: {:?}",
        r.mismatches
    );
}

every_shape!(two_hundred_racing_reservations, |backend| async move {
    let Some(Setup {
        s,
        admin,
        user,
        user_id,
    }) = setup(backend, |_| {}).await
    else {
        return;
    };
    let mut b = client(&s);
    price_one_per_token(&mut b, &admin).await;
    credit(&mut b, &admin, &user_id, 50 * 100, "fund").await;

    let mut tasks = Vec::new();
    for i in 0..200 {
        let mut b = client(&s);
        let user = user.clone();
        tasks.push(tokio::spawn(async move {
            b.reserve(internal(&user, reserve(&format!("race-{i}"))))
                .await
                .map(|_| ())
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(()) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert!(
                    status.message().contains("insufficient balance"),
                    "{}",
                    status.message()
                );
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (50, 150));
    assert_eq!(balance(&mut b, &user).await, (0, 5000));
    reconciled(&mut b, &admin).await;
});

every_shape!(
    retries_with_the_same_key_charge_once,
    |backend| async move {
        let Some(Setup {
            s,
            admin,
            user,
            user_id,
        }) = setup(backend, |_| {}).await
        else {
            return;
        };
        let mut b = client(&s);
        price_one_per_token(&mut b, &admin).await;
        assert_eq!(credit(&mut b, &admin, &user_id, 1000, "k1").await, 1000);
        assert_eq!(
            credit(&mut b, &admin, &user_id, 1000, "k1").await,
            1000,
            "same key, applied once"
        );

        let first = b
            .reserve(internal(&user, reserve("r1")))
            .await
            .expect("reserve")
            .into_inner();
        let again = b
            .reserve(internal(&user, reserve("r1")))
            .await
            .expect("retry")
            .into_inner();
        assert_eq!(first.reservation_id, again.reservation_id);
        assert_eq!(first.held.expect("held").micros, 100);
        assert_eq!(balance(&mut b, &user).await, (900, 100));

        let settle = || pb::SettleRequest {
            reservation_id: first.reservation_id.clone(),
            usage: Some(TokenUsage {
                prompt_tokens: 10,
                completion_tokens: 5,
            }),
            idempotency_key: "s1".into(),
            ..Default::default()
        };
        let s1 = b
            .settle(internal(&user, settle()))
            .await
            .expect("settle")
            .into_inner();
        let s2 = b
            .settle(internal(&user, settle()))
            .await
            .expect("retry")
            .into_inner();
        assert_eq!(s1.charged.expect("charged").micros, 15);
        assert_eq!(s2.charged.expect("charged").micros, 15);
        assert_eq!(balance(&mut b, &user).await, (985, 0), "charged 15 once");

        // A settled reservation cannot be released; a released one cannot be settled.
        let status = b
            .release(internal(
                &user,
                pb::ReleaseRequest {
                    reservation_id: first.reservation_id.clone(),
                    idempotency_key: String::new(),
                },
            ))
            .await
            .expect_err("settled");
        assert_eq!(status.code(), Code::FailedPrecondition);
        let other = b
            .reserve(internal(&user, reserve("r2")))
            .await
            .expect("reserve")
            .into_inner();
        b.release(internal(
            &user,
            pb::ReleaseRequest {
                reservation_id: other.reservation_id.clone(),
                idempotency_key: String::new(),
            },
        ))
        .await
        .expect("release");
        let status = b
            .settle(internal(
                &user,
                pb::SettleRequest {
                    reservation_id: other.reservation_id,
                    usage: None,
                    idempotency_key: String::new(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("released");
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(balance(&mut b, &user).await, (985, 0));

        // Debits never go below zero.
        let status = b
            .adjust_balance(bearer(
                &admin,
                pb::AdjustBalanceRequest {
                    user_id: user_id.clone(),
                    amount_micros: -5000,
                    reason: "too much".into(),
                    idempotency_key: "d".into(),
                },
            ))
            .await
            .expect_err("below zero");
        assert_eq!(status.code(), Code::FailedPrecondition);
        reconciled(&mut b, &admin).await;
    }
);

both_backends!(
    open_reservations_are_released_after_a_restart,
    |backend| async move {
        let Some(Setup {
            s,
            admin,
            user,
            user_id,
        }) = setup(backend, |_| {}).await
        else {
            return;
        };
        let mut b = client(&s);
        price_one_per_token(&mut b, &admin).await;
        credit(&mut b, &admin, &user_id, 1000, "fund").await;
        b.reserve(internal(&user, reserve("left-open")))
            .await
            .expect("reserve");
        assert_eq!(balance(&mut b, &user).await, (900, 100));

        // The server dies with the reservation open; it comes back after the TTL.
        let s = s
            .restart(Duration::minutes(16), |c| {
                c.peers.service_token = Some(SERVICE_TOKEN.into())
            })
            .await;
        let mut b = client(&s);
        let user = s.login("user@example.com").await.1.access_token;
        let admin = s.login("admin@example.com").await.1.access_token;
        let mut released = false;
        for _ in 0..200 {
            if balance(&mut b, &user).await == (1000, 0) {
                released = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(released, "the sweeper released the hold after the restart");
        reconciled(&mut b, &admin).await;
    }
);

both_backends!(quotas_rates_usage_and_deleted_users, |backend| async move {
    let Some(Setup {
        s,
        admin,
        user,
        user_id,
    }) = setup(backend, |_| {}).await
    else {
        return;
    };
    let mut b = client(&s);
    price_one_per_token(&mut b, &admin).await;
    credit(&mut b, &admin, &user_id, 100_000, "fund").await;

    // Unpriced models are free under the default policy.
    let free = b
        .reserve(internal(
            &user,
            pb::ReserveRequest {
                model: "unpriced".into(),
                ..reserve("free")
            },
        ))
        .await
        .expect("free")
        .into_inner();
    assert_eq!(free.held.expect("held").micros, 0);

    // A monthly spend cap of 250 allows two holds of 100 and refuses the third.
    b.set_quota(bearer(
        &admin,
        pb::SetQuotaRequest {
            subject: Some(pb::set_quota_request::Subject::UserId(user_id.clone())),
            quota: Some(pb::Quota {
                monthly_spend_micros: 250,
                ..Default::default()
            }),
        },
    ))
    .await
    .expect("quota");
    let r1 = b
        .reserve(internal(&user, reserve("q1")))
        .await
        .expect("1")
        .into_inner();
    let r2 = b
        .reserve(internal(&user, reserve("q2")))
        .await
        .expect("2")
        .into_inner();
    let status = b
        .reserve(internal(&user, reserve("q3")))
        .await
        .expect_err("capped");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.metadata().get("retry-after").is_some());
    for (r, completion) in [(r1, 40), (r2, 60)] {
        b.settle(internal(
            &user,
            pb::SettleRequest {
                reservation_id: r.reservation_id,
                usage: Some(TokenUsage {
                    prompt_tokens: 10,
                    completion_tokens: completion,
                }),
                idempotency_key: String::new(),
                ..Default::default()
            },
        ))
        .await
        .expect("settle");
    }
    let q = b
        .get_quota(bearer(&user, pb::GetQuotaRequest { subject: None }))
        .await
        .expect("own quota")
        .into_inner();
    assert_eq!(q.month_spend_micros, 120);
    assert_eq!(q.month_tokens, 120);
    // A new calendar month starts from zero.
    s.clock().advance(Duration::days(31));
    let user = s.login("user@example.com").await.1.access_token;
    let admin = s.login("admin@example.com").await.1.access_token;
    b.reserve(internal(&user, reserve("next-month")))
        .await
        .expect("new month");

    // Per-minute request limits.
    b.set_quota(bearer(
        &admin,
        pb::SetQuotaRequest {
            subject: Some(pb::set_quota_request::Subject::UserId(user_id.clone())),
            quota: Some(pb::Quota {
                requests_per_minute: 2,
                ..Default::default()
            }),
        },
    ))
    .await
    .expect("rate");
    b.reserve(internal(&user, reserve("rpm1")))
        .await
        .expect("1");
    b.reserve(internal(&user, reserve("rpm2")))
        .await
        .expect("2");
    let status = b
        .reserve(internal(&user, reserve("rpm3")))
        .await
        .expect_err("limited");
    assert_eq!(status.code(), Code::ResourceExhausted);

    // Usage: by model, own; everyone's only for admins; CSV export.
    let usage = b
        .list_usage(bearer(
            &user,
            pb::ListUsageRequest {
                group_by: pb::UsageGrouping::Model as i32,
                ..Default::default()
            },
        ))
        .await
        .expect("usage")
        .into_inner();
    let row = usage.rows.iter().find(|r| r.key == "m").expect("row for m");
    assert_eq!(row.requests, 2);
    assert_eq!(row.spend.as_ref().expect("spend").micros, 120);
    let status = b
        .list_usage(bearer(
            &user,
            pb::ListUsageRequest {
                all_users: true,
                ..Default::default()
            },
        ))
        .await
        .expect_err("not admin");
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = b
        .get_balance(bearer(
            &user,
            pb::GetBalanceRequest {
                user_id: uuid::Uuid::now_v7().to_string(),
            },
        ))
        .await
        .expect_err("someone else");
    assert_eq!(status.code(), Code::PermissionDenied);
    let mut csv = Vec::new();
    let mut stream = b
        .export_usage(bearer(
            &admin,
            pb::ExportUsageRequest {
                all_users: true,
                ..Default::default()
            },
        ))
        .await
        .expect("export")
        .into_inner();
    while let Some(chunk) = stream.message().await.expect("chunk") {
        csv.extend(chunk.csv_chunk);
    }
    let csv = String::from_utf8(csv).expect("utf-8");
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("time,user_id,model"));
    assert!(lines[0].ends_with("currency,fuel"));
    // The header and the two settled generations; open reservations are not usage yet.
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[1].contains(",m,") && lines[1].ends_with(",50,USD,0"),
        "{}",
        lines[1]
    );

    // Deleting the user keeps the ledger, and the books still balance.
    let mut auth = s.auth();
    auth.delete_user(bearer(
        &admin,
        auth_pb::DeleteUserRequest {
            user_id: user_id.clone(),
        },
    ))
    .await
    .expect("delete");
    reconciled(&mut b, &admin).await;
    let still = b
        .get_balance(bearer(
            &admin,
            pb::GetBalanceRequest {
                user_id: user_id.clone(),
            },
        ))
        .await
        .expect("admin sees the deleted user's account")
        .into_inner();
    assert!(still.balance.expect("balance").micros > 0);
});

every_shape!(unpriced_models_can_be_refused, |backend| async move {
    let Some(Setup { s, user, .. }) = setup(backend, |c| c.billing.unpriced = "deny".into()).await
    else {
        return;
    };
    let mut b = client(&s);
    let status = b
        .reserve(internal(
            &user,
            pb::ReserveRequest {
                model: "unpriced".into(),
                ..reserve("x")
            },
        ))
        .await
        .expect_err("no price");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("no price"),
        "{}",
        status.message()
    );
});
