//! Parsing and validation tests: the example file, defaults, and each error naming its line.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "t.toml", Path::new("."))
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn example_file_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../provbox.example.toml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.dhcp.policies.len(), 3);
    assert_eq!(c.dhcp.policies[1].boot_file.as_deref(), Some("445HD.img"));
    assert_eq!(
        c.tracker.burn_time.get("450HD").map(|d| d.get().as_secs()),
        Some(180)
    );
}

#[test]
fn empty_config_is_valid() {
    let c = parse("").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.tftp.bind.port(), 69);
    assert_eq!(c.api.bind.to_string(), "127.0.0.1:8080");
}

#[test]
fn syntax_error_names_line() {
    let e = err("[dhcp]\nlease_time = \"1h\"\nbogus = 1\n");
    assert!(e.starts_with("t.toml:3:"), "{e}");
    assert!(e.contains("bogus"), "{e}");
}

#[test]
fn bad_duration_names_line() {
    let e = err("[dhcp]\n\nlease_time = \"forever\"\n");
    assert!(e.starts_with("t.toml:3:"), "{e}");
    assert!(e.contains("duration"), "{e}");
}

#[test]
fn pool_outside_subnet() {
    let e = err("[dhcp]\nserver_ip = \"192.0.2.1\"\npool = \"198.51.100.1-198.51.100.9\"\n");
    assert!(e.starts_with("t.toml:3: `dhcp.pool`"), "{e}");
}

#[test]
fn overlapping_reservations() {
    let e = err(
        "[dhcp]\npool = \"192.0.2.10-192.0.2.20\"\n[[dhcp.reservation]]\nmac = \"00:90:8f:00:00:01\"\nip = \"192.0.2.50\"\n\
         [[dhcp.reservation]]\nmac = \"00908F000002\"\nip = \"192.0.2.50\"\n",
    );
    assert!(e.starts_with("t.toml:8: `dhcp.reservation[1].ip`"), "{e}");
    let e = err(
        "[[dhcp.reservation]]\nmac = \"00:90:8f:00:00:01\"\nip = \"192.0.2.50\"\n\
         [[dhcp.reservation]]\nmac = \"00-90-8F-00-00-01\"\nip = \"192.0.2.51\"\n",
    );
    assert!(e.contains("`dhcp.reservation[1].mac`"), "{e}");
}

#[test]
fn unknown_placeholder() {
    let e = err(
        "[[dhcp.policy]]\nmatch = { model = \"450HD\" }\nprovisioning_url = \"http://{server}/{serial}.img\"\n",
    );
    assert!(
        e.starts_with("t.toml:3: `dhcp.policy[0].provisioning_url`"),
        "{e}"
    );
    assert!(e.contains("{serial}"), "{e}");
    // The phone's own placeholders pass.
    parse("[dhcp]\nprovisioning_url = \"http://{server}/<MODEL>.img;<MAC>.cfg\"\n")
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn two_services_one_port() {
    let e = err("[http]\nbind = \"0.0.0.0:8080\"\n[api]\nbind = \"127.0.0.1:8080\"\n");
    assert!(e.contains("`api.bind`") && e.contains("[http]"), "{e}");
    // Same port on different protocols is fine.
    parse("[tftp]\nbind = \"0.0.0.0:8080\"\n[http]\nbind = \"0.0.0.0:8080\"\n[api]\nbind = \"127.0.0.1:9\"\n")
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn unreadable_certificate() {
    let e = err("[https]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n");
    assert!(e.starts_with("t.toml:2: `https.cert`"), "{e}");
    assert!(e.contains("/nonexistent/cert.pem"), "{e}");
}

#[test]
fn api_beyond_loopback_needs_token() {
    let e = err("[api]\nbind = \"0.0.0.0:8080\"\n");
    assert!(e.contains("token"), "{e}");
    parse("[api]\nbind = \"0.0.0.0:8080\"\ntoken = \"s3cret\"\n").unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn template_expansion_keeps_phone_placeholders() {
    let vars = TemplateVars {
        server: "192.0.2.1".into(),
        https_port: 8443,
        ..TemplateVars::default()
    };
    assert_eq!(
        expand_template(
            "https://{server}/{model}.img;<MAC>.cfg",
            &vars,
            "00908f123456",
            "450HD"
        ),
        "https://192.0.2.1/450HD.img;<MAC>.cfg"
    );
    assert_eq!(
        expand_template(
            "https://{server}:{https_port}/{mac}/<MODEL>.img;{bogus}{tftp_port}{",
            &vars,
            "00908f123456",
            "450HD"
        ),
        "https://192.0.2.1:8443/00908f123456/<MODEL>.img;{bogus}69{"
    );
    parse("[dhcp]\nprovisioning_url = \"https://{server}:{https_port}/450HD.img;<MAC>.cfg\"\n")
        .unwrap_or_else(|e| panic!("{e}"));
}
