use super::*;

#[test]
fn base64_matches_the_standard() {
    // RFC 4648's test vectors.
    for (raw, enc) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(raw.as_bytes()), enc, "{raw:?}");
    }
    assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
}

#[test]
fn reads_the_report_through_escapes_and_noise() {
    let console = "\x1b[0;32m  OK  \x1b[0m] Started x.\r\n\
                   [   80.1] random: crng\r\nBOOTD-FACT hostname=n1\r\n\
                   \x1b[2JBOOTD-FACT machine-id=0123\r\n\
                   BOOTD-FACT journal a.service: x=y\r\nBOOTD-FACT done\r\n";
    let f = Facts::parse(console);
    assert_eq!(f.get("hostname").ok(), Some("n1"));
    assert_eq!(f.get("machine-id").ok(), Some("0123"));
    // A journal line is kept as a line, never as a fact.
    assert!(f.get("journal a.service: x").is_err());
    assert_eq!(f.lines.len(), 4);
    assert!(f.done());
    assert!(!Facts::parse("BOOTD-FACT hostname=n1\n").done());
    assert!(f.get("ssh-hostkey").is_err());
}

#[test]
fn user_data_is_cloud_config_with_only_the_name_templated() -> Result<()> {
    let mut u = UserData {
        linger_secs: 7,
        ..UserData::default()
    };
    u.facts.push(("pkg".into(), "dpkg -s x".into()));
    u.files
        .push(("/root/a".into(), "0644".into(), b"hi".to_vec()));
    u.runcmd.push("touch /x\necho y".into());
    let y = u.render()?;
    assert!(y.starts_with("#cloud-config\nwrite_files:\n"));
    assert!(y.contains("      f \"pkg=$(dpkg -s x)\"\n"));
    assert!(y.contains("    encoding: b64\n    content: aGk=\n"));
    assert!(y.contains("runcmd:\n  - |\n    touch /x\n    echo y\n"));
    assert!(y.contains("      sleep 7\n      systemctl poweroff\n"));
    u.facts.push(("bad key".into(), "true".into()));
    assert!(u.render().is_err());
    u.facts.pop();
    u.runcmd.push("echo {% x %}".into());
    assert!(u.render().is_err());
    Ok(())
}

#[test]
fn tail_keeps_the_last_lines() {
    assert_eq!(tail("a\r\n\nb\n\x1b[1mc\x1b[0m\n", 2), "b\nc");
    assert_eq!(tail("", 3), "");
}
