//! `bootd template add|list|rm`. Scripts and cloud-init user-data are
//! stored as text, after a trial render against a sample node so that a
//! broken one is refused here, not at boot.

use crate::datadir::DataDir;
use crate::output;
use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;
use std::io::Read;
use std::path::{Path, PathBuf};

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
        /// cloud-init user-data for the template's nodes (cloud-config text,
        /// at most 64 KiB, minijinja syntax with the node's name, mac, ip,
        /// image and version; cloud-init's own `{{ }}` go in `{% raw %}`).
        /// A node's own `node add --user-data` wins; without either, nodes
        /// get a default that sets the hostname.
        #[arg(long, value_name = "FILE")]
        user_data: Option<PathBuf>,
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
            user_data,
        } => {
            crate::names::check_image_name("template", &name)?;
            let text = match &script {
                Some(p) => {
                    let raw = std::fs::read(p)
                        .with_context(|| format!("{}: cannot read", p.display()))?;
                    Some(utf8(p, raw)?)
                }
                None => None,
            };
            if let (Some(p), Some(t)) = (&script, &text) {
                check_script(&p.display().to_string(), t)?;
            }
            let user_data = user_data.as_deref().map(read_user_data).transpose()?;
            add(
                store.as_mut(),
                &name,
                &image,
                text.as_deref(),
                user_data.as_deref(),
            )?;
            println!(
                "added template {name} (image {image}{})",
                if user_data.is_some() {
                    ", with user-data"
                } else {
                    ""
                }
            );
        }
        TemplateCmd::List { json } => {
            let list = store.templates()?;
            if json {
                let v: Vec<_> = list.iter().map(template_json).collect();
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

/// A template as `template list --json` shows it.
pub fn template_json(t: &crate::store::Template) -> serde_json::Value {
    json!({
        "name": t.name,
        "image": t.image,
        "script": t.script,
        // Whether it has one: the text may hold secrets.
        "user_data": t.user_data.is_some(),
        "created": t.created,
    })
}

/// `template add` once the texts are read and checked: the name checked,
/// then stored.
pub fn add(
    store: &mut dyn crate::store::Store,
    name: &str,
    image: &str,
    script: Option<&str>,
    user_data: Option<&str>,
) -> Result<crate::store::Template> {
    crate::names::check_image_name("template", name)?;
    Ok(store.add_template(name, image, script, user_data)?)
}

/// An iPXE script template renders against a sample node; `label` names it
/// in the error (a file, or the API's field).
pub fn check_script(label: &str, text: &str) -> Result<()> {
    bootd_ipxe::validate(text).map_err(|e| anyhow::anyhow!("{label}: {e}"))
}

fn utf8(p: &Path, raw: Vec<u8>) -> Result<String> {
    String::from_utf8(raw).map_err(|e| {
        anyhow::anyhow!(
            "{}: not UTF-8 text (invalid byte at {})",
            p.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// Reads and checks a cloud-init user-data template (`template add` and
/// `node add --user-data`): at most 64 KiB of UTF-8 that renders against a
/// sample node. Errors are one line naming the file, never its content
/// (user-data may hold secrets).
pub fn read_user_data(p: &Path) -> Result<String> {
    const MAX: usize = bootd_ipxe::MAX_USER_DATA_BYTES;
    let mut raw = Vec::new();
    std::fs::File::open(p)
        .and_then(|f| f.take(MAX as u64 + 1).read_to_end(&mut raw))
        .with_context(|| format!("{}: cannot read", p.display()))?;
    if raw.len() > MAX {
        anyhow::bail!(
            "{}: user-data is larger than {MAX} bytes, the most allowed",
            p.display()
        );
    }
    let text = utf8(p, raw)?;
    check_user_data(&p.display().to_string(), &text)?;
    Ok(text)
}

/// User-data text (from a file or the API): at most 64 KiB that renders
/// against a sample node. The error names `label`, never the content.
pub fn check_user_data(label: &str, text: &str) -> Result<()> {
    const MAX: usize = bootd_ipxe::MAX_USER_DATA_BYTES;
    if text.len() > MAX {
        anyhow::bail!("{label}: user-data is larger than {MAX} bytes, the most allowed");
    }
    bootd_ipxe::validate_user_data(text).map_err(|e| anyhow::anyhow!("{label}: user-data {e}"))
}
