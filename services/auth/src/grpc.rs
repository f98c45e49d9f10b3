//! The gRPC adapter of auth: validate, take the caller, convert, call the domain, map the
//! error. The access rule of every RPC is declared once in [`ACCESS`].

use std::sync::Arc;

use base64::Engine;
use llmesh_kit::authn::{caller, principal};
use llmesh_kit::convert::{from_timestamp, opt_timestamp, timestamp};
use llmesh_kit::{Access, ApiError, Role, validate};
use llmesh_proto::auth::v1 as pb;
use llmesh_proto::common::v1::PageResponse;
use tonic::{Request, Response, Status};

use crate::service::{AuthService, NewApiKey, NewUser};
use crate::store::{UserFilter, api_key, user};

/// The fully-qualified name of the service, for health and registration.
pub const SERVICE_NAME: &str = "llmesh.auth.v1.AuthService";

/// Who may call each auth RPC.
pub const ACCESS: &[(&str, Access)] = &[
    ("/llmesh.auth.v1.AuthService/Register", Access::Public),
    ("/llmesh.auth.v1.AuthService/GetSignUpInfo", Access::Public),
    ("/llmesh.auth.v1.AuthService/Login", Access::Public),
    ("/llmesh.auth.v1.AuthService/Refresh", Access::Public),
    ("/llmesh.auth.v1.AuthService/GetPublicKeys", Access::Public),
    ("/llmesh.auth.v1.AuthService/Logout", Access::ViewerSession),
    ("/llmesh.auth.v1.AuthService/GetMe", Access::Viewer),
    (
        "/llmesh.auth.v1.AuthService/UpdateProfile",
        Access::ViewerSession,
    ),
    (
        "/llmesh.auth.v1.AuthService/ChangePassword",
        Access::ViewerSession,
    ),
    (
        "/llmesh.auth.v1.AuthService/CreateApiKey",
        Access::MemberSession,
    ),
    ("/llmesh.auth.v1.AuthService/ListApiKeys", Access::Viewer),
    (
        "/llmesh.auth.v1.AuthService/RevokeApiKey",
        Access::ViewerSession,
    ),
    ("/llmesh.auth.v1.AuthService/ListUsers", Access::Admin),
    ("/llmesh.auth.v1.AuthService/CreateUser", Access::Admin),
    ("/llmesh.auth.v1.AuthService/SetUserRole", Access::Admin),
    ("/llmesh.auth.v1.AuthService/DisableUser", Access::Admin),
    ("/llmesh.auth.v1.AuthService/EnableUser", Access::Admin),
    ("/llmesh.auth.v1.AuthService/DeleteUser", Access::Admin),
    ("/llmesh.auth.v1.AuthService/ResetPassword", Access::Admin),
    ("/llmesh.auth.v1.AuthService/ResolveApiKey", Access::Service),
];

/// Serves [`AuthService`] over gRPC.
pub struct GrpcAuthAdapter {
    service: Arc<AuthService>,
}

