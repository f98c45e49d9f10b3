//! Who is calling (a principal) and what an RPC requires (an access rule), with the one
//! function that decides between them.

use std::fmt;

use llmesh_proto::common::v1 as pb;

use crate::ApiError;

/// A user's role. Ordered: `Viewer < Member < Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Viewer,
    Member,
    Admin,
}

impl Role {
    /// Returns the name stored in the database and carried in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }

    /// Parses a stored or token role name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Converts from the wire enum; `ROLE_UNSPECIFIED` and unknown values are `None`.
    pub fn from_proto(value: i32) -> Option<Role> {
        match pb::Role::try_from(value).ok()? {
            pb::Role::Viewer => Some(Role::Viewer),
            pb::Role::Member => Some(Role::Member),
            pb::Role::Admin => Some(Role::Admin),
            pb::Role::Unspecified => None,
        }
    }

    /// Converts to the wire enum.
    pub fn to_proto(self) -> pb::Role {
        match self {
            Role::Viewer => pb::Role::Viewer,
            Role::Member => pb::Role::Member,
            Role::Admin => pb::Role::Admin,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialKind {
    /// A signed access token from a login session (`session_id` is its refresh family).
    AccessToken { session_id: String },
    /// An API key, acting as its owner capped by the key's role ceiling.
    ApiKey { key_id: String },
}

/// The authenticated caller of one request, carried from the edge to the last hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub role: Role,
    pub scopes: Vec<String>,
    pub credential: CredentialKind,
    /// True when a peer service presented the service credential and forwards this user.
    pub via_service: bool,
}

impl Principal {
    /// Returns the API key id when the request came through an API key.
    pub fn api_key_id(&self) -> Option<&str> {
        match &self.credential {
            CredentialKind::ApiKey { key_id } => Some(key_id),
            CredentialKind::AccessToken { .. } => None,
        }
    }

    /// Returns the login session when the request came with an access token.
    pub fn session_id(&self) -> Option<&str> {
        match &self.credential {
            CredentialKind::AccessToken { session_id } => Some(session_id),
            CredentialKind::ApiKey { .. } => None,
        }
    }

    /// True for an admin acting through an interactive session (not an API key).
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin && self.api_key_id().is_none()
    }
}

/// Who the caller of a request is, as the authentication layer found it.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub principal: Option<Principal>,
    /// True when the request carried a valid service credential.
    pub service: bool,
}

/// What an RPC requires. Each service declares one rule per RPC in a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, signed in or not.
    Public,
    /// Any signed-in user, including viewers and API keys.
    Viewer,
    /// A member or admin (viewers are read-only), including API keys with such a role.
    Member,
    /// A member or admin through an interactive session: no API keys (key management,
    /// password and profile changes).
    MemberSession,
    /// Any signed-in user through an interactive session (no API keys).
    ViewerSession,
    /// An admin through an interactive session; API keys never qualify.
    Admin,
    /// Another llmesh service presenting the service credential.
    Service,
}

/// Decides whether `caller` may make a call that requires `access`.
pub fn authorize(access: Access, caller: &Caller) -> Result<(), ApiError> {
    let principal = match access {
        Access::Public => return Ok(()),
        Access::Service => {
            return if caller.service {
                Ok(())
            } else if caller.principal.is_some() {
                Err(ApiError::permission_denied(
                    "this method is internal: only llmesh services may call it",
                ))
            } else {
                Err(ApiError::unauthenticated("missing service credential"))
            };
        }
        _ => caller.principal.as_ref().ok_or_else(|| {
            ApiError::unauthenticated(
                "sign in first: send `authorization: Bearer <access token or API key>`",
            )
        })?,
    };
    let via_key = principal.api_key_id().is_some();
    let allowed = match access {
        Access::Viewer => true,
        Access::ViewerSession => !via_key,
        Access::Member => principal.role >= Role::Member,
        Access::MemberSession => principal.role >= Role::Member && !via_key,
        Access::Admin => principal.role == Role::Admin && !via_key,
        Access::Public | Access::Service => true,
    };
    if allowed {
        return Ok(());
    }
    let why = match access {
        Access::Admin if via_key => "API keys cannot call admin methods",
        Access::Admin => "this method needs the admin role",
        Access::MemberSession | Access::ViewerSession if via_key => {
            "API keys cannot call this method; sign in with a password"
        }
        _ if principal.role == Role::Viewer => "viewers have read-only access",
        _ => "not allowed",
    };
    Err(ApiError::permission_denied(why))
}

/// The access rules of one service: full method path → rule.
pub type AccessTable = &'static [(&'static str, Access)];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    fn caller(role: Role, key: bool) -> Caller {
        Caller {
            principal: Some(Principal {
                user_id: "u".into(),
                role,
                scopes: vec![],
                credential: if key {
                    CredentialKind::ApiKey { key_id: "k".into() }
                } else {
                    CredentialKind::AccessToken {
                        session_id: "s".into(),
                    }
                },
                via_service: false,
            }),
            service: false,
        }
    }

    fn code(access: Access, caller: &Caller) -> Option<ErrorCode> {
        authorize(access, caller).err().map(|e| e.code)
    }

    #[test]
    fn the_rules() {
        let anon = Caller::default();
        assert_eq!(code(Access::Public, &anon), None);
        assert_eq!(
            code(Access::Viewer, &anon),
            Some(ErrorCode::Unauthenticated)
        );
        assert_eq!(code(Access::Viewer, &caller(Role::Viewer, false)), None);
        assert_eq!(
            code(Access::Member, &caller(Role::Viewer, false)),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(code(Access::Member, &caller(Role::Member, true)), None);
        assert_eq!(
            code(Access::MemberSession, &caller(Role::Member, true)),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(code(Access::Admin, &caller(Role::Admin, false)), None);
        assert_eq!(
            code(Access::Admin, &caller(Role::Admin, true)),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(
            code(Access::Service, &caller(Role::Admin, false)),
            Some(ErrorCode::PermissionDenied)
        );
        let service = Caller {
            principal: None,
            service: true,
        };
        assert_eq!(code(Access::Service, &service), None);
        assert_eq!(
            code(Access::Service, &anon),
            Some(ErrorCode::Unauthenticated)
        );
    }
}
