//! cloud-init user-data from operator templates: rendered through minijinja
//! with the node's fields, as strictly as boot scripts (an undefined
//! variable is an error), so that a broken file is refused when it is
//! added, not when a node asks for it at boot.
//!
//! The text may hold secrets (passwords, keys): errors name the line and
//! the problem, never the rendered content.

use crate::render::RenderError;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;

/// Rendered user-data larger than this is refused, and so is a template
/// file larger than this (the lead serves it per request from memory).
pub const MAX_USER_DATA_BYTES: usize = 64 * 1024;

/// Everything a user-data template may use about one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserDataVars {
    /// The node's name (its hostname).
    pub name: String,
    /// Lower-case, colon-separated.
    pub mac: String,
    /// The node's static address; empty when it has none.
    pub ip: String,
    /// The image's name.
    pub image: String,
    /// The image's version.
    pub version: u32,
}

impl UserDataVars {
    /// Plausible values for every variable, for [`validate_user_data`].
    pub fn sample() -> Self {
        Self {
            name: "node-1".into(),
            mac: "52:54:00:12:34:56".into(),
            ip: "192.0.2.10".into(),
            image: "sample".into(),
            version: 1,
        }
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // YAML, not HTML: nothing is escaped.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_keep_trailing_newline(true);
    env
}

/// Renders the user-data template `text` for one node.
pub fn render_user_data(text: &str, vars: &UserDataVars) -> Result<String, RenderError> {
    if text.len() > MAX_USER_DATA_BYTES {
        return Err(RenderError::UserDataTooLarge(text.len()));
    }
    let out = environment().render_named_str("user-data", text, vars)?;
    if out.len() > MAX_USER_DATA_BYTES {
        return Err(RenderError::UserDataTooLarge(out.len()));
    }
    Ok(out)
}

/// Checks an operator's user-data template: it must render against sample
/// values (no syntax errors, no unknown variables) within the size limit.
pub fn validate_user_data(text: &str) -> Result<(), RenderError> {
    render_user_data(text, &UserDataVars::sample()).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_field() -> Result<(), RenderError> {
        let text = "#cloud-config\nhostname: {{ name }}\n\
                    write_files:\n- path: /etc/bootd-node\n  content: \
                    \"{{ mac }} {{ ip }} {{ image }} v{{ version }}\"\n";
        let out = render_user_data(text, &UserDataVars::sample())?;
        assert!(
            out.starts_with("#cloud-config\nhostname: node-1\n"),
            "{out}"
        );
        assert!(
            out.contains("\"52:54:00:12:34:56 192.0.2.10 sample v1\"\n"),
            "{out}"
        );
        // Nothing is HTML-escaped, the trailing newline stays.
        let out = render_user_data("a: '<&>'\n", &UserDataVars::sample())?;
        assert_eq!(out, "a: '<&>'\n");
        Ok(())
    }

    #[test]
    fn refuses_unknown_variables_syntax_errors_and_size() {
        let unknown = validate_user_data("#cloud-config\nhostname: {{ hostname }}\n");
        assert!(
            matches!(unknown, Err(RenderError::Template(_))),
            "{unknown:?}"
        );
        assert!(validate_user_data("#cloud-config\n{{ name.first }}\n").is_err());
        assert!(validate_user_data("#cloud-config\n{% if %}\n").is_err());
        assert!(validate_user_data("#cloud-config\n{{ name \n").is_err());
        assert!(validate_user_data("#cloud-config\n{% include \"x\" %}\n").is_err());
        // Output over the limit, from a small template.
        let big = validate_user_data("{% for i in range(10000) %}xxxxxxxx{% endfor %}");
        assert!(
            matches!(big, Err(RenderError::UserDataTooLarge(_))),
            "{big:?}"
        );
        // A template over the limit, even one that renders small.
        let huge = format!(
            "#cloud-config\n{{# {} #}}\n",
            "x".repeat(MAX_USER_DATA_BYTES)
        );
        assert!(matches!(
            validate_user_data(&huge),
            Err(RenderError::UserDataTooLarge(_))
        ));
        // Just under the limit is fine.
        let fits = format!("#{}", "x".repeat(MAX_USER_DATA_BYTES - 1));
        assert!(validate_user_data(&fits).is_ok());
        assert!(validate_user_data("#cloud-config\nhostname: {{ name }}\n").is_ok());
    }

    #[test]
    fn errors_are_one_line_without_the_content() {
        let secret = "hunter2-secret";
        let Err(e) = validate_user_data(&format!(
            "#cloud-config\npassword: {secret}\n\nruncmd: [{{{{ nope }}}}]\n"
        )) else {
            panic!("should fail");
        };
        let text = e.to_string();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("undefined"), "{text}");
        assert!(!text.contains(secret), "{text}");
    }
}
