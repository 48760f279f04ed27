//! `slapos master user|token ...`: the master's accounts, written directly
//! to its database (SQLite file or PostgreSQL), so they work whether or not
//! the master runs.

use anyhow::{Context, Result};
use slapos_master::{auth, MasterError};
use slapos_store::queries as q;
use slapos_store::{Store, StoreOptions};

use crate::config::SlaposConfig;
use crate::{MasterAction, MasterDb, TokenAction, UserAction};

pub(crate) async fn open(db: &MasterDb) -> Result<Store> {
    let uri = match &db.database_uri {
        Some(uri) => uri.clone(),
        None => {
            let path = db.cfg.as_ref().context(
                "no database: pass --cfg FILE (its [slapmaster] database_uri) or --database-uri",
            )?;
            SlaposConfig::load(path)?
                .first(&[("slapmaster", "database_uri")])
                .with_context(|| format!("{} has no [slapmaster] database_uri", path.display()))?
        }
    };
    let shown = uri.clone();
    tokio::task::spawn_blocking(move || Store::open(&uri, &StoreOptions::default()))
        .await?
        .with_context(|| format!("cannot open the database {shown}"))
}

fn micros_to_text(micros: i64) -> String {
    format!("{}Z", slapos_core::format_utc_micros(micros))
}

pub async fn run(action: MasterAction) -> Result<i32> {
    match action {
        MasterAction::PriceList { action } => crate::cmd::billing::price_list(action).await?,
        MasterAction::Invoice { action } => crate::cmd::billing::master_invoice(action).await?,
        MasterAction::Revenue { from, to, json, db } => {
            crate::cmd::billing::revenue(from, to, json, db).await?
        }
        MasterAction::User {
            action: UserAction::Add { name, label, db },
        } => {
            let store = open(&db).await?;
            let token = store
                .write(move |db| auth::add_user(db, &name, &label))
                .await?;
            eprintln!("User created. Its API token (shown only this once):");
            println!("{token}");
        }
        MasterAction::Token {
            action: TokenAction::Add { user, label, db },
        } => {
            let store = open(&db).await?;
            let (id, token) = store
                .write(move |db| auth::add_token(db, &user, &label))
                .await?;
            eprintln!("Token {id} created (shown only this once):");
            println!("{token}");
        }
        MasterAction::Token {
            action: TokenAction::Revoke { id, db },
        } => {
            let store = open(&db).await?;
            store.write(move |db| auth::revoke_token(db, id)).await?;
            println!("Token {id} revoked");
        }
        MasterAction::Token {
            action: TokenAction::List { user, json, db },
        } => {
            let store = open(&db).await?;
            let tokens = store
                .read(move |db| Ok::<_, MasterError>(q::list_tokens(db, user.as_deref())?))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                println!(
                    "{:<6} {:<20} {:<20} {:<21} revoked",
                    "id", "user", "label", "created"
                );
                for t in tokens {
                    println!(
                        "{:<6} {:<20} {:<20} {:<21} {}",
                        t.id,
                        t.user,
                        t.label,
                        micros_to_text(t.created_at),
                        t.revoked_at
                            .map(micros_to_text)
                            .unwrap_or_else(|| "-".into())
                    );
                }
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::micros_to_text(0), "1970-01-01 00:00:00Z");
        assert_eq!(
            super::micros_to_text(1_709_210_096_000_000),
            "2024-02-29 12:34:56Z"
        );
    }
}