impl GrpcAuthAdapter {
    pub fn new(service: Arc<AuthService>) -> Self {
        GrpcAuthAdapter { service }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn ok<T>(value: T) -> Reply<T> {
    Ok(Response::new(value))
}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for GrpcAuthAdapter {
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Reply<pb::RegisterResponse> {
        let actor = caller(&req).principal;
        let r = req.into_inner();
        let new = NewUser {
            email: r.email,
            password: r.password,
            display_name: r.display_name,
        };
        let user = self.service.register(actor.as_ref(), new).await?;
        ok(pb::RegisterResponse {
            user: Some(user_pb(&user)),
        })
    }

    async fn get_sign_up_info(
        &self,
        _req: Request<pb::GetSignUpInfoRequest>,
    ) -> Reply<pb::GetSignUpInfoResponse> {
        let (registration_open, first_user_becomes_admin) = self.service.sign_up_info().await?;
        ok(pb::GetSignUpInfoResponse {
            registration_open,
            first_user_becomes_admin,
        })
    }

    async fn login(&self, req: Request<pb::LoginRequest>) -> Reply<pb::LoginResponse> {
        let client = req
            .remote_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|| "unknown".into());
        let r = req.into_inner();
        let (user, tokens) = self.service.login(&r.email, &r.password, &client).await?;
        ok(pb::LoginResponse {
            user: Some(user_pb(&user)),
            tokens: Some(tokens_pb(tokens)),
        })
    }

    async fn refresh(&self, req: Request<pb::RefreshRequest>) -> Reply<pb::RefreshResponse> {
        let tokens = self
            .service
            .refresh(&req.into_inner().refresh_token)
            .await?;
        ok(pb::RefreshResponse {
            tokens: Some(tokens_pb(tokens)),
        })
    }

    async fn logout(&self, req: Request<pb::LogoutRequest>) -> Reply<pb::LogoutResponse> {
        let p = principal(&req)?;
        let token = req.into_inner().refresh_token;
        if token.is_empty() {
            return Err(ApiError::invalid("refresh_token is required").into());
        }
        self.service.logout(&p, &token).await?;
        ok(pb::LogoutResponse {})
    }

    async fn get_me(&self, req: Request<pb::GetMeRequest>) -> Reply<pb::GetMeResponse> {
        let p = principal(&req)?;
        let user = self.service.me(&p).await?;
        ok(pb::GetMeResponse {
            user: Some(user_pb(&user)),
        })
    }

    async fn update_profile(
        &self,
        req: Request<pb::UpdateProfileRequest>,
    ) -> Reply<pb::UpdateProfileResponse> {
        let p = principal(&req)?;
        let user = self
            .service
            .update_profile(&p, &req.into_inner().display_name)
            .await?;
        ok(pb::UpdateProfileResponse {
            user: Some(user_pb(&user)),
        })
    }

    async fn change_password(
        &self,
        req: Request<pb::ChangePasswordRequest>,
    ) -> Reply<pb::ChangePasswordResponse> {
        let p = principal(&req)?;
        let r = req.into_inner();
        self.service
            .change_password(&p, &r.current_password, &r.new_password)
            .await?;
        ok(pb::ChangePasswordResponse {})
    }

    async fn create_api_key(
        &self,
        req: Request<pb::CreateApiKeyRequest>,
    ) -> Reply<pb::CreateApiKeyResponse> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let expires_at = r
            .expires_at
            .as_ref()
            .map(|t| from_timestamp("expires_at", t))
            .transpose()?;
        let role_ceiling = optional_role("role_ceiling", r.role_ceiling)?;
        let (key, secret) = self
            .service
            .create_api_key(
                &p,
                NewApiKey {
                    name: r.name,
                    expires_at,
                    role_ceiling,
                },
            )
            .await?;
        ok(pb::CreateApiKeyResponse {
            api_key: Some(api_key_pb(&key)),
            secret,
        })
    }

    async fn list_api_keys(
        &self,
        req: Request<pb::ListApiKeysRequest>,
    ) -> Reply<pb::ListApiKeysResponse> {
        let p = principal(&req)?;
        let keys = self.service.list_api_keys(&p).await?;
        ok(pb::ListApiKeysResponse {
            api_keys: keys.iter().map(api_key_pb).collect(),
        })
    }

    async fn revoke_api_key(
        &self,
        req: Request<pb::RevokeApiKeyRequest>,
    ) -> Reply<pb::RevokeApiKeyResponse> {
        let p = principal(&req)?;
        let id = validate::id("id", &req.into_inner().id)?;
        self.service.revoke_api_key(&p, &id.to_string()).await?;
        ok(pb::RevokeApiKeyResponse {})
    }

