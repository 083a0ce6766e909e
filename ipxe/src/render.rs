//! Boot scripts from templates: a node's [`BootPlan`] rendered through
//! minijinja with strict undefined variables, so that a template naming a
//! variable bootd does not provide fails when it is added, not at boot.

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;

/// The default template: iSCSI sanboot of the node's own disk.
pub const DEFAULT_TEMPLATE: &str = "sanboot.ipxe";

/// Built-in templates by name, compiled into the binary so that it needs no
/// files at run time. Operator scripts may `include` or `extend` them.
pub const BUILTINS: &[(&str, &str)] = &[
    ("sanboot.ipxe", include_str!("../../templates/sanboot.ipxe")),
    (
        "linux-iscsi.ipxe",
        include_str!("../../templates/linux-iscsi.ipxe"),
    ),
    (
        "windows-sanboot.ipxe",
        include_str!("../../templates/windows-sanboot.ipxe"),
    ),
];

/// Rendered scripts larger than this are refused: iPXE holds the script in
/// memory and nothing sensible needs more.
const MAX_SCRIPT_BYTES: usize = 64 * 1024;

/// Everything a template may use about one node's boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootPlan {
    pub node_name: String,
    /// Lower-case, colon-separated.
    pub mac: String,
    /// The node's static address; empty when it has none.
    pub ip: String,
    /// The address the client reached this server at (no port).
    pub server: String,
    /// `http://SERVER:PORT`, for files fetched over HTTP.
    pub http_base: String,
    /// `HOST:PORT` of the iSCSI portal, for messages.
    pub portal: String,
    /// The portal host as iPXE's `iscsi:` URI wants it (IPv6 in brackets).
    pub iscsi_host: String,
    pub iscsi_port: u16,
    pub target_iqn: String,
    pub initiator_iqn: String,
    pub chap_user: String,
    pub chap_secret: String,
    /// Mutual CHAP: the name and secret the target must prove itself with
    /// (iPXE's `reverse-username`/`reverse-password`, which it also writes
    /// into the iBFT for the OS initiator). Both empty when the node's
    /// mutual CHAP is off; templates test `{% if mutual_chap_user %}`.
    pub mutual_chap_user: String,
    pub mutual_chap_secret: String,
    pub image_name: String,
    pub image_version: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Syntax errors, unknown variables, missing includes: minijinja's
    /// message, which names the line.
    #[error("template does not render: {0}")]
    Template(String),
    #[error("rendered script does not start with \"#!ipxe\", so iPXE would not run it")]
    NotIpxe,
    #[error("rendered script is {0} bytes; at most {MAX_SCRIPT_BYTES} are allowed")]
    TooLarge(usize),
    #[error(
        "user-data is {0} bytes; at most {max} are allowed",
        max = crate::user_data::MAX_USER_DATA_BYTES
    )]
    UserDataTooLarge(usize),
}

impl From<minijinja::Error> for RenderError {
    fn from(e: minijinja::Error) -> Self {
        // One line: the kind, detail and location, without source excerpts.
        Self::Template(e.to_string().lines().collect::<Vec<_>>().join(" "))
    }
}

/// Renders scripts; cheap to share, built once per server.
pub struct Renderer {
    env: Environment<'static>,
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

impl Renderer {
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // iPXE scripts are plain text: no HTML escaping whatever the name.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_keep_trailing_newline(true);
        for (name, text) in BUILTINS {
            // Built-ins are constants the tests render; were one broken, it
            // would be missing and every use of it a render error, not a panic.
            let _ = env.add_template(name, text);
        }
        Self { env }
    }

    /// Renders `script` (the node's template text), or the default built-in
    /// when the node has none.
    pub fn render(&self, script: Option<&str>, plan: &BootPlan) -> Result<String, RenderError> {
        let out = match script {
            Some(text) => self.env.render_named_str("node.ipxe", text, plan)?,
            None => self.env.get_template(DEFAULT_TEMPLATE)?.render(plan)?,
        };
        check_output(out)
    }

    /// Renders the built-in template `name`.
    pub fn render_builtin(&self, name: &str, plan: &BootPlan) -> Result<String, RenderError> {
        check_output(self.env.get_template(name)?.render(plan)?)
    }
}

fn check_output(out: String) -> Result<String, RenderError> {
    if out.len() > MAX_SCRIPT_BYTES {
        return Err(RenderError::TooLarge(out.len()));
    }
    if !out.starts_with("#!ipxe") {
        return Err(RenderError::NotIpxe);
    }
    Ok(out)
}

