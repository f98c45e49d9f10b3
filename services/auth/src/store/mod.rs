//! Persistence of users, sessions, API keys and signing keys through sea-orm; the same
//! code runs on SQLite and Postgres.

pub mod entities;

use chrono::{DateTime, Utc};
use llmesh_kit::outbox::Outbox;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

pub use entities::{api_key, refresh_token, signing_key, user};

/// Filters of a user listing.
#[derive(Debug, Default, Clone)]
pub struct UserFilter {
    pub email_contains: Option<String>,
    pub role: Option<String>,
    pub disabled: Option<bool>,
    /// Only users whose id sorts after this one (ids are time-ordered UUIDv7).
    pub after_id: Option<String>,
    pub limit: u64,
}

/// The auth tables.
#[derive(Clone)]
pub struct AuthStore {
    db: DatabaseConnection,
}

impl AuthStore {
    pub fn new(db: DatabaseConnection) -> Self {
        AuthStore { db }
    }

    /// Inserts a user and, in the same transaction, tries to claim the one-time first-admin
    /// row. The claim's primary key lets exactly one of any number of racing first
    /// registrations win, whatever the backend. Returns the stored user.
    pub async fn insert_user(
        &self,
        new: user::Model,
        try_first_admin: bool,
    ) -> Result<user::Model, DbErr> {
        let txn = self.db.begin().await?;
        let mut model = new.clone();
        user::ActiveModel::from(new).insert(&txn).await?;
        if try_first_admin {
            let backend = txn.get_database_backend();
            let stmt = sea_orm::Statement::from_sql_and_values(
                backend,
                match backend {
                    sea_orm::DatabaseBackend::Postgres => {
                        "INSERT INTO first_admin (id, user_id, claimed_at) VALUES (1, $1, $2) \
                         ON CONFLICT (id) DO NOTHING"
                    }
                    _ => {
                        "INSERT INTO first_admin (id, user_id, claimed_at) VALUES (1, ?, ?) \
                         ON CONFLICT (id) DO NOTHING"
                    }
                },
                [model.id.clone().into(), model.created_at.into()],
            );
            let claimed = txn.execute_raw(stmt).await?.rows_affected() == 1;
            if claimed {
                user::Entity::update_many()
                    .col_expr(user::Column::Role, Expr::value("admin"))
                    .filter(user::Column::Id.eq(model.id.clone()))
                    .exec(&txn)
                    .await?;
                model.role = "admin".into();
            }
        }
        txn.commit().await?;
        Ok(model)
    }

