//! Every auth RPC over a real socket, success and failure paths, on SQLite and Postgres.

use chrono::Duration;
use llmesh_proto::auth::v1 as pb;
use llmesh_proto::common::v1::{PageRequest, Role};
use llmesh_tests::{Backend, PASSWORD, TestServer, bearer, both_backends, every_shape};
use tonic::Code;

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

async fn server(backend: Backend) -> Option<TestServer> {
    TestServer::start(backend).await
}

async fn sign_up_info(s: &TestServer) -> pb::GetSignUpInfoResponse {
    s.auth()
        .get_sign_up_info(pb::GetSignUpInfoRequest {})
        .await
        .expect("sign-up info")
        .into_inner()
}

every_shape!(register_login_and_me, |backend| async move {
    let Some(s) = server(backend).await else {
        return;
    };
    let mut auth = s.auth();
    let before = sign_up_info(&s).await;
    assert!(before.registration_open);
    assert!(before.first_user_becomes_admin, "nobody has signed up yet");
    let first = auth
        .register(pb::RegisterRequest {
            email: "  Ada@Example.COM ".into(),
            password: PASSWORD.into(),
            display_name: String::new(),
        })
        .await
        .expect("register")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(first.email, "ada@example.com");
    assert_eq!(first.display_name, "ada");
    assert_eq!(
        first.role,
        Role::Admin as i32,
        "the first account becomes admin"
    );
    assert!(!sign_up_info(&s).await.first_user_becomes_admin);

    let (second, tokens) = s.signup("bob@example.com").await;
    assert_eq!(second.role, Role::Member as i32);
    let me = auth
        .get_me(bearer(&tokens.access_token, pb::GetMeRequest {}))
        .await
        .expect("get me")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(me.id, second.id);

    let again = auth
        .register(pb::RegisterRequest {
            email: "BOB@example.com".into(),
            password: PASSWORD.into(),
            display_name: "Bob".into(),
        })
        .await;
    assert_eq!(code(again), Code::AlreadyExists);

    for (email, password, name) in [
        ("not-an-email", PASSWORD, ""),
        ("c@example.com", "short", ""),
        ("c@example.com", &"x".repeat(1025) as &str, ""),
        ("c@example.com", PASSWORD, &"n".repeat(101) as &str),
        ("c@example.com", PASSWORD, "bad\u{0}name"),
    ] {
        let r = auth
            .register(pb::RegisterRequest {
                email: email.into(),
                password: password.into(),
                display_name: name.into(),
            })
            .await;
        assert_eq!(
            code(r),
            Code::InvalidArgument,
            "{email} / {} / {name:?}",
            password.len()
        );
    }

    for (email, password) in [
        ("bob@example.com", "wrong password!"),
        ("nobody@example.com", PASSWORD),
    ] {
        let r = auth
            .login(pb::LoginRequest {
                email: email.into(),
                password: password.into(),
            })
            .await;
        let status = r.expect_err("login must fail");
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(
            status.message(),
            "wrong email or password",
            "no hint which part was wrong"
        );
    }
});

every_shape!(
    refresh_rotates_and_reuse_revokes_the_family,
    |backend| async move {
        let Some(s) = server(backend).await else {
            return;
        };
        let (_, first) = s.signup("ada@example.com").await;
        let mut auth = s.auth();
        let second = auth
            .refresh(pb::RefreshRequest {
                refresh_token: first.refresh_token.clone(),
            })
            .await
            .expect("refresh")
            .into_inner()
            .tokens
            .expect("tokens");
        assert_ne!(second.refresh_token, first.refresh_token);
        assert_ne!(second.access_token, first.access_token);
        auth.get_me(bearer(&second.access_token, pb::GetMeRequest {}))
            .await
            .expect("new access token works");

        // The first token again: reuse. The whole family dies, the newest token included.
        let reuse = auth
            .refresh(pb::RefreshRequest {
                refresh_token: first.refresh_token.clone(),
            })
            .await;
        assert_eq!(code(reuse), Code::Unauthenticated);
        let after = auth
            .refresh(pb::RefreshRequest {
                refresh_token: second.refresh_token.clone(),
            })
            .await;
        assert_eq!(code(after), Code::Unauthenticated);

        for junk in ["", "lmr_nonsense", "eyJhbGciOi.x.y", &"lmr_x".repeat(100)] {
            let r = auth
                .refresh(pb::RefreshRequest {
                    refresh_token: junk.into(),
                })
                .await;
            assert_eq!(code(r), Code::Unauthenticated, "{junk}");
        }
    }
);

