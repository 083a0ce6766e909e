//! `bootd template add|list|rm`. Scripts are stored as text, after a trial
//! render against a sample node so that a broken one is refused here, not
//! at boot.

use crate::datadir::DataDir;
use crate::output;
use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum TemplateCmd {
    /// Name a boot recipe: an image and optionally an iPXE script.
    Add {
        name: String,
        #[arg(long)]
        image: String,
        /// iPXE script template (UTF-8, minijinja syntax); without it nodes
        /// get the built-in sanboot.ipxe. It may include or extend the
        /// built-ins sanboot.ipxe, linux-iscsi.ipxe and windows-sanboot.ipxe.
        #[arg(long)]
        script: Option<PathBuf>,
    },
    /// Every template with its image.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Refused while nodes were created from it.
    Rm { name: String },
}

pub fn run(dd: &DataDir, cmd: TemplateCmd) -> Result<()> {
    let mut store = dd.store()?;
    match cmd {
        TemplateCmd::Add {
            name,
            image,
            script,
        } => {
            crate::names::check_image_name("template", &name)?;
            let text = match &script {
                Some(p) => {
                    let raw = std::fs::read(p)
                        .with_context(|| format!("{}: cannot read", p.display()))?;
                    Some(String::from_utf8(raw).map_err(|e| {
                        anyhow::anyhow!(
                            "{}: not UTF-8 text (invalid byte at {})",
                            p.display(),
                            e.utf8_error().valid_up_to()
                        )
                    })?)
                }
                None => None,
            };
            if let (Some(p), Some(t)) = (&script, &text) {
                bootd_ipxe::validate(t).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            }
            store.add_template(&name, &image, text.as_deref())?;
            println!("added template {name} (image {image})");
        }
        TemplateCmd::List { json } => {
            let list = store.templates()?;
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|t| {
                        json!({
                            "name": t.name,
                            "image": t.image,
                            "script": t.script,
                            "created": t.created,
                        })
                    })
                    .collect();
                return output::json(&json!(v));
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|t| {
                    vec![
                        t.name.clone(),
                        t.image.clone(),
                        match &t.script {
                            Some(s) => format!("{} lines", s.lines().count()),
                            None => "-".into(),
                        },
                    ]
                })
                .collect();
            output::table(&["NAME", "IMAGE", "SCRIPT"], &rows);
        }
        TemplateCmd::Rm { name } => {
            store.remove_template(&name)?;
            println!("removed template {name}");
        }
    }
    Ok(())
}
