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

/// The example documents every field: each field of each section (and of a policy, a
/// match, a reservation, an option and an FTP user) appears in it as `field =`, set or
/// commented out. A new field without a line there fails this test.
#[test]
fn example_file_names_every_field() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../provbox.example.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    let mentioned = |field: &str| {
        text.lines().any(|l| {
            let l = l.trim_start_matches(|c: char| c == '#' || c.is_whitespace());
            l.starts_with(&format!("{field} ="))
                || l.contains(&format!("{{ {field} ="))
                || l.contains(&format!(", {field} ="))
        })
    };
    let mut missing = Vec::new();
    let mut check = |what: &str, v: serde_json::Value| {
        for k in v
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            // Array-of-tables sections are checked through their element types below.
            if matches!(
                k.as_str(),
                "policy" | "reservation" | "option" | "user" | "quirk"
            ) {
                continue;
            }
            if !mentioned(&k) {
                missing.push(format!("{what}.{k}"));
            }
        }
    };
    let c = serde_json::to_value(Config::default()).unwrap_or_else(|e| panic!("{e}"));
    for (section, v) in c.as_object().into_iter().flatten() {
        check(section, v.clone());
    }
    let policy = Policy {
        name: None,
        matcher: Match::default(),
        provisioning_url: None,
        tftp_server: None,
        boot_file: None,
        force_160: false,
        options: Vec::new(),
    };
    fn json<T: Serialize>(v: T) -> serde_json::Value {
        serde_json::to_value(v).unwrap_or_else(|e| panic!("{e}"))
    }
    check("dhcp.policy", json(&policy));
    check("dhcp.policy.match", json(Match::default()));
    check(
        "dhcp.reservation",
        json(Reservation {
            mac: MacAddr([0; 6]),
            ip: Ipv4Addr::UNSPECIFIED,
            hostname: None,
        }),
    );
    check(
        "dhcp.option",
        json(CustomOption {
            code: 1,
            text: None,
            ip: None,
            hex: None,
        }),
    );
    check(
        "ftp.user",
        json(FtpUser {
            name: String::new(),
            password_hash: String::new(),
            upload: false,
        }),
    );
    check(
        "tftp.quirk",
        json(TftpQuirk {
            model: String::new(),
            max_blksize: Some(512),
            max_windowsize: Some(1),
            tsize: true,
        }),
    );
    assert!(
        missing.is_empty(),
        "provbox.example.toml does not mention: {missing:?}"
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

// ---- environment overrides (PROVBOX_<SECTION>_<FIELD>) ----

fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn with_env(text: &str, list: &[(&str, &str)]) -> Result<Config, ConfigError> {
    env::parse_with_env(text, "t.toml", Path::new("."), vars(list))
}

#[test]
fn env_sets_fields_of_every_type() {
    let c = with_env(
        "",
        &[
            ("PROVBOX_DHCP_SERVER_IP", "192.0.2.1"),
            ("PROVBOX_DHCP_POOL", "192.0.2.100-192.0.2.199"),
            ("PROVBOX_DHCP_DNS", "192.0.2.1, 192.0.2.2"),
            ("PROVBOX_DHCP_LEASE_TIME", "2h"),
            ("PROVBOX_HTTP_BIND", "0.0.0.0:8081"),
            ("PROVBOX_HTTPS_ENABLED", "false"),
            ("PROVBOX_STORE_ROOT", "/store"),
            ("PROVBOX_STATE_DIR", "/state"),
            ("PROVBOX_TFTP_SINGLE_PORT", "true"),
            ("PROVBOX_TFTP_RETRIES", "9"),
            ("PROVBOX_FTP_PASSIVE_PORTS", "31000-31009"),
            ("PROVBOX_FTP_PASSIVE_ADDRESS", "192.0.2.1"),
            ("PROVBOX_API_TOKEN", "12345"),
            ("PROVBOX_TRACKER_BURN_TIME", "{ \"450HD\" = \"3m\" }"),
            (
                "PROVBOX_DHCP_POLICY",
                "[{ match = { model = \"450HD\" }, boot_file = \"450HD.img\" }]",
            ),
            // Not config: ignored.
            ("PROVBOX_CONFIG", "/etc/provbox.toml"),
            ("PROVBOX_LOG_LEVEL", "debug"),
            ("PROVBOXX_HTTP_BIND", "nonsense"),
            ("HOME", "/root"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.dhcp.server_ip.map(|i| i.to_string()).as_deref(),
        Some("192.0.2.1")
    );
    assert_eq!(c.dhcp.pool.map(|p| p.len()), Some(100));
    assert_eq!(c.dhcp.dns.len(), 2);
    assert_eq!(c.dhcp.lease_time.get().as_secs(), 7200);
    assert_eq!(c.http.bind.to_string(), "0.0.0.0:8081");
    assert!(!c.https.enabled);
    assert_eq!(c.store.root, PathBuf::from("/store"));
    assert_eq!(c.state.dir, PathBuf::from("/state"));
    assert!(c.tftp.single_port);
    assert_eq!(c.tftp.retries, 9);
    assert_eq!(c.ftp.passive_ports.first, 31000);
    assert_eq!(
        c.ftp.passive_address.map(|a| a.to_string()).as_deref(),
        Some("192.0.2.1")
    );
    // A number-looking token is still a string: the field's type decides.
    assert_eq!(c.api.token.as_deref(), Some("12345"));
    assert_eq!(
        c.tracker.burn_time.get("450HD").map(|d| d.get().as_secs()),
        Some(180)
    );
    assert_eq!(c.dhcp.policies.len(), 1);
}

#[test]
fn env_overrides_the_file_and_keeps_file_line_numbers() {
    let text = "[http]\nbind = \"0.0.0.0:80\"\n\n[tftp]\nretries = 3\n";
    let c = with_env(text, &[("PROVBOX_HTTP_BIND", "127.0.0.1:8088")])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.http.bind.to_string(), "127.0.0.1:8088");
    assert_eq!(c.tftp.retries, 3);
    // A mistake in the file is still reported at its own line.
    let e = with_env(
        "[http]\nbind = \"0.0.0.0:80\"\n[tftp]\nmax_blksize = 2\n",
        &[
            ("PROVBOX_HTTP_ENABLED", "true"),
            ("PROVBOX_API_ENABLED", "true"),
        ],
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.starts_with("t.toml:4: `tftp.max_blksize`"), "{e}");
    let e = with_env(
        "[tftp]\nretries = \"x\"\n",
        &[("PROVBOX_HTTP_ENABLED", "true")],
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.starts_with("t.toml:2:"), "{e}");
}

#[test]
fn env_errors_name_the_variable() {
    let cases: &[(&str, &str, &str)] = &[
        ("PROVBOX_DHCP_LEASE_TIME", "forever", "duration"),
        ("PROVBOX_HTTP_BIND", "not-an-address", "http.bind"),
        ("PROVBOX_TFTP_RETRIES", "-1", "tftp.retries"),
        ("PROVBOX_TFTP_RETRIES", "many", "tftp.retries"),
        ("PROVBOX_DHCP_SERVERIP", "192.0.2.1", "unknown field"),
        ("PROVBOX_DHCP_SERVERIP", "", "unknown field"),
        ("PROVBOX_HTTPS_ENABLED", "yes", "https.enabled"),
    ];
    for (var, value, needle) in cases {
        let e = match with_env("", &[(var, value)]) {
            Ok(_) => panic!("{var}={value} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.starts_with(&format!("environment variable {var}:")),
            "{var}={value}: {e}"
        );
        assert!(e.contains(needle), "{var}={value}: {e}");
    }
}

#[test]
fn env_validation_errors_blame_the_variable_that_caused_them() {
    // The API beyond loopback needs a token: the variable that moved it is named.
    let e = with_env("", &[("PROVBOX_API_BIND", "0.0.0.0:8080")])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.starts_with("environment variable PROVBOX_API_BIND: `api.bind`"),
        "{e}"
    );
    // ...and a token from the environment fixes it.
    with_env(
        "",
        &[
            ("PROVBOX_API_BIND", "0.0.0.0:8080"),
            ("PROVBOX_API_TOKEN", "s3cret"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // A file error made visible by an override names the file line and the overrides.
    let e = with_env(
        "[dhcp]\npool = \"192.0.2.100-192.0.2.199\"\n",
        &[("PROVBOX_DHCP_SERVER_IP", "198.51.100.1")],
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.starts_with("t.toml:2: `dhcp.pool`"), "{e}");
    assert!(e.contains("PROVBOX_DHCP_SERVER_IP"), "{e}");
}

#[test]
fn env_empty_value_restores_the_default_and_duplicates_are_refused() {
    let c = with_env("[api]\ntoken = \"x\"\n", &[("PROVBOX_API_TOKEN", "")])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.api.token, None);
    let e = with_env(
        "",
        &[
            ("PROVBOX_HTTP_BIND", "0.0.0.0:81"),
            ("PROVBOX_http_bind", "0.0.0.0:82"),
        ],
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.contains("also set by"), "{e}");
}

#[test]
fn apply_env_on_a_built_config_and_load_with_vars() {
    let mut c = Config::default();
    c.apply_env(vars(&[
        ("PROVBOX_TFTP_SINGLE_PORT", "true"),
        ("PROVBOX_DHCP_SERVER_IP", "192.0.2.9"),
    ]))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(c.tftp.single_port);
    assert_eq!(
        c.dhcp.server_ip.map(|i| i.to_string()).as_deref(),
        Some("192.0.2.9")
    );
    let before = c.tftp.retries;
    assert!(c.apply_env(vars(&[("PROVBOX_TFTP_RETRIES", "x")])).is_err());
    assert_eq!(
        c.tftp.retries, before,
        "a failed apply leaves the config as it was"
    );

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("p.toml");
    std::fs::write(&path, "[http]\nbind = \"0.0.0.0:80\"\n").unwrap_or_else(|e| panic!("{e}"));
    let c = Config::load_with_vars(
        Some(&path),
        vars(&[("PROVBOX_HTTP_BIND", "127.0.0.1:1080")]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.http.bind.to_string(), "127.0.0.1:1080");
    let c = Config::load_with_vars(None, vars(&[])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.http.bind.port(), 80);
    // The example file survives a round trip through apply_env (serialise, merge, parse).
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../provbox.example.toml");
    let mut c = Config::load(&example).unwrap_or_else(|e| panic!("{e}"));
    c.apply_env(vars(&[
        ("PROVBOX_HTTP_BIND", "0.0.0.0:8080"),
        ("PROVBOX_API_BIND", "127.0.0.1:9090"),
    ]))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.dhcp.policies.len(), 3);
    assert_eq!(c.http.bind.port(), 8080);
}

#[test]
fn access_allow_list_parses_networks_and_addresses_and_matches_clients() {
    let c = parse("[access]\nallow = [\"10.20.1.5/16\", \"192.0.2.7\", \"2001:db8::/32\"]\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let ip = |s: &str| {
        s.parse::<std::net::IpAddr>()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    // Host bits are dropped; a bare address is one host.
    assert_eq!(c.access.allow[0].to_string(), "10.20.0.0/16");
    assert_eq!(c.access.allow[1].to_string(), "192.0.2.7/32");
    assert!(c.access.permits(ip("10.20.200.1")));
    assert!(c.access.permits(ip("192.0.2.7")));
    assert!(!c.access.permits(ip("192.0.2.8")));
    assert!(!c.access.permits(ip("10.21.0.1")));
    assert!(c.access.permits(ip("2001:db8::1")));
    // A dual-stack socket reports IPv4 clients as mapped addresses.
    assert!(c.access.permits(ip("::ffff:10.20.0.9")));
    assert!(!c.access.permits(ip("::ffff:10.21.0.9")));
    // Empty: everyone.
    assert!(Config::default().access.permits(ip("203.0.113.9")));
    let e = err("[access]\nallow = [\"10.20.0.0/33\"]\n");
    assert!(e.contains("t.toml:2") && e.contains("10.20.0.0/33"), "{e}");
}

#[test]
fn env_sets_a_list_of_one_item() {
    let c = with_env(
        "",
        &[
            ("PROVBOX_ACCESS_ALLOW", "10.20.0.0/16"),
            ("PROVBOX_DHCP_DNS", "192.0.2.1"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.access.allow.len(), 1);
    assert_eq!(c.dhcp.dns.len(), 1);
    let c = with_env(
        "",
        &[("PROVBOX_ACCESS_ALLOW", "10.20.0.0/16, 192.0.2.0/24")],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.access.allow.len(), 2);
}