both_backends!(tokens_expire_by_the_clock, |backend| async move {
    let Some(s) = server(backend).await else {
        return;
    };
    let (_, tokens) = s.signup("ada@example.com").await;
    let mut auth = s.auth();
    s.clock().advance(Duration::minutes(14));
    auth.get_me(bearer(&tokens.access_token, pb::GetMeRequest {}))
        .await
        .expect("still valid at 14 minutes");
    s.clock().advance(Duration::minutes(2));
    let expired = auth
        .get_me(bearer(&tokens.access_token, pb::GetMeRequest {}))
        .await
        .expect_err("expired at 16 minutes");
    assert_eq!(expired.code(), Code::Unauthenticated);
    assert!(
        expired.message().contains("expired"),
        "{}",
        expired.message()
    );

    // The refresh token outlives the access token ...
    let fresh = auth
        .refresh(pb::RefreshRequest {
            refresh_token: tokens.refresh_token,
        })
        .await
        .expect("refresh after access expiry")
        .into_inner()
        .tokens
        .expect("tokens");
    // ... but not its own 30 days.
    s.clock().advance(Duration::days(31));
    let late = auth
        .refresh(pb::RefreshRequest {
            refresh_token: fresh.refresh_token,
        })
        .await;
    assert_eq!(code(late), Code::Unauthenticated);
});

every_shape!(logout_profile_and_password, |backend| async move {
    let Some(s) = server(backend).await else {
        return;
    };
    let (_, a) = s.signup("ada@example.com").await;
    let (_, b) = s.login("ada@example.com").await;
    let (_, c) = s.login("ada@example.com").await;
    let mut auth = s.auth();

    // Logout ends session b only.
    auth.logout(bearer(
        &a.access_token,
        pb::LogoutRequest {
            refresh_token: b.refresh_token.clone(),
        },
    ))
    .await
    .expect("logout");
    let r = auth
        .refresh(pb::RefreshRequest {
            refresh_token: b.refresh_token.clone(),
        })
        .await;
    assert_eq!(code(r), Code::Unauthenticated);
    let r = auth
        .logout(bearer(
            &a.access_token,
            pb::LogoutRequest {
                refresh_token: "lmr_unknown".into(),
            },
        ))
        .await;
    assert_eq!(code(r), Code::NotFound);
    let r = auth
        .logout(bearer(&a.access_token, pb::LogoutRequest::default()))
        .await;
    assert_eq!(code(r), Code::InvalidArgument);

    let user = auth
        .update_profile(bearer(
            &a.access_token,
            pb::UpdateProfileRequest {
                display_name: "Ada Lovelace".into(),
            },
        ))
        .await
        .expect("update profile")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(user.display_name, "Ada Lovelace");
    let r = auth
        .update_profile(bearer(&a.access_token, pb::UpdateProfileRequest::default()))
        .await;
    assert_eq!(code(r), Code::InvalidArgument);

    let wrong = auth
        .change_password(bearer(
            &a.access_token,
            pb::ChangePasswordRequest {
                current_password: "not the password".into(),
                new_password: "a brand new password".into(),
            },
        ))
        .await;
    assert_eq!(code(wrong), Code::Unauthenticated);
    let short = auth
        .change_password(bearer(
            &a.access_token,
            pb::ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: "short".into(),
            },
        ))
        .await;
    assert_eq!(code(short), Code::InvalidArgument);
    auth.change_password(bearer(
        &a.access_token,
        pb::ChangePasswordRequest {
            current_password: PASSWORD.into(),
            new_password: "a brand new password".into(),
        },
    ))
    .await
    .expect("change password");
    // Session a (the caller's) lives on; session c is revoked.
    auth.refresh(pb::RefreshRequest {
        refresh_token: a.refresh_token.clone(),
    })
    .await
    .expect("own session survives");
    let r = auth
        .refresh(pb::RefreshRequest {
            refresh_token: c.refresh_token.clone(),
        })
        .await;
    assert_eq!(code(r), Code::Unauthenticated);
    let old = auth
        .login(pb::LoginRequest {
            email: "ada@example.com".into(),
            password: PASSWORD.into(),
        })
        .await;
    assert_eq!(code(old), Code::Unauthenticated);
    auth.login(pb::LoginRequest {
        email: "ada@example.com".into(),
        password: "a brand new password".into(),
    })
    .await
    .expect("new password works");
});

