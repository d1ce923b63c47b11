//! `provbox check`: the lab's dry run. It loads the config exactly as `serve` would (the
//! file or the defaults, plus `PROVBOX_*` overrides), surveys the store without changing
//! anything, and explains what phones would be given: with `--model`/`--mac` that one
//! phone, otherwise every `[[dhcp.policy]]` and the `[dhcp]` defaults. After each answer's
//! options it looks up the files they name (option 160 in the phone's four grammars,
//! 66/67) in the store as provbox's servers would: exact path, then case- and
//! MAC-separator-insensitive, then a `<model>.img` alias to the newest image of that
//! model in the same directory. `--effective` prints the effective config as TOML instead,
//! secrets redacted.
//!
//! Exit status: 0 all good (warnings may be printed); 64 the config is invalid;
//! 65 an answer names a file on this appliance that the store lacks (or that the servers
//! would refuse), so a lab's CI running `provbox check` fails before a phone does.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use provbox_config::{Config, MacAddr, Match, Policy};
use provbox_protocols::dhcp::{Explanation, TemplateVars};
use provbox_storage::FileKind;
use provbox_storage::names;
use provbox_storage::store::SurveyFile;

use crate::sim::url::{self, ProvUrl, Scheme};

/// EX_USAGE: the config is wrong.
const EX_CONFIG: u8 = 64;
/// EX_DATAERR: the config is valid but names files the store does not have.
const EX_MISSING: u8 = 65;
/// What a redacted secret reads as in `--effective`.
const REDACTED: &str = "<redacted>";

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The config file; the defaults are checked without one.
    #[arg(short, long, env = "PROVBOX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Explain only what a phone of this model (as in DHCP option 60/77) would get.
    #[arg(long)]
    pub model: Option<String>,
    /// Explain only what the phone with this MAC would get (fills `<MAC>`/`{mac}` in
    /// file names, so its config file is checked too).
    #[arg(long)]
    pub mac: Option<MacAddr>,
    /// Print the effective config (the file or the defaults, with PROVBOX_* overrides
    /// applied) as TOML and nothing else. Passwords, hashes and tokens are shown as
    /// "<redacted>".
    #[arg(long, conflicts_with_all = ["model", "mac"])]
    pub effective: bool,
}

pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    // Built in a buffer and written once: `provbox check | head` must not panic on a
    // closed pipe (println! would).
    let mut out = String::new();
    let code = if args.effective {
        effective(&args, &mut out)
    } else {
        report(&args, &mut out)
    };
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
    Ok(code)
}