    /// Whether some account has taken the one-time first-admin claim.
    pub async fn first_admin_claimed(&self) -> Result<bool, DbErr> {
        let stmt = sea_orm::Statement::from_string(
            self.db.get_database_backend(),
            "SELECT user_id FROM first_admin WHERE id = 1",
        );
        Ok(self.db.query_one_raw(stmt).await?.is_some())
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<user::Model>, DbErr> {
        user::Entity::find()
            .filter(user::Column::Email.eq(email))
            .one(&self.db)
            .await
    }

    pub async fn user(&self, id: &str) -> Result<Option<user::Model>, DbErr> {
        user::Entity::find_by_id(id.to_owned()).one(&self.db).await
    }

    pub async fn update_user(&self, model: user::ActiveModel) -> Result<user::Model, DbErr> {
        model.update(&self.db).await
    }

    /// Deletes a user; sessions and keys go with them (foreign keys cascade, and are
    /// deleted explicitly too for databases that do not enforce them).
    /// Deletes a user with their sessions and keys, and leaves the notice for billing in
    /// the outbox in the same transaction.
    pub async fn delete_user(&self, id: &str, now: DateTime<Utc>) -> Result<bool, DbErr> {
        let txn = self.db.begin().await?;
        refresh_token::Entity::delete_many()
            .filter(refresh_token::Column::UserId.eq(id))
            .exec(&txn)
            .await?;
        api_key::Entity::delete_many()
            .filter(api_key::Column::UserId.eq(id))
            .exec(&txn)
            .await?;
        let deleted = user::Entity::delete_by_id(id.to_owned())
            .exec(&txn)
            .await?
            .rows_affected
            == 1;
        if deleted {
            Outbox::add(&txn, crate::service::USER_DELETED, id, now).await?;
        }
        txn.commit().await?;
        Ok(deleted)
    }

    pub async fn list_users(&self, filter: &UserFilter) -> Result<Vec<user::Model>, DbErr> {
        let mut query = user::Entity::find().order_by_asc(user::Column::Id);
        if let Some(text) = &filter.email_contains {
            query = query.filter(user::Column::Email.contains(text.to_lowercase()));
        }
        if let Some(role) = &filter.role {
            query = query.filter(user::Column::Role.eq(role.clone()));
        }
        if let Some(disabled) = filter.disabled {
            query = query.filter(user::Column::Disabled.eq(disabled));
        }
        if let Some(after) = &filter.after_id {
            query = query.filter(user::Column::Id.gt(after.clone()));
        }
        query.limit(filter.limit).all(&self.db).await
    }

    pub async fn count_users(&self) -> Result<u64, DbErr> {
        user::Entity::find().count(&self.db).await
    }

    pub async fn count_enabled_admins(&self) -> Result<u64, DbErr> {
        user::Entity::find()
            .filter(user::Column::Role.eq("admin"))
            .filter(user::Column::Disabled.eq(false))
            .count(&self.db)
            .await
    }

    pub async fn insert_refresh_token(&self, token: refresh_token::Model) -> Result<(), DbErr> {
        refresh_token::ActiveModel::from(token)
            .insert(&self.db)
            .await?;
        Ok(())
    }

    pub async fn refresh_token_by_hash(
        &self,
        hash: &str,
    ) -> Result<Option<refresh_token::Model>, DbErr> {
        refresh_token::Entity::find()
            .filter(refresh_token::Column::TokenHash.eq(hash))
            .one(&self.db)
            .await
    }

    /// Marks a refresh token used and stores its successor, atomically. Returns false when
    /// the token was already used or revoked (a concurrent use counts as reuse).
    pub async fn rotate_refresh_token(
        &self,
        old_id: &str,
        now: DateTime<Utc>,
        next: refresh_token::Model,
    ) -> Result<bool, DbErr> {
        let txn = self.db.begin().await?;
        let updated = refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::RotatedAt, Expr::value(now))
            .filter(refresh_token::Column::Id.eq(old_id))
            .filter(refresh_token::Column::RotatedAt.is_null())
            .filter(refresh_token::Column::RevokedAt.is_null())
            .exec(&txn)
            .await?
            .rows_affected;
        if updated != 1 {
            txn.rollback().await?;
            return Ok(false);
        }
        refresh_token::ActiveModel::from(next).insert(&txn).await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Revokes every token of one session.
    pub async fn revoke_family(&self, family_id: &str, now: DateTime<Utc>) -> Result<u64, DbErr> {
        Ok(refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::RevokedAt, Expr::value(now))
            .filter(refresh_token::Column::FamilyId.eq(family_id))
            .filter(refresh_token::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?
            .rows_affected)
    }

    /// Revokes every session of a user except `keep` (the caller's own, when changing a
    /// password).
    pub async fn revoke_user_sessions(
        &self,
        user_id: &str,
        keep: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<u64, DbErr> {
        let mut update = refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::RevokedAt, Expr::value(now))
            .filter(refresh_token::Column::UserId.eq(user_id))
            .filter(refresh_token::Column::RevokedAt.is_null());
        if let Some(family) = keep {
            update = update.filter(refresh_token::Column::FamilyId.ne(family));
        }
        Ok(update.exec(&self.db).await?.rows_affected)
    }

    pub async fn insert_api_key(&self, key: api_key::Model) -> Result<(), DbErr> {
        api_key::ActiveModel::from(key).insert(&self.db).await?;
        Ok(())
    }

    pub async fn api_key_by_hash(&self, hash: &str) -> Result<Option<api_key::Model>, DbErr> {
        api_key::Entity::find()
            .filter(api_key::Column::SecretHash.eq(hash))
            .one(&self.db)
            .await
    }

    pub async fn api_keys_of(&self, user_id: &str) -> Result<Vec<api_key::Model>, DbErr> {
        api_key::Entity::find()
            .filter(api_key::Column::UserId.eq(user_id))
            .order_by_asc(api_key::Column::Id)
            .all(&self.db)
            .await
    }

    /// Revokes one of a user's keys; false when the user has no such live key.
    pub async fn revoke_api_key(
        &self,
        user_id: &str,
        key_id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, DbErr> {
        Ok(api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Expr::value(now))
            .filter(api_key::Column::Id.eq(key_id))
            .filter(api_key::Column::UserId.eq(user_id))
            .filter(api_key::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?
            .rows_affected
            == 1)
    }

    pub async fn touch_api_key(&self, key_id: &str, now: DateTime<Utc>) -> Result<(), DbErr> {
        api_key::Entity::update_many()
            .col_expr(api_key::Column::LastUsedAt, Expr::value(now))
            .filter(api_key::Column::Id.eq(key_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    pub async fn signing_keys(&self) -> Result<Vec<signing_key::Model>, DbErr> {
        signing_key::Entity::find()
            .order_by_asc(signing_key::Column::CreatedAt)
            .all(&self.db)
            .await
    }

    /// Makes `key` the current signing key; every other current key retires at `retire_at`.
    pub async fn install_signing_key(
        &self,
        key: signing_key::Model,
        retire_at: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        let txn = self.db.begin().await?;
        signing_key::Entity::update_many()
            .col_expr(signing_key::Column::RetireAt, Expr::value(retire_at))
            .filter(signing_key::Column::RetireAt.is_null())
            .filter(signing_key::Column::Id.ne(key.id.clone()))
            .exec(&txn)
            .await?;
        signing_key::Entity::insert(signing_key::ActiveModel::from(key))
            .on_conflict(
                OnConflict::column(signing_key::Column::Id)
                    .update_column(signing_key::Column::RetireAt)
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }
}