both_backends!(api_keys, |backend| async move {
    let Some(s) = server(backend).await else {
        return;
    };
    let (_, admin) = s.signup("admin@example.com").await;
    let (_, member) = s.signup("member@example.com").await;
    let mut auth = s.auth();
    let created = s.api_key(&member.access_token, "laptop").await;
    let secret = created.secret.clone();
    let key = created.api_key.expect("key");
    assert!(
        secret.starts_with("lmk_") && secret.len() >= 4 + 43,
        "{secret}"
    );
    assert!(secret.starts_with(&key.prefix));
    assert_eq!(key.role_ceiling, Role::Member as i32);

    // Both ways of presenting a key work.
    let me = auth
        .get_me(bearer(&secret, pb::GetMeRequest {}))
        .await
        .expect("key as bearer")
        .into_inner();
    assert_eq!(me.user.expect("user").email, "member@example.com");
    let mut req = tonic::Request::new(pb::GetMeRequest {});
    req.metadata_mut()
        .insert("x-api-key", secret.parse().expect("ascii"));
    auth.get_me(req).await.expect("key as x-api-key");

    let listed = auth
        .list_api_keys(bearer(&member.access_token, pb::ListApiKeysRequest {}))
        .await
        .expect("list")
        .into_inner()
        .api_keys;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].prefix, key.prefix);
    assert!(listed[0].last_used_at.is_some(), "use is recorded");
    assert!(
        !format!("{listed:?}").contains(&secret[12..]),
        "the secret is never listed"
    );

    // A key cannot make keys; a ceiling above the owner's role is refused.
    let r = auth
        .create_api_key(bearer(
            &secret,
            pb::CreateApiKeyRequest {
                name: "x".into(),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(code(r), Code::PermissionDenied);
    let r = auth
        .create_api_key(bearer(
            &member.access_token,
            pb::CreateApiKeyRequest {
                name: "too high".into(),
                role_ceiling: Role::Admin as i32,
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(code(r), Code::InvalidArgument);
    let r = auth
        .create_api_key(bearer(
            &member.access_token,
            pb::CreateApiKeyRequest {
                name: "past".into(),
                expires_at: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(code(r), Code::InvalidArgument);

    // An admin's key is never an admin.
    let admin_key = s.api_key(&admin.access_token, "ops").await.secret;
    let r = auth
        .list_users(bearer(&admin_key, pb::ListUsersRequest::default()))
        .await;
    assert_eq!(code(r), Code::PermissionDenied);

    // Expiry follows the clock.
    let expiring = auth
        .create_api_key(bearer(
            &member.access_token,
            pb::CreateApiKeyRequest {
                name: "one hour".into(),
                expires_at: Some(llmesh_kit::convert::timestamp(
                    s.clock_now() + Duration::hours(1),
                )),
                ..Default::default()
            },
        ))
        .await
        .expect("expiring key")
        .into_inner()
        .secret;
    auth.get_me(bearer(&expiring, pb::GetMeRequest {}))
        .await
        .expect("valid before expiry");
    s.clock().advance(Duration::hours(2));
    let r = auth.get_me(bearer(&expiring, pb::GetMeRequest {})).await;
    assert_eq!(code(r), Code::Unauthenticated);

    // Revocation applies to the very next request. Another member cannot revoke it.
    let (_, other) = s.signup("other@example.com").await;
    let r = auth
        .revoke_api_key(bearer(
            &other.access_token,
            pb::RevokeApiKeyRequest { id: key.id.clone() },
        ))
        .await;
    assert_eq!(code(r), Code::NotFound);
    let fresh = s.login("member@example.com").await.1;
    auth.revoke_api_key(bearer(
        &fresh.access_token,
        pb::RevokeApiKeyRequest { id: key.id.clone() },
    ))
    .await
    .expect("revoke");
    let r = auth.get_me(bearer(&secret, pb::GetMeRequest {})).await;
    assert_eq!(code(r), Code::Unauthenticated);
    let r = auth
        .revoke_api_key(bearer(
            &fresh.access_token,
            pb::RevokeApiKeyRequest { id: "nope".into() },
        ))
        .await;
    assert_eq!(code(r), Code::InvalidArgument);
});

both_backends!(admin_operations, |backend| async move {
    let Some(s) = server(backend).await else {
        return;
    };
    let (_, admin) = s.signup("admin@example.com").await;
    let mut auth = s.auth();
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(s.signup(&format!("user{n}@example.com")).await.0.id);
    }
    let at = admin.access_token.clone();

    // Paging: 6 users, pages of 4 then 2.
    let first = auth
        .list_users(bearer(
            &at,
            pb::ListUsersRequest {
                page: Some(PageRequest {
                    page_size: 4,
                    page_token: String::new(),
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("page 1")
        .into_inner();
    assert_eq!(first.users.len(), 4);
    let token = first.page.expect("page").next_page_token;
    assert!(!token.is_empty());
    let second = auth
        .list_users(bearer(
            &at,
            pb::ListUsersRequest {
                page: Some(PageRequest {
                    page_size: 4,
                    page_token: token,
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(second.users.len(), 2);
    assert!(second.page.expect("page").next_page_token.is_empty());
    let r = auth
        .list_users(bearer(
            &at,
            pb::ListUsersRequest {
                page: Some(PageRequest {
                    page_size: 500,
                    page_token: String::new(),
                }),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(code(r), Code::InvalidArgument);
    let r = auth
        .list_users(bearer(
            &at,
            pb::ListUsersRequest {
                page: Some(PageRequest {
                    page_size: 1,
                    page_token: "garbage".into(),
                }),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(code(r), Code::InvalidArgument);
    let filtered = auth
        .list_users(bearer(
            &at,
            pb::ListUsersRequest {
                email_contains: "USER3".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("filter")
        .into_inner()
        .users;
    assert_eq!(filtered.len(), 1);
    let admins = auth
        .list_users(bearer(
            &at,
            pb::ListUsersRequest {
                role: Role::Admin as i32,
                ..Default::default()
            },
        ))
        .await
        .expect("filter")
        .into_inner()
        .users;
    assert_eq!(admins.len(), 1);

    // Roles.
    let changed = auth
        .set_user_role(bearer(
            &at,
            pb::SetUserRoleRequest {
                user_id: ids[0].clone(),
                role: Role::Viewer as i32,
            },
        ))
        .await
        .expect("set role")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(changed.role, Role::Viewer as i32);
    let r = auth
        .set_user_role(bearer(
            &at,
            pb::SetUserRoleRequest {
                user_id: ids[0].clone(),
                role: 0,
            },
        ))
        .await;
    assert_eq!(code(r), Code::InvalidArgument);
    let r = auth
        .set_user_role(bearer(
            &at,
            pb::SetUserRoleRequest {
                user_id: uuid::Uuid::now_v7().to_string(),
                role: Role::Member as i32,
            },
        ))
        .await;
    assert_eq!(code(r), Code::NotFound);
    let me = auth
        .get_me(bearer(&at, pb::GetMeRequest {}))
        .await
        .expect("me")
        .into_inner()
        .user
        .expect("user");
    for r in [
        code(
            auth.set_user_role(bearer(
                &at,
                pb::SetUserRoleRequest {
                    user_id: me.id.clone(),
                    role: Role::Member as i32,
                },
            ))
            .await,
        ),
        code(
            auth.disable_user(bearer(
                &at,
                pb::DisableUserRequest {
                    user_id: me.id.clone(),
                },
            ))
            .await,
        ),
        code(
            auth.delete_user(bearer(
                &at,
                pb::DeleteUserRequest {
                    user_id: me.id.clone(),
                },
            ))
            .await,
        ),
    ] {
        assert_eq!(r, Code::FailedPrecondition, "the last admin stays");
    }

    // Disabling: keys and refresh stop at once, access tokens run out, sign-in fails.
    let (_, victim) = s.login("user1@example.com").await;
    let key = s.api_key(&victim.access_token, "k").await.secret;
    let disabled = auth
        .disable_user(bearer(
            &at,
            pb::DisableUserRequest {
                user_id: ids[1].clone(),
            },
        ))
        .await
        .expect("disable")
        .into_inner()
        .user
        .expect("user");
    assert!(disabled.disabled);
    assert_eq!(
        code(auth.get_me(bearer(&key, pb::GetMeRequest {})).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(
            auth.refresh(pb::RefreshRequest {
                refresh_token: victim.refresh_token.clone()
            })
            .await
        ),
        Code::Unauthenticated
    );
    assert_eq!(
        code(
            auth.login(pb::LoginRequest {
                email: "user1@example.com".into(),
                password: PASSWORD.into()
            })
            .await
        ),
        Code::Unauthenticated
    );
    auth.get_me(bearer(&victim.access_token, pb::GetMeRequest {}))
        .await
        .expect("access tokens live out their lifetime");
    s.clock().advance(Duration::minutes(16));
    assert_eq!(
        code(
            auth.get_me(bearer(&victim.access_token, pb::GetMeRequest {}))
                .await
        ),
        Code::Unauthenticated
    );
    let (_, admin) = s.login("admin@example.com").await;
    let at = admin.access_token.clone();
    auth.enable_user(bearer(
        &at,
        pb::EnableUserRequest {
            user_id: ids[1].clone(),
        },
    ))
    .await
    .expect("enable");
    s.login("user1@example.com").await;

    // Reset: a one-time password, sessions ended, a change required.
    let (_, before) = s.login("user2@example.com").await;
    let temp = auth
        .reset_password(bearer(
            &at,
            pb::ResetPasswordRequest {
                user_id: ids[2].clone(),
            },
        ))
        .await
        .expect("reset")
        .into_inner()
        .temporary_password;
    assert!(temp.len() >= 16);
    assert_eq!(
        code(
            auth.refresh(pb::RefreshRequest {
                refresh_token: before.refresh_token
            })
            .await
        ),
        Code::Unauthenticated
    );
    let signed_in = auth
        .login(pb::LoginRequest {
            email: "user2@example.com".into(),
            password: temp.clone(),
        })
        .await
        .expect("temporary password works")
        .into_inner();
    assert!(signed_in.user.expect("user").password_change_required);
    auth.change_password(bearer(
        &signed_in.tokens.expect("tokens").access_token,
        pb::ChangePasswordRequest {
            current_password: temp,
            new_password: "my own new password".into(),
        },
    ))
    .await
    .expect("change after reset");

    // Delete.
    let (_, doomed) = s.login("user3@example.com").await;
    auth.delete_user(bearer(
        &at,
        pb::DeleteUserRequest {
            user_id: ids[3].clone(),
        },
    ))
    .await
    .expect("delete");
    assert_eq!(
        code(
            auth.get_me(bearer(&doomed.access_token, pb::GetMeRequest {}))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            auth.delete_user(bearer(
                &at,
                pb::DeleteUserRequest {
                    user_id: ids[3].clone()
                }
            ))
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            auth.delete_user(bearer(
                &at,
                pb::DeleteUserRequest {
                    user_id: "not-a-uuid".into()
                }
            ))
            .await
        ),
        Code::InvalidArgument
    );

    // CreateUser by an admin.
    let created = auth
        .create_user(bearer(
            &at,
            pb::CreateUserRequest {
                email: "made@example.com".into(),
                password: PASSWORD.into(),
                display_name: "Made".into(),
                role: Role::Viewer as i32,
            },
        ))
        .await
        .expect("create user")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(created.role, Role::Viewer as i32);
});

both_backends!(closed_registration, |backend| async move {
    let Some(s) = TestServer::start_with(backend, |c| c.auth.registration = "closed".into()).await
    else {
        return;
    };
    let mut auth = s.auth();
    let r = auth
        .register(pb::RegisterRequest {
            email: "a@example.com".into(),
            password: PASSWORD.into(),
            display_name: String::new(),
        })
        .await;
    assert_eq!(code(r), Code::PermissionDenied);
    assert!(!sign_up_info(&s).await.registration_open);
    let admin = s
        .app()
        .auth
        .as_ref()
        .expect("auth runs here")
        .create_user(
            llmesh_auth::service::NewUser {
                email: "root@example.com".into(),
                password: PASSWORD.into(),
                display_name: String::new(),
            },
            llmesh_kit::Role::Admin,
        )
        .await
        .expect("cli-style admin");
    assert_eq!(admin.role, "admin");
    let (_, tokens) = s.login("root@example.com").await;
    auth.register(bearer(
        &tokens.access_token,
        pb::RegisterRequest {
            email: "a@example.com".into(),
            password: PASSWORD.into(),
            display_name: String::new(),
        },
    ))
    .await
    .expect("an admin may register people");
});

both_backends!(login_throttling, |backend| async move {
    let Some(s) = server(backend).await else {
        return;
    };
    s.signup("ada@example.com").await;
    let mut auth = s.auth();
    let attempt = |password: &str| pb::LoginRequest {
        email: "ada@example.com".into(),
        password: password.into(),
    };
    for _ in 0..5 {
        assert_eq!(
            code(auth.login(attempt("wrong password")).await),
            Code::Unauthenticated
        );
    }
    assert_eq!(
        code(auth.login(attempt("wrong password")).await),
        Code::Unauthenticated
    );
    // Now throttled, even with the right password, and told when to retry.
    let status = auth.login(attempt(PASSWORD)).await.expect_err("throttled");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("2")
    );
    s.clock().advance(Duration::seconds(3));
    auth.login(attempt(PASSWORD))
        .await
        .expect("allowed again after the delay");
});

every_shape!(first_admin_race, |backend| async move {
    let Some(s) = server(backend).await else {
        return;
    };
    let mut tasks = Vec::new();
    for n in 0..8 {
        let mut auth = s.auth();
        tasks.push(tokio::spawn(async move {
            auth.register(pb::RegisterRequest {
                email: format!("racer{n}@example.com"),
                password: PASSWORD.into(),
                display_name: String::new(),
            })
            .await
            .expect("register")
            .into_inner()
            .user
            .expect("user")
            .role
        }));
    }
    let mut admins = 0;
    for t in tasks {
        if t.await.expect("task") == Role::Admin as i32 {
            admins += 1;
        }
    }
    assert_eq!(admins, 1, "exactly one racer becomes admin");
});

both_backends!(signing_keys_rotate, |backend| async move {
    let Some(s) = server(backend).await else {
        return;
    };
    let (_, old) = s.signup("ada@example.com").await;
    let mut auth = s.auth();
    let keys = auth
        .get_public_keys(pb::GetPublicKeysRequest {})
        .await
        .expect("keys")
        .into_inner();
    assert_eq!(keys.keys.len(), 1);
    assert_eq!(keys.keys[0].public_key.len(), 32);
    assert_eq!(keys.issuer, "llmesh");

    let service = s.app().auth.as_ref().expect("auth runs here");
    service.keyring().rotate().await.expect("rotate");
    let keys = auth
        .get_public_keys(pb::GetPublicKeysRequest {})
        .await
        .expect("keys")
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 2);
    assert_eq!(keys.iter().filter(|k| k.retire_at.is_some()).count(), 1);
    auth.get_me(bearer(&old.access_token, pb::GetMeRequest {}))
        .await
        .expect("a token of the previous key stays valid");
    let (_, new) = s.login("ada@example.com").await;
    assert_ne!(
        header_kid(&new.access_token),
        header_kid(&old.access_token),
        "new tokens use the new key"
    );
    s.clock().advance(Duration::minutes(16));
    let r = auth
        .get_me(bearer(&old.access_token, pb::GetMeRequest {}))
        .await;
    assert_eq!(code(r), Code::Unauthenticated);
});

fn header_kid(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().expect("header");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("base64");
    let value: serde_json::Value = serde_json::from_slice(&json).expect("json");
    value["kid"].as_str().expect("kid").to_owned()
}

trait ClockNow {
    fn clock_now(&self) -> chrono::DateTime<chrono::Utc>;
}

impl ClockNow for TestServer {
    fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        use llmesh_kit::Clock;
        self.clock().now()
    }
}
