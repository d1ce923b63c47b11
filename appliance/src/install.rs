//! `provbox install-systemd`: installs provbox as a hardened system service: the
//! binary, the unit (`packaging/provbox.service`, embedded at build time), a starting
//! config that is never overwritten, the annotated example, and the store directory.
//! Writing to /etc and /usr/local needs root; `--prefix` installs into another root
//! (package builds, tests).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};

/// The unit template; `@BIN@`, `@CONFIG@` and `@IDENTITY@` are filled in.
pub const UNIT_TEMPLATE: &str = include_str!("../../packaging/provbox.service");
/// The annotated example config, installed beside the real one.
pub const EXAMPLE_CONFIG: &str = include_str!("../../provbox.example.toml");

const CONFIG_PATH: &str = "/etc/provbox/provbox.toml";
const STATE_DIR: &str = "/var/lib/provbox";

#[derive(Debug, clap::Args)]
pub struct InstallSystemdArgs {
    /// Install under this root directory instead of the running system's /.
    #[arg(long, default_value = "/")]
    pub prefix: PathBuf,
    /// Run as this static system user (created when missing) instead of a systemd
    /// DynamicUser.
    #[arg(long)]
    pub user: Option<String>,
    /// Where the binary goes (a copy of the one running this command).
    #[arg(long, default_value = "/usr/local/bin/provbox")]
    pub bin: PathBuf,
    /// The store directory named in a newly written config.
    #[arg(long, default_value = "/srv/provbox/store")]
    pub store: PathBuf,
    /// Replace an existing /etc/provbox/provbox.toml (kept by default).
    #[arg(long)]
    pub force_config: bool,
}

/// The unit file for `bin`, `config` and an optional static user.
pub fn unit_text(bin: &Path, config: &Path, user: Option<&str>) -> String {
    let identity = match user {
        Some(u) => format!("User={u}\nGroup={u}"),
        None => "DynamicUser=yes".to_string(),
    };
    UNIT_TEMPLATE
        .replace("@BIN@", &bin.display().to_string())
        .replace("@CONFIG@", &config.display().to_string())
        .replace("@IDENTITY@", &identity)
}

/// The starting config: the store and state paths, DHCP left off until a pool is set.
pub fn default_config(store: &Path) -> String {
    format!(
        r#"# {CONFIG_PATH}, written by `provbox install-systemd`; it is never overwritten.
# Every field with its default: /etc/provbox/provbox.example.toml. After a change:
#   provbox check --config {CONFIG_PATH} && systemctl restart provbox
# PROVBOX_<SECTION>_<FIELD> variables (e.g. in `systemctl edit provbox`) override it.

[store]
root = "{store}"

[state]
dir = "{STATE_DIR}"

[dhcp]
# DHCP starts once a pool is set. On a provisioning VLAN set at least:
# interface = "eth1"                      # serve only this interface
# server_ip = "192.0.2.1"                 # this host's address on that VLAN
# pool = "192.0.2.100-192.0.2.199"
# router = "192.0.2.1"
# provisioning_url = "http://{{server}}/{{model}}.img;<MAC>.cfg"
"#,
        store = store.display()
    )
}

/// `root` joined with an absolute system path.
fn under(root: &Path, abs: &Path) -> PathBuf {
    root.join(abs.strip_prefix("/").unwrap_or(abs))
}

fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("provbox-new");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename into {}", path.display()))
}

fn valid_user(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name.len() <= 32
}

pub async fn run(args: InstallSystemdArgs) -> anyhow::Result<ExitCode> {
    install(&args).map_err(|e| {
        let root = args.prefix == Path::new("/");
        if root {
            e.context("install-systemd writes to /etc, /usr/local and /srv: run it as root (sudo)")
        } else {
            e
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

fn install(args: &InstallSystemdArgs) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(u) = &args.user
        && !valid_user(u)
    {
        bail!("`--user {u}` is not a valid system user name (lowercase letters, digits, _ and -)");
    }
    for (flag, p) in [("--bin", &args.bin), ("--store", &args.store)] {
        if !p.is_absolute() {
            bail!("{flag} {} must be an absolute path", p.display());
        }
    }
    let root = &args.prefix;
    let system = root == Path::new("/");

    // The binary: a copy of this one, renamed into place so a running service keeps its file.
    let exe = std::env::current_exe().context("cannot find the running provbox binary")?;
    let bin = under(root, &args.bin);
    let same = std::fs::canonicalize(&bin).ok() == std::fs::canonicalize(&exe).ok();
    if !same {
        if let Some(dir) = bin.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = bin.with_extension("provbox-new");
        std::fs::copy(&exe, &tmp)
            .with_context(|| format!("cannot copy {} to {}", exe.display(), tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot chmod {}", tmp.display()))?;
        std::fs::rename(&tmp, &bin)
            .with_context(|| format!("cannot rename into {}", bin.display()))?;
    }
    println!("binary   {}", bin.display());

    let unit = under(root, Path::new("/etc/systemd/system/provbox.service"));
    write(
        &unit,
        &unit_text(&args.bin, Path::new(CONFIG_PATH), args.user.as_deref()),
        0o644,
    )?;
    println!("unit     {}", unit.display());

    write(
        &under(root, Path::new("/etc/provbox/provbox.example.toml")),
        EXAMPLE_CONFIG,
        0o644,
    )?;
    let config = under(root, Path::new(CONFIG_PATH));
    if config.exists() && !args.force_config {
        println!("config   {} (kept)", config.display());
    } else {
        write(&config, &default_config(&args.store), 0o644)?;
        println!("config   {}", config.display());
    }

    let store = under(root, &args.store);
    std::fs::create_dir_all(&store)
        .with_context(|| format!("cannot create {}", store.display()))?;
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot chmod {}", store.display()))?;
    println!(
        "store    {} (put .img and .cfg files here)",
        store.display()
    );

    if let Some(user) = &args.user {
        let add = [
            "useradd",
            "--system",
            "--home-dir",
            STATE_DIR,
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            user,
        ];
        let exists = Command::new("getent")
            .args(["passwd", user])
            .output()
            .is_ok_and(|o| o.status.success());
        if !system {
            println!("user     create it in the target system: {}", add.join(" "));
        } else if exists {
            println!("user     {user} (exists)");
        } else {
            let status = Command::new(add[0])
                .args(&add[1..])
                .status()
                .with_context(|| format!("cannot run {}", add.join(" ")))?;
            if !status.success() {
                bail!("`{}` failed ({status})", add.join(" "));
            }
            println!("user     {user} (created)");
        }
    }
    println!(
        "\nNext: edit {CONFIG_PATH} ([dhcp] interface, server_ip, pool), check it with\n  {} check --config {CONFIG_PATH}\nthen start the service:\n  systemctl daemon-reload && systemctl enable --now provbox\n  journalctl -u provbox -f",
        args.bin.display()
    );
    Ok(())
}
