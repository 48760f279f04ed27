//! `slapos master user|token|ca|computer|certificate ...`: the master's
//! accounts and client certificates, written directly to its database
//! (SQLite file or PostgreSQL), so they work whether or not the master runs.

use anyhow::{Context, Result};
use slapos_master::pki::{self, TlsFiles};
use slapos_master::{auth, MasterError};
use slapos_store::queries as q;
use slapos_store::{Store, StoreOptions};

use crate::config::SlaposConfig;
use crate::{
    CaAction, CertificateAction, ComputerAction, IssueAction, MasterAction, MasterDb, TokenAction,
    UserAction,
};

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

/// The TLS files of the configuration, the authority created if missing.
async fn authority(cfg: Option<&std::path::Path>) -> Result<TlsFiles> {
    let path = cfg.context(
        "certificates need the master's configuration: pass --cfg FILE \
         (its [slapmaster] ssl_cert_file, ssl_key_file, ca_cert_file, ca_key_file)",
    )?;
    let config = SlaposConfig::load(path)?;
    let files = config.master_tls()?.with_context(|| {
        format!(
            "{} does not enable HTTPS: set [slapmaster] ssl_cert_file, ssl_key_file, \
             ca_cert_file and ca_key_file",
            path.display()
        )
    })?;
    let hosts: Vec<String> = config.get("slapmaster", "host").into_iter().collect();
    let ensured = files.clone();
    tokio::task::spawn_blocking(move || pki::ensure(&ensured, &hosts)).await??;
    Ok(files)
}

/// What a client certificate is bound to.
#[derive(Debug, Clone, Copy)]
enum Bound {
    Computer,
    User,
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Bound::Computer => "computer",
            Bound::User => "user",
        })
    }
}

/// Issues a certificate for a computer or a user, registers it, writes it.
async fn issue(
    owner_kind: Bound,
    name: String,
    out_dir: std::path::PathBuf,
    days: i64,
    db: MasterDb,
) -> Result<()> {
    let key = out_dir.join("key.pem");
    anyhow::ensure!(
        !key.exists(),
        "{} exists: choose another --out-dir (a key is never overwritten)",
        key.display()
    );
    let files = authority(db.cfg.as_deref()).await?;
    let store = open(&db).await?;
    let owner = match owner_kind {
        Bound::Computer => {
            slapos_core::validate_reference("computer reference", &name)
                .map_err(|e| anyhow::anyhow!(e))?;
            q::CertificateOwner::Computer {
                computer: name.clone(),
            }
        }
        Bound::User => {
            let user_name = name.clone();
            let user = store
                .read(move |db| Ok::<_, MasterError>(q::user_by_name(db, &user_name)?))
                .await?
                .with_context(|| {
                    format!("No user named {name:?} (create it with 'slapos master user add')")
                })?;
            q::CertificateOwner::User {
                user_id: user.id,
                user: user.name,
            }
        }
    };
    let (f, common_name) = (files.clone(), name.clone());
    let issued =
        tokio::task::spawn_blocking(move || pki::issue_client(&f, &common_name, days)).await??;
    let (fingerprint, serial, not_after) = (
        issued.fingerprint.clone(),
        issued.serial.clone(),
        issued.not_after,
    );
    store
        .write(move |db| {
            Ok::<_, MasterError>(q::insert_certificate(
                db,
                &fingerprint,
                &owner,
                &serial,
                not_after,
                slapos_core::now_micros(),
            )?)
        })
        .await?;
    let (cert, key) = pki::write_issued(&issued, &out_dir)?;
    let ca = out_dir.join("ca.pem");
    std::fs::copy(&files.ca_cert, &ca)
        .with_context(|| format!("cannot copy the authority to {}", ca.display()))?;
    eprintln!(
        "Certificate for {owner_kind} {name:?} issued (valid until {}):\n  certificate {}\n  key         {}\n  authority   {}",
        micros_to_text(issued.not_after),
        cert.display(),
        key.display(),
        ca.display()
    );
    println!("{}", issued.fingerprint);
    Ok(())
}