    async fn list_users(&self, req: Request<pb::ListUsersRequest>) -> Reply<pb::ListUsersResponse> {
        let r = req.into_inner();
        let page = r.page.unwrap_or_default();
        let limit = validate::page_size(page.page_size, 50, 200)?;
        let after_id = decode_cursor(&page.page_token)?;
        let role = optional_role("role", r.role)?;
        let email_contains = Some(r.email_contains.trim().to_owned()).filter(|s| !s.is_empty());
        if email_contains.as_ref().is_some_and(|s| s.len() > 254) {
            return Err(ApiError::invalid("email_contains must be at most 254 bytes").into());
        }
        let filter = UserFilter {
            email_contains,
            role: role.map(|r| r.as_str().to_owned()),
            disabled: r.disabled,
            after_id,
            // One more than asked tells whether another page follows.
            limit: limit + 1,
        };
        let mut users = self.service.list_users(&filter).await?;
        let more = users.len() as u64 > limit;
        users.truncate(limit as usize);
        let next_page_token = match (more, users.last()) {
            (true, Some(last)) => {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last.id.as_bytes())
            }
            _ => String::new(),
        };
        ok(pb::ListUsersResponse {
            users: users.iter().map(user_pb).collect(),
            page: Some(PageResponse { next_page_token }),
        })
    }

    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Reply<pb::CreateUserResponse> {
        let r = req.into_inner();
        let role = optional_role("role", r.role)?.unwrap_or(Role::Member);
        let user = self
            .service
            .create_user(
                NewUser {
                    email: r.email,
                    password: r.password,
                    display_name: r.display_name,
                },
                role,
            )
            .await?;
        ok(pb::CreateUserResponse {
            user: Some(user_pb(&user)),
        })
    }

    async fn set_user_role(
        &self,
        req: Request<pb::SetUserRoleRequest>,
    ) -> Reply<pb::SetUserRoleResponse> {
        let r = req.into_inner();
        let id = validate::id("user_id", &r.user_id)?;
        let role =
            optional_role("role", r.role)?.ok_or_else(|| ApiError::invalid("role is required"))?;
        let user = self.service.set_role(&id.to_string(), role).await?;
        ok(pb::SetUserRoleResponse {
            user: Some(user_pb(&user)),
        })
    }

    async fn disable_user(
        &self,
        req: Request<pb::DisableUserRequest>,
    ) -> Reply<pb::DisableUserResponse> {
        let id = validate::id("user_id", &req.into_inner().user_id)?;
        let user = self.service.set_disabled(&id.to_string(), true).await?;
        ok(pb::DisableUserResponse {
            user: Some(user_pb(&user)),
        })
    }

    async fn enable_user(
        &self,
        req: Request<pb::EnableUserRequest>,
    ) -> Reply<pb::EnableUserResponse> {
        let id = validate::id("user_id", &req.into_inner().user_id)?;
        let user = self.service.set_disabled(&id.to_string(), false).await?;
        ok(pb::EnableUserResponse {
            user: Some(user_pb(&user)),
        })
    }

    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> Reply<pb::DeleteUserResponse> {
        let id = validate::id("user_id", &req.into_inner().user_id)?;
        self.service.delete_user(&id.to_string()).await?;
        ok(pb::DeleteUserResponse {})
    }

    async fn reset_password(
        &self,
        req: Request<pb::ResetPasswordRequest>,
    ) -> Reply<pb::ResetPasswordResponse> {
        let id = validate::id("user_id", &req.into_inner().user_id)?;
        let temporary_password = self.service.reset_password(&id.to_string()).await?;
        ok(pb::ResetPasswordResponse { temporary_password })
    }

    async fn get_public_keys(
        &self,
        _req: Request<pb::GetPublicKeysRequest>,
    ) -> Reply<pb::GetPublicKeysResponse> {
        let set = self.service.keyring().key_set();
        let mut keys: Vec<pb::PublicKey> = set
            .keys
            .values()
            .map(|k| pb::PublicKey {
                key_id: k.key_id.clone(),
                algorithm: "EdDSA".into(),
                public_key: k.public_key.to_vec(),
                retire_at: opt_timestamp(k.retire_at),
            })
            .collect();
        keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        ok(pb::GetPublicKeysResponse {
            keys,
            issuer: set.issuer.clone(),
        })
    }

    async fn resolve_api_key(
        &self,
        req: Request<pb::ResolveApiKeyRequest>,
    ) -> Reply<pb::ResolveApiKeyResponse> {
        let p = self
            .service
            .resolve_api_key(&req.into_inner().secret)
            .await?;
        ok(pb::ResolveApiKeyResponse {
            api_key_id: p.api_key_id().unwrap_or_default().to_owned(),
            user_id: p.user_id,
            role: p.role.to_proto() as i32,
            scopes: p.scopes,
        })
    }
}

fn optional_role(field: &str, value: i32) -> Result<Option<Role>, ApiError> {
    if value == 0 {
        return Ok(None);
    }
    Role::from_proto(value)
        .map(Some)
        .ok_or_else(|| ApiError::invalid(format!("{field} {value} is not a known role")))
}

fn decode_cursor(token: &str) -> Result<Option<String>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|s| uuid::Uuid::parse_str(s).is_ok())
        .map(Some)
        .ok_or_else(|| ApiError::invalid("page_token is not one this server issued"))
}

fn user_pb(u: &user::Model) -> pb::User {
    pb::User {
        id: u.id.clone(),
        email: u.email.clone(),
        display_name: u.display_name.clone(),
        role: Role::parse(&u.role).map_or(0, |r| r.to_proto() as i32),
        disabled: u.disabled,
        password_change_required: u.password_change_required,
        created_at: Some(timestamp(u.created_at)),
        updated_at: Some(timestamp(u.updated_at)),
    }
}

fn api_key_pb(k: &api_key::Model) -> pb::ApiKey {
    pb::ApiKey {
        id: k.id.clone(),
        name: k.name.clone(),
        prefix: k.prefix.clone(),
        role_ceiling: Role::parse(&k.role_ceiling).map_or(0, |r| r.to_proto() as i32),
        created_at: Some(timestamp(k.created_at)),
        last_used_at: opt_timestamp(k.last_used_at),
        expires_at: opt_timestamp(k.expires_at),
        revoked: k.revoked_at.is_some(),
    }
}

fn tokens_pb(t: crate::service::Tokens) -> pb::TokenPair {
    pb::TokenPair {
        access_token: t.access_token,
        access_expires_at: Some(timestamp(t.access_expires_at)),
        refresh_token: t.refresh_token,
        refresh_expires_at: Some(timestamp(t.refresh_expires_at)),
    }
}