/// `--effective`: the TOML only, so it can be redirected into a file.
fn effective(args: &CheckArgs, out: &mut String) -> ExitCode {
    let mut config = match Config::load_with_env(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("provbox check: config INVALID: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    redact(&mut config);
    match toml::to_string(&config) {
        Ok(text) => {
            let _ = writeln!(
                out,
                "# The effective config of {}: PROVBOX_* overrides applied, secrets shown as \"{REDACTED}\".",
                source_name(args)
            );
            out.push_str(&text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("provbox check: cannot print the config as TOML: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Blanks every secret: FTP password hashes, the API token, and passwords inside URLs
/// (`ftp://user:pass@host/` in option 160, 66 or a custom option).
fn redact(c: &mut Config) {
    for u in &mut c.ftp.users {
        u.password_hash = REDACTED.to_string();
    }
    if let Some(t) = &mut c.api.token {
        *t = REDACTED.to_string();
    }
    let d = &mut c.dhcp;
    let urls = [
        &mut d.provisioning_url,
        &mut d.tftp_server,
        &mut d.boot_file,
    ]
    .into_iter()
    .flatten();
    let policy_urls = d
        .policies
        .iter_mut()
        .flat_map(|p| {
            [
                &mut p.provisioning_url,
                &mut p.tftp_server,
                &mut p.boot_file,
            ]
        })
        .flatten();
    for s in urls.chain(policy_urls) {
        *s = redact_url_password(s);
    }
    let options = d
        .options
        .iter_mut()
        .chain(d.policies.iter_mut().flat_map(|p| p.options.iter_mut()));
    for o in options {
        if let Some(t) = &mut o.text {
            *t = redact_url_password(t);
        }
    }
}

/// `scheme://user:secret@host/...` → `scheme://user:<redacted>@host/...`, per URL in `s`
/// (option 160 may hold two, `fw;cfg`).
fn redact_url_password(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(['/', ';']).unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority
            .rfind('@')
            .and_then(|at| authority[..at].find(':').map(|colon| (colon, at)))
        {
            Some((colon, at)) => {
                out.push_str(&authority[..=colon]);
                out.push_str(REDACTED);
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn source_name(args: &CheckArgs) -> String {
    args.config
        .as_ref()
        .map_or("built-in defaults".to_string(), |p| p.display().to_string())
}

fn report(args: &CheckArgs, out: &mut String) -> ExitCode {
    // Exactly what `serve` would run: the file (or defaults) plus PROVBOX_* overrides.
    let config = match Config::load_with_env(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(out, "config: INVALID\n  {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let src = source_name(args);
    let _ = writeln!(out, "config: OK ({src})");
    // The same condition as `Appliance::start`: a pool or a reservation starts DHCP.
    let dhcp_on =
        config.dhcp.enabled && (config.dhcp.pool.is_some() || !config.dhcp.reservations.is_empty());
    for (name, enabled, bind) in [
        ("dhcp", dhcp_on, config.dhcp.bind),
        ("tftp", config.tftp.enabled, config.tftp.bind),
        ("ftp", config.ftp.enabled, config.ftp.bind),
        ("http", config.http.enabled, config.http.bind),
        ("https", config.https.enabled, config.https.bind),
        ("api", config.api.enabled, config.api.bind),
    ] {
        let state = if enabled {
            bind.to_string()
        } else if name == "dhcp" && config.dhcp.enabled {
            "off (no pool and no reservation: set [dhcp] pool)".to_string()
        } else {
            "off".to_string()
        };
        let _ = writeln!(out, "  {name:<6} {state}");
    }
    let allow: Vec<String> = config.access.allow.iter().map(|n| n.to_string()).collect();
    let _ = writeln!(
        out,
        "  files to {}",
        if allow.is_empty() {
            "every client ([access] allow is empty)".to_string()
        } else {
            format!("{} only ([access] allow)", allow.join(", "))
        }
    );
    for (proto, dir) in [
        ("tftp", &config.tftp.upload_dir),
        ("ftp", &config.ftp.upload_dir),
        ("http", &config.http.upload_dir),
    ] {
        if let Some(d) = dir {
            let _ = writeln!(out, "  {proto} uploads into {}", d.display());
        }
    }
    for q in &config.tftp.quirks {
        let cap = |v: Option<u16>| v.map_or("-".to_string(), |v| v.to_string());
        let _ = writeln!(
            out,
            "  tftp quirk for {}: blksize <= {}, windowsize <= {}, tsize {}",
            q.model,
            cap(q.max_blksize),
            cap(q.max_windowsize),
            if q.tsize { "answered" } else { "withheld" }
        );
    }
    // Addresses this DHCP server hands out that the file servers would turn away.
    let mut shut_out: Vec<String> = Vec::new();
    if dhcp_on && !config.access.allow.is_empty() {
        let permits = |ip: std::net::Ipv4Addr| config.access.permits(IpAddr::V4(ip));
        if let Some(p) = &config.dhcp.pool
            && !(permits(p.first) && permits(p.last))
        {
            shut_out.push(format!("the pool {p} (dhcp.pool)"));
        }
        for r in config.dhcp.reservations.iter().filter(|r| !permits(r.ip)) {
            shut_out.push(format!(
                "{} reserved for {} (dhcp.reservation)",
                r.ip, r.mac
            ));
        }
    }
    for what in &shut_out {
        let _ = writeln!(
            out,
            "  WARNING: {what} is outside [access] allow: phones leased there would be refused every file; add its network to [access] allow in {src}"
        );
    }
    let store = StoreView::survey(&config.store.root);
    match &store.files {
        Ok(files) => {
            let count = |k| files.iter().filter(|f| f.kind == k).count();
            let _ = writeln!(
                out,
                "store: {} ({} files: {} firmware, {} config, {} other)",
                config.store.root.display(),
                files.len(),
                count(FileKind::Firmware),
                count(FileKind::Config),
                count(FileKind::Other)
            );
            for f in files.iter().filter(|f| f.kind == FileKind::Firmware) {
                let (path, model, version, size) = (&f.path, &f.model, &f.version, f.size);
                let _ = writeln!(
                    out,
                    "  {path:<40} model {:<8} version {:<14} {size} bytes",
                    model.as_deref().unwrap_or("?"),
                    version.as_deref().unwrap_or("(none in name)")
                );
            }
        }
        Err(e) => {
            let _ = writeln!(out, "store: {e} (it is created on first start)");
        }
    }

    let vars = TemplateVars::from_config(&config);
    let cx = FileCheck::new(&config, &src, &store);
    let mut tally = Tally {
        warnings: shut_out.len(),
        ..Tally::default()
    };
    if args.model.is_some() || args.mac.is_some() {
        let e = provbox_protocols::dhcp::explain(
            &config.dhcp,
            &vars,
            args.model.as_deref(),
            args.mac,
            true,
        );
        let _ = write!(out, "\n{e}");
        cx.files(&e, out, &mut tally);
    } else {
        // The fleet view: every policy's answer, then the answer when none matches.
        for (i, p) in config.dhcp.policies.iter().enumerate() {
            let name = p.display_name(i);
            let _ = writeln!(out, "\n== dhcp.policy[{i}] \"{name}\" ==");
            let e = explain_policy(&config, &vars, i, p);
            let _ = write!(out, "{e}");
            cx.files(&e, out, &mut tally);
        }
        let _ = writeln!(out, "\n== no policy matched: the [dhcp] defaults ==");
        let mut none = config.dhcp.clone();
        none.policies.clear();
        let e = provbox_protocols::dhcp::explain(&none, &vars, None, None, true);
        let _ = write!(out, "{e}");
        cx.files(&e, out, &mut tally);
    }
    tally.summary(out)
}

/// One policy's answer, as if a phone it matches asked. The phone is made up from the
/// policy's own match: its model text as options 60/77 (so `{model}` is filled as for a
/// real phone) and its MAC if it names one. The policy is explained on its own, so an
/// earlier policy or an option 82 match cannot hide it.
fn explain_policy(config: &Config, vars: &TemplateVars, i: usize, policy: &Policy) -> Explanation {
    let m = &policy.matcher;
    let model = m
        .vendor_class
        .as_deref()
        .or(m.model.as_deref())
        .or(m.user_class.as_deref());
    let mut alone = config.dhcp.clone();
    let mut p = policy.clone();
    p.matcher = Match::default();
    alone.policies = vec![p];
    let mut e = provbox_protocols::dhcp::explain(&alone, vars, model, m.mac, true);
    e.policy = Some((
        policy.display_name(i),
        format!("it matches {}", describe(m)),
    ));
    e.policy_index = Some(i);
    e
}

/// A policy's match in words.
fn describe(m: &Match) -> String {
    let how = if m.exact { "equal to" } else { "containing" };
    let mut parts = Vec::new();
    let text = [
        ("option 60", &m.vendor_class),
        ("option 77", &m.user_class),
        ("option 60 or 77", &m.model),
        ("option 82 circuit id", &m.circuit_id),
        ("option 82 remote id", &m.remote_id),
    ];
    for (what, v) in text {
        if let Some(v) = v {
            parts.push(format!("{what} {how} \"{v}\""));
        }
    }
    if let Some(mac) = m.mac {
        parts.push(format!("MAC {mac}"));
    }
    if let Some(p) = &m.mac_prefix {
        parts.push(format!("MAC prefix {p}"));
    }
    if parts.is_empty() {
        "every client (its match is empty)".to_string()
    } else {
        parts.join(" and ")
    }
}

/// The store as a read-only survey, with the index the servers would build from it
/// (`Survey::index`), so lookups answer exactly as `serve` would.
struct StoreView {
    root: PathBuf,
    files: Result<Vec<SurveyFile>, String>,
    index: provbox_storage::Index,
}

/// How a path was found.
enum Found<'a> {
    Exact(&'a SurveyFile),
    /// Same file, other case or MAC spelling.
    Key(&'a SurveyFile),
    /// `450HD.img` → the newest `450HD_<version>.img` in that directory.
    Alias(&'a SurveyFile),
}

impl StoreView {
    fn survey(root: &Path) -> StoreView {
        match provbox_storage::store::survey(root) {
            Ok(s) => StoreView {
                root: root.to_path_buf(),
                files: Ok(s.files),
                index: s.index,
            },
            Err(e) => StoreView {
                root: root.to_path_buf(),
                files: Err(e.to_string()),
                index: provbox_storage::Index::default(),
            },
        }
    }

    fn find(&self, rel: &str) -> Option<Found<'_>> {
        let entry = self.index.find(rel)?;
        let f = self
            .files
            .as_ref()
            .ok()?
            .iter()
            .find(|f| f.path == entry.path)?;
        Some(if f.path == rel {
            Found::Exact(f)
        } else if names::lookup_key(&f.path) == names::lookup_key(rel) {
            Found::Key(f)
        } else {
            Found::Alias(f)
        })
    }
}

/// `dir/name` → (`dir`, `name`); `""` for the root.
fn split_dir(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

/// `/` for the root, else `/dir/`.
fn shown_dir(dir: &str) -> String {
    if dir.is_empty() {
        "/".to_string()
    } else {
        format!("/{dir}/")
    }
}

#[derive(Default)]
struct Tally {
    ok: usize,
    missing: usize,
    not_checked: usize,
    warnings: usize,
}

impl Tally {
    fn summary(&self, out: &mut String) -> ExitCode {
        let Tally {
            ok,
            missing,
            not_checked,
            warnings,
        } = self;
        let _ = write!(
            out,
            "\nfiles: {ok} found, {missing} missing, {not_checked} not checked; {warnings} warning{}",
            if *warnings == 1 { "" } else { "s" }
        );
        if *missing > 0 {
            let _ = writeln!(
                out,
                " — FAILED (exit {EX_MISSING}): a phone would be sent a file the store does not have"
            );
            ExitCode::from(EX_MISSING)
        } else {
            let _ = writeln!(out);
            ExitCode::SUCCESS
        }
    }
}

/// What the file checks need from the config.
struct FileCheck<'a> {
    config: &'a Config,
    /// The config file's name, for "change ... in FILE".
    src: &'a str,
    store: &'a StoreView,
    /// Addresses of this machine: a URL naming one is served by this provbox.
    local: Vec<IpAddr>,
}

impl<'a> FileCheck<'a> {
    fn new(config: &'a Config, src: &'a str, store: &'a StoreView) -> Self {
        Self {
            config,
            src,
            store,
            local: local_addrs(),
        }
    }

    /// Derives the URLs a phone would fetch from one answer's 160 and 66/67, and checks
    /// each file.
    fn files(&self, e: &Explanation, out: &mut String, tally: &mut Tally) {
        let text = |code: u8| {
            e.options
                .iter()
                .find(|(c, ..)| *c == code)
                .map(|(_, _, v)| v.as_str())
                .filter(|v| !v.starts_with("hex "))
        };
        let (o160, o66, o67) = (text(160), text(66), text(67));
        if o160.is_none() && o66.is_none() && o67.is_none() {
            let _ = writeln!(
                out,
                "files: none named (no option 160, 66 or 67 in this answer)"
            );
            return;
        }
        let _ = writeln!(out, "files a phone would fetch:");
        // The phone fills <MODEL>/<MAC> itself; unknown ones stay visible in the paths.
        let model = e.detected_model.as_deref().unwrap_or("<MODEL>");
        let mac = e.mac.map_or("<MAC>".to_string(), |m| m.bare());
        let server = e
            .options
            .iter()
            .find(|(c, ..)| *c == 54)
            .map(|(_, _, v)| v.clone())
            .unwrap_or_default();
        let mut groups = Vec::new();
        if let Some(v) = o160 {
            let field = self.field(e.policy_index, 160);
            groups.push((
                "option 160",
                field,
                url::from_option160(v, model, &mac).map(Some),
            ));
        }
        if o66.is_some() || o67.is_some() {
            let field = match (o66, o67) {
                (Some(_), Some(_)) => format!(
                    "{}, {}",
                    self.field(e.policy_index, 66),
                    self.field(e.policy_index, 67)
                ),
                (Some(_), None) => self.field(e.policy_index, 66),
                _ => self.field(e.policy_index, 67),
            };
            groups.push((
                "options 66/67",
                field,
                url::from_66_67(o66, o67, model, &mac),
            ));
        }
        for (label, field, urls) in groups {
            match urls {
                Ok(Some(u)) => {
                    for (what, url) in [("firmware", &u.firmware), ("config", &u.config)] {
                        let _ = writeln!(out, "  {what:<8} {url}   ({label}, {field})");
                        let verdict = self.check(url, &server, &field);
                        tally.count(&verdict);
                        let _ = writeln!(out, "           {verdict}");
                    }
                }
                Ok(None) => {
                    tally.warnings += 1;
                    let _ = writeln!(
                        out,
                        "  WARNING: option 67 is sent without option 66 ({field}): a 400HD fetches 67 only from the server 66 names; set tftp_server beside it in {}",
                        self.src
                    );
                }
                Err(err) => {
                    tally.missing += 1;
                    let _ = writeln!(
                        out,
                        "  BROKEN: a phone cannot use the URL of {label}: {err}; fix {field} in {}",
                        self.src
                    );
                }
            }
        }
    }

    /// Where the value of `code` comes from, as a config key.
    fn field(&self, policy: Option<usize>, code: u8) -> String {
        let d = &self.config.dhcp;
        let (key, pick): (&str, fn(&Policy) -> &Option<String>) = match code {
            160 => ("provisioning_url", |p| &p.provisioning_url),
            66 => ("tftp_server", |p| &p.tftp_server),
            _ => ("boot_file", |p| &p.boot_file),
        };
        let global = match code {
            160 => &d.provisioning_url,
            66 => &d.tftp_server,
            _ => &d.boot_file,
        };
        // The order of `options::plan`: a policy's extra options win over its templates,
        // which win over the global extra options; a policy replaces the defaults whole.
        match policy.and_then(|i| d.policies.get(i).map(|p| (i, p))) {
            Some((i, p)) if p.options.iter().any(|o| o.code == code) => {
                format!("dhcp.policy[{i}].option code {code}")
            }
            Some((i, p)) if pick(p).is_some() => format!("dhcp.policy[{i}].{key}"),
            None if global.is_some() => format!("dhcp.{key}"),
            _ => format!("dhcp.option code {code}"),
        }
    }

    fn check(&self, url: &ProvUrl, server: &str, field: &str) -> Verdict {
        let path = &url.path;
        for (placeholder, how) in [
            (
                "<MAC>",
                "the phone fills in its own MAC; give --mac to check one phone's file",
            ),
            (
                "{mac}",
                "provbox fills in each client's MAC; give --mac to check one phone's file",
            ),
            (
                "<MODEL>",
                "the phone fills in its own model; give --model to check one model's file",
            ),
        ] {
            if path
                .to_ascii_lowercase()
                .contains(&placeholder.to_ascii_lowercase())
            {
                return Verdict::NotChecked(format!("{placeholder} could not be filled: {how}"));
            }
        }
        if !self.is_appliance(&url.host, server) {
            return Verdict::NotChecked(format!(
                "{} is not on this appliance (neither dhcp.server_ip nor an address of this machine)",
                url.host
            ));
        }
        let (name, enabled, bind) = self.service(url.scheme);
        let port = url.port.unwrap_or(url.scheme.default_port());
        if port != bind.port() {
            return Verdict::NotChecked(format!(
                "port {port} is not provbox's {name} server (that listens on {bind})"
            ));
        }
        let warning = (!enabled).then(|| {
            format!(
                "provbox's {name} server is off ([{name}] enabled = false in {}): phones get no answer; turn it on, or point {field} at another server",
                self.src
            )
        });
        let verdict = match provbox_storage::resolve::resolve(path) {
            Err(reason) => Verdict::Missing(format!(
                "REFUSED: {path} — provbox's servers refuse this path ({reason}); fix {field} in {}",
                self.src
            )),
            Ok(rel) => match self.store.find(&rel) {
                Some(Found::Exact(f)) => Verdict::Ok(format!("ok: {} ({})", f.path, details(f))),
                Some(Found::Key(f)) => Verdict::Ok(format!(
                    "ok: {rel} is {} ({}; names match ignoring case and MAC separators)",
                    f.path,
                    details(f)
                )),
                Some(Found::Alias(f)) => Verdict::Ok(format!(
                    "ok: {rel} resolves to {} ({}), the newest {} image in {}",
                    f.path,
                    details(f),
                    f.model.as_deref().unwrap_or("?"),
                    shown_dir(split_dir(&f.path).0)
                )),
                None => Verdict::Missing(self.missing(&rel, field)),
            },
        };
        match warning {
            Some(w) => Verdict::Warning(Box::new(verdict), w),
            None => verdict,
        }
    }

    /// The MISSING line: what is missing and what to put where.
    fn missing(&self, rel: &str, field: &str) -> String {
        let root = self.store.root.display();
        let fix = format!("or change {field} in {}", self.src);
        if let Err(e) = &self.store.files {
            return format!(
                "MISSING: {rel} — the store cannot be read ({e}); create it and put {rel} there, {fix}"
            );
        }
        let (dir, name) = split_dir(rel);
        let shown = shown_dir(dir);
        let parsed = names::parse_image_name(name);
        match (parsed.model, parsed.version) {
            (Some(model), None) => format!(
                "MISSING: {rel} — no firmware for model {model} in {shown}; put {model}_<version>.img (e.g. UC{model}_3.4.8.198.img) in {root}{shown}, {fix}"
            ),
            (Some(model), Some(_)) => {
                let have = self
                    .store
                    .index
                    .newest_image(dir, &model)
                    .map_or(format!("no {model} image at all"), |f| {
                        format!("its newest {model} image is {}", f.path)
                    });
                format!(
                    "MISSING: {rel} — not in the store ({have} in {shown}); put {name} in {root}{shown}, {fix}"
                )
            }
            _ => format!(
                "MISSING: {rel} — not in the store {root} (names match ignoring case and MAC separators); put it there, {fix}"
            ),
        }
    }

    /// The host names this provbox: `{server}` as expanded, or an address of this box.
    fn is_appliance(&self, host: &str, server: &str) -> bool {
        if host.eq_ignore_ascii_case(server) || host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        host.parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || self.local.contains(&ip))
    }

    fn service(&self, scheme: Scheme) -> (&'static str, bool, SocketAddr) {
        let c = self.config;
        match scheme {
            Scheme::Tftp => ("tftp", c.tftp.enabled, c.tftp.bind),
            Scheme::Ftp => ("ftp", c.ftp.enabled, c.ftp.bind),
            Scheme::Http => ("http", c.http.enabled, c.http.bind),
            Scheme::Https => ("https", c.https.enabled, c.https.bind),
        }
    }
}

/// `version 3.4.8.198, 123 bytes`.
fn details(f: &SurveyFile) -> String {
    match &f.version {
        Some(v) if f.kind == FileKind::Firmware => format!("version {v}, {} bytes", f.size),
        None if f.kind == FileKind::Firmware => {
            format!("no version in its name, {} bytes", f.size)
        }
        _ => format!("{} bytes", f.size),
    }
}

/// One file's outcome.
enum Verdict {
    Ok(String),
    NotChecked(String),
    Missing(String),
    /// An outcome with something else to fix.
    Warning(Box<Verdict>, String),
}

impl Tally {
    fn count(&mut self, v: &Verdict) {
        match v {
            Verdict::Ok(_) => self.ok += 1,
            Verdict::NotChecked(_) => self.not_checked += 1,
            Verdict::Missing(_) => self.missing += 1,
            Verdict::Warning(inner, _) => {
                self.warnings += 1;
                self.count(inner);
            }
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Ok(s) | Verdict::Missing(s) => f.write_str(s),
            Verdict::NotChecked(s) => write!(f, "not checked: {s}"),
            Verdict::Warning(v, w) => write!(f, "{v}\n           WARNING: {w}"),
        }
    }
}

/// This machine's IPv4 addresses (what a DHCPv4 option can name), from the interface
/// list the DHCP server binds by.
fn local_addrs() -> Vec<IpAddr> {
    provbox_protocols::dhcp::socket::interfaces()
        .into_iter()
        .map(|(_, ip, _)| IpAddr::V4(ip))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(
            redact_url_password("ftp://u:s3cret@{server}/x.img;ftp://v:p@h/<MAC>.cfg"),
            "ftp://u:<redacted>@{server}/x.img;ftp://v:<redacted>@h/<MAC>.cfg"
        );
        assert_eq!(
            redact_url_password("http://u@h/a:b@c.cfg"),
            "http://u@h/a:b@c.cfg"
        );
        assert_eq!(redact_url_password("445HD.img"), "445HD.img");
    }
}