pub async fn run(action: MasterAction) -> Result<i32> {
    match action {
        MasterAction::PriceList { action } => crate::cmd::billing::price_list(action).await?,
        MasterAction::Invoice { action } => crate::cmd::billing::master_invoice(action).await?,
        MasterAction::Revenue { from, to, json, db } => {
            crate::cmd::billing::revenue(from, to, json, db).await?
        }
        MasterAction::Ca {
            action: CaAction::Init { cfg },
        } => {
            let config = SlaposConfig::load(&cfg)?;
            let files = config.master_tls()?.with_context(|| {
                format!(
                    "{} does not enable HTTPS: set [slapmaster] ssl_cert_file, ssl_key_file, \
                     ca_cert_file and ca_key_file",
                    cfg.display()
                )
            })?;
            let hosts: Vec<String> = config.get("slapmaster", "host").into_iter().collect();
            let f = files.clone();
            let created = tokio::task::spawn_blocking(move || pki::ensure(&f, &hosts)).await??;
            for (made, what, path) in [
                (created.ca, "authority", &files.ca_cert),
                (created.server, "server certificate", &files.cert),
            ] {
                println!(
                    "{what}: {} ({})",
                    path.display(),
                    if made { "created" } else { "kept" }
                );
            }
        }
        MasterAction::Computer {
            action:
                ComputerAction::Certificate {
                    action:
                        IssueAction::Issue {
                            name,
                            out_dir,
                            days,
                            db,
                        },
                },
        } => issue(Bound::Computer, name, out_dir, days, db).await?,
        MasterAction::User {
            action:
                UserAction::Certificate {
                    action:
                        IssueAction::Issue {
                            name,
                            out_dir,
                            days,
                            db,
                        },
                },
        } => issue(Bound::User, name, out_dir, days, db).await?,
        MasterAction::Certificate {
            action:
                CertificateAction::Revoke {
                    fingerprint,
                    computer,
                    user,
                    db,
                },
        } => {
            let store = open(&db).await?;
            let (described, count) = store
                .write(move |db| {
                    let now = slapos_core::now_micros();
                    let (described, selector_count) = if let Some(f) = &fingerprint {
                        let f = f.trim().to_ascii_lowercase().replace(':', "");
                        let n = q::revoke_certificates(
                            db,
                            &q::CertificateSelector::Fingerprint(&f),
                            now,
                        )?;
                        (format!("certificate {f}"), n)
                    } else if let Some(c) = &computer {
                        let n =
                            q::revoke_certificates(db, &q::CertificateSelector::Computer(c), now)?;
                        (format!("certificates of computer {c:?}"), n)
                    } else if let Some(u) = &user {
                        let row = q::user_by_name(db, u)?
                            .ok_or_else(|| MasterError::NotFound(format!("No user named {u:?}")))?;
                        let n =
                            q::revoke_certificates(db, &q::CertificateSelector::User(row.id), now)?;
                        (format!("certificates of user {u:?}"), n)
                    } else {
                        return Err(MasterError::BadRequest(
                            "name what to revoke: --fingerprint, --computer or --user".into(),
                        ));
                    };
                    Ok((described, selector_count))
                })
                .await?;
            if count == 0 {
                anyhow::bail!("No live {described}");
            }
            println!("Revoked {count} {described}");
        }
        MasterAction::Certificate {
            action: CertificateAction::List { json, db },
        } => {
            let store = open(&db).await?;
            let certificates = store
                .read(move |db| Ok::<_, MasterError>(q::list_certificates(db)?))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&certificates)?);
            } else {
                println!(
                    "{:<64} {:<9} {:<20} {:<21} revoked",
                    "fingerprint", "kind", "bound to", "valid until"
                );
                for c in certificates {
                    let (kind, whom) = match &c.owner {
                        q::CertificateOwner::Computer { computer } => {
                            ("computer", computer.clone())
                        }
                        q::CertificateOwner::User { user, .. } => ("user", user.clone()),
                    };
                    println!(
                        "{:<64} {:<9} {:<20} {:<21} {}",
                        c.fingerprint,
                        kind,
                        whom,
                        micros_to_text(c.not_after),
                        c.revoked_at
                            .map(micros_to_text)
                            .unwrap_or_else(|| "-".into())
                    );
                }
            }
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
