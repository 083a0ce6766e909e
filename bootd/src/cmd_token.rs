//! `bootd token add|list|rm`: bearer tokens for the operator API. A token is
//! printed once, by `add`; the registry keeps only its SHA-256.

use crate::datadir::DataDir;
use crate::output;
use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Make a token named NAME and print it (once: only its hash is kept).
    Add {
        name: String,
        /// The token may read (GET) but change nothing.
        #[arg(long)]
        read_only: bool,
    },
    /// Every token's name, access, creation and last use (never the token).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: requests with it are refused from now on.
    Rm { name: String },
}

pub fn run(dd: &DataDir, cmd: TokenCmd) -> Result<()> {
    let mut store = dd.store()?;
    match cmd {
        TokenCmd::Add { name, read_only } => {
            crate::names::check_image_name("token", &name)?;
            let token = crate::api::auth::mint();
            store.add_token(&name, &crate::api::auth::hash(&token), read_only)?;
            // The token alone on stdout, for `TOKEN=$(bootd token add x)`.
            println!("{token}");
            eprintln!(
                "bootd: token {name} ({}) added; it is shown only now",
                if read_only { "read-only" } else { "full" }
            );
        }
        TokenCmd::List { json } => {
            let tokens = store.tokens()?;
            if json {
                let v: Vec<_> = tokens
                    .iter()
                    .map(|t| {
                        json!({
                            "name": t.name,
                            "read_only": t.read_only,
                            "created": t.created,
                            "last_used": t.last_used,
                        })
                    })
                    .collect();
                return output::json(&json!(v));
            }
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    vec![
                        t.name.clone(),
                        if t.read_only { "read-only" } else { "full" }.into(),
                        output::time(t.created),
                        t.last_used.map_or_else(|| "never".into(), output::time),
                    ]
                })
                .collect();
            output::table(&["NAME", "ACCESS", "CREATED", "LAST USED"], &rows);
        }
        TokenCmd::Rm { name } => {
            store.remove_token(&name)?;
            println!("removed token {name}");
        }
    }
    Ok(())
}