/// A plan with plausible values for every variable, for [`validate`].
pub fn sample_plan() -> BootPlan {
    BootPlan {
        node_name: "node-020000000001".into(),
        mac: "02:00:00:00:00:01".into(),
        ip: "192.0.2.10".into(),
        server: "192.0.2.1".into(),
        http_base: "http://192.0.2.1:8080".into(),
        portal: "192.0.2.1:3260".into(),
        iscsi_host: "192.0.2.1".into(),
        iscsi_port: 3260,
        target_iqn: "iqn.2026-11.io.bootd:node.sample".into(),
        initiator_iqn: "iqn.2026-11.io.bootd:initiator.sample".into(),
        chap_user: "sample".into(),
        chap_secret: "0123456789abcdef".into(),
        mutual_chap_user: "bootd".into(),
        mutual_chap_secret: "fedcba9876543210".into(),
        image_name: "sample".into(),
        image_version: 1,
    }
}

/// Checks an operator's template: it must render against a sample plan (no
/// syntax errors, no unknown variables) into an iPXE script.
pub fn validate(template_text: &str) -> Result<(), RenderError> {
    Renderer::new()
        .render(Some(template_text), &sample_plan())
        .map(drop)
}

/// The generic `/boot.ipxe` script: iPXE asks for the script of the MAC of
/// the interface it booted from (`netX` is the last one opened; `hexhyp`
/// spells it `52-54-00-12-34-56`, safe in a URL). A MAC with no node gets a
/// 404, and the machine moves on to its next boot device.
pub fn chain_script(http_base: &str) -> String {
    let node = bootd_plan::urls::node_url_ipxe(http_base);
    format!(
        "#!ipxe\n\
         chain {node} || goto unknown\n\
         :unknown\n\
         echo bootd: no boot script for ${{netX/mac}}, trying the next boot device\n\
         sleep 5\n\
         exit 1\n"
    )
}

/// `host` as iPXE's `iscsi:` URI and `http://` URLs want it: IPv6 in brackets.
pub fn uri_host(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_render_with_every_credential() -> Result<(), RenderError> {
        let r = Renderer::new();
        let plan = sample_plan();
        for (name, _) in BUILTINS {
            let out = r.render_builtin(name, &plan)?;
            assert!(out.starts_with("#!ipxe\n"), "{name}");
            assert!(out.contains(&plan.target_iqn), "{name}");
            assert!(out.contains(&plan.initiator_iqn), "{name}");
            assert!(out.contains(&plan.chap_user), "{name}");
            assert!(out.contains(&plan.chap_secret), "{name}");
            assert!(out.contains(&plan.mutual_chap_secret), "{name}");
            assert!(!out.contains("{{"), "{name}: {out}");
            assert!(!out.contains("--keep"), "{name}");
        }
        Ok(())
    }

    #[test]
    fn sanboot_lines_are_ipxe() -> Result<(), RenderError> {
        let out = Renderer::new().render(None, &one_way_plan())?;
        let lines: Vec<&str> = out.lines().collect();
        for want in [
            "set initiator-iqn iqn.2026-11.io.bootd:initiator.sample",
            "set username sample",
            "set password 0123456789abcdef",
            "sanboot iscsi:192.0.2.1::3260:0:iqn.2026-11.io.bootd:node.sample || goto failed",
            ":failed",
        ] {
            assert!(lines.contains(&want), "missing {want:?} in {out}");
        }
        Ok(())
    }

    /// On its owner's portal, the disk line names that portal, with its
    /// port, and the HTTP side stays where the script came from.
    #[test]
    fn a_plan_on_another_portal_boots_from_it() -> Result<(), RenderError> {
        for (portal, line) in [
            (
                "192.0.2.9:3261",
                "sanboot iscsi:192.0.2.9::3261:0:iqn.2026-11.io.bootd:node.sample || goto failed",
            ),
            (
                "[2001:db8::9]:3262",
                "sanboot iscsi:[2001:db8::9]::3262:0:iqn.2026-11.io.bootd:node.sample || goto failed",
            ),
        ] {
            let addr: std::net::SocketAddr = portal
                .parse()
                .map_err(|e| RenderError::Template(format!("{portal}: {e}")))?;
            let plan = one_way_plan().on_portal(addr);
            assert_eq!(plan.http_base, one_way_plan().http_base);
            let out = Renderer::new().render(None, &plan)?;
            assert!(out.lines().any(|l| l == line), "missing {line:?} in {out}");
        }
        Ok(())
    }

    /// The sample plan with mutual CHAP off, as most nodes are.
    fn one_way_plan() -> BootPlan {
        BootPlan {
            mutual_chap_user: String::new(),
            mutual_chap_secret: String::new(),
            ..sample_plan()
        }
    }

    #[test]
    fn sanboot_scripts_carry_reverse_credentials_only_with_mutual_chap() -> Result<(), RenderError>
    {
        let r = Renderer::new();
        for name in ["sanboot.ipxe", "windows-sanboot.ipxe"] {
            let on = r.render_builtin(name, &sample_plan())?;
            let lines: Vec<&str> = on.lines().collect();
            let at = |want: &str| lines.iter().position(|l| *l == want);
            let user = at("set reverse-username bootd");
            let secret = at("set reverse-password fedcba9876543210");
            let sanboot = lines.iter().position(|l| l.starts_with("sanboot "));
            assert!(user.is_some() && secret.is_some(), "{name}: {on}");
            // iPXE reads the settings when sanboot logs in.
            assert!(user < sanboot && secret < sanboot, "{name}: {on}");
            // Same script otherwise, line for line.
            let off = r.render_builtin(name, &one_way_plan())?;
            assert!(!off.contains("reverse-"), "{name}: {off}");
            let without: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| !l.starts_with("set reverse-"))
                .collect();
            assert_eq!(without, off.lines().collect::<Vec<_>>(), "{name}");
        }
        Ok(())
    }

    #[test]
    fn linux_netroot_has_inbound_credentials_with_mutual_chap() -> Result<(), RenderError> {
        let r = Renderer::new();
        let on = r.render_builtin("linux-iscsi.ipxe", &sample_plan())?;
        assert!(
            on.contains(" netroot=iscsi:sample:0123456789abcdef:bootd:fedcba9876543210@192.0.2.1::3260:0:iqn.2026-11.io.bootd:node.sample "),
            "{on}"
        );
        let off = r.render_builtin("linux-iscsi.ipxe", &one_way_plan())?;
        assert!(off.contains(" netroot=iscsi:sample:0123456789abcdef@192.0.2.1::"));
        Ok(())
    }

    #[test]
    fn windows_hooks_the_first_bios_disk() -> Result<(), RenderError> {
        let out = Renderer::new().render_builtin("windows-sanboot.ipxe", &sample_plan())?;
        assert!(out.contains("sanboot --drive 0x80 iscsi:192.0.2.1::3260:0:"));
        Ok(())
    }

    #[test]
    fn linux_uses_dracut_netroot() -> Result<(), RenderError> {
        let out = Renderer::new().render_builtin("linux-iscsi.ipxe", &one_way_plan())?;
        assert!(out.contains(
            " netroot=iscsi:sample:0123456789abcdef@192.0.2.1::3260:0:iqn.2026-11.io.bootd:node.sample "
        ));
        assert!(out.contains(" rd.iscsi.initiator=iqn.2026-11.io.bootd:initiator.sample "));
        assert!(out.contains("kernel http://192.0.2.1:8080/images/sample/vmlinuz "));
        Ok(())
    }

    #[test]
    fn operator_scripts_extend_builtins() -> Result<(), RenderError> {
        let text = "{% extends \"linux-iscsi.ipxe\" %}\
                    {% block kernel_url %}http://files.example/k{% endblock %}";
        let out = Renderer::new().render(Some(text), &sample_plan())?;
        assert!(out.contains("kernel http://files.example/k initrd=initrd.img"));
        Ok(())
    }

    #[test]
    fn validate_accepts_good_and_refuses_bad() {
        assert!(validate(
            "#!ipxe\nsanboot iscsi:{{ iscsi_host }}::{{ iscsi_port }}:0:{{ target_iqn }}\n"
        )
        .is_ok());
        // Unknown variable.
        let e = validate("#!ipxe\necho {{ no_such_thing }}\n");
        assert!(matches!(e, Err(RenderError::Template(_))), "{e:?}");
        // Unknown attribute of a known value.
        assert!(validate("#!ipxe\necho {{ mac.vendor }}\n").is_err());
        // Syntax errors.
        assert!(validate("#!ipxe\necho {{ mac \n").is_err());
        assert!(validate("#!ipxe\n{% if %}\n").is_err());
        assert!(validate("#!ipxe\n{% include \"missing.ipxe\" %}\n").is_err());
        // Renders, but iPXE would not treat it as a script.
        assert!(matches!(
            validate("sanboot iscsi:x\n"),
            Err(RenderError::NotIpxe)
        ));
        // Bounded output.
        assert!(matches!(
            validate("#!ipxe\n{% for i in range(100000) %}xxxxxxxx{% endfor %}"),
            Err(RenderError::TooLarge(_))
        ));
    }

    #[test]
    fn errors_are_one_line() {
        let Err(e) = validate("#!ipxe\n\necho {{ nope }}\n") else {
            panic!("should fail");
        };
        let text = e.to_string();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("undefined"), "{text}");
    }

    #[test]
    fn chain_script_uses_ipxe_settings() {
        let s = chain_script("http://192.0.2.1:8080");
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains(
            "chain http://192.0.2.1:8080/boot/${netX/mac:hexhyp}.ipxe || goto unknown\n"
        ));
        assert!(s.contains("\n:unknown\n"));
    }

    #[test]
    fn ipv6_hosts_are_bracketed() -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!(uri_host("192.0.2.1".parse()?), "192.0.2.1");
        assert_eq!(uri_host("2001:db8::1".parse()?), "[2001:db8::1]");
        Ok(())
    }
}
