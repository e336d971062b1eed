//! The Debian package and the release archive that `scripts/package.sh` builds, here from this
//! run's debug binary (no release build): what they hold and with which modes, the unit's
//! command line and hardening, the conffiles and maintainer scripts, lintian's verdict, and
//! that the packaged binary started the way the unit starts it, with the packaged config,
//! serves a deployed function.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{client, guest, repo_root};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// `path -> (mode, owner)` of every entry of a .deb's data archive.
fn deb_contents(deb: &Path) -> BTreeMap<String, (String, String)> {
    run(Command::new("dpkg-deb").arg("--contents").arg(deb))
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let path = fields[5].trim_start_matches('.').trim_end_matches('/').to_string();
            (path, (fields[0].to_string(), fields[1].to_string()))
        })
        .collect()
}

#[tokio::test]
async fn the_deb_installs_a_hardened_service_whose_binary_and_config_serve_a_function() {
    let temp = tempfile::tempdir().expect("temp dir");
    let out = temp.path().join("package");
    run(Command::new("bash")
        .arg(repo_root().join("scripts/package.sh"))
        .args(["--target", "x86_64", "--fast", "--binary", env!("CARGO_BIN_EXE_ledge"), "--out"])
        .arg(&out));
    let deb = out.join(format!("ledge_{VERSION}_amd64.deb"));
    let archive = format!("ledge-{VERSION}-x86_64-linux.tar.gz");
    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).expect("SHA256SUMS");
    let named: Vec<&str> = sums.lines().map(|line| line.split_whitespace().nth(1).expect("name")).collect();
    assert_eq!(named, [format!("ledge_{VERSION}_amd64.deb"), archive.clone()], "bare names in SHA256SUMS");
    run(Command::new("sha256sum").args(["--check", "--quiet", "SHA256SUMS"]).current_dir(&out));

    // Files and modes: everything root's, the binary executable, configuration under /etc,
    // nothing under /var (the data dir is the ledge user's, made at install and at start).
    let contents = deb_contents(&deb);
    for (path, mode) in [
        ("/usr/bin/ledge", "-rwxr-xr-x"),
        ("/usr/lib/systemd/system/ledge.service", "-rw-r--r--"),
        // Root's alone: it may hold secrets (OTEL_EXPORTER_OTLP_HEADERS); systemd reads it as root.
        ("/etc/default/ledge", "-rw-------"),
        ("/etc/ledge/policies/default.toml", "-rw-r--r--"),
        ("/usr/share/man/man1/ledge.1.gz", "-rw-r--r--"),
        ("/usr/share/man/man1/ledge-serve.1.gz", "-rw-r--r--"),
        ("/usr/share/man/man1/ledge-token-mint.1.gz", "-rw-r--r--"),
        ("/usr/share/bash-completion/completions/ledge", "-rw-r--r--"),
        ("/usr/share/zsh/vendor-completions/_ledge", "-rw-r--r--"),
        ("/usr/share/fish/vendor_completions.d/ledge.fish", "-rw-r--r--"),
        ("/usr/share/doc/ledge/copyright", "-rw-r--r--"),
    ] {
        let entry = contents.get(path).unwrap_or_else(|| panic!("{path} missing from the package: {contents:?}"));
        assert_eq!(entry, &(mode.to_string(), "0/0".to_string()), "{path}");
    }
    assert!(contents.values().all(|(_, owner)| owner == "0/0"), "everything is root's");
    assert!(!contents.keys().any(|path| path.starts_with("/var")), "the package ships no data dir");
    let man_pages = contents.keys().filter(|path| path.starts_with("/usr/share/man/man1/ledge")).count();
    assert!(man_pages >= 30, "a man page per subcommand: {man_pages}");

    // Control: conffiles, dependencies, and what the maintainer scripts do.
    let control = temp.path().join("control");
    run(Command::new("dpkg-deb").arg("--control").arg(&deb).arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("conffiles");
    assert_eq!(conffiles.lines().collect::<Vec<_>>(), ["/etc/default/ledge", "/etc/ledge/policies/default.toml"]);
    let fields = std::fs::read_to_string(control.join("control")).expect("control");
    for field in ["Package: ledge\n", &format!("Version: {VERSION}\n"), "Architecture: amd64\n"] {
        assert!(fields.contains(field), "control lacks {field:?}:\n{fields}");
    }
    assert!(fields.lines().any(|l| l.starts_with("Depends:") && l.contains("adduser")), "{fields}");
    let script = |name: &str| {
        let path = control.join(name);
        run(Command::new("sh").arg("-n").arg(&path));
        std::fs::read_to_string(path).expect("maintainer script")
    };
    let postinst = script("postinst");
    for step in [
        "adduser --system --group",
        "install -d -m 0700 -o ledge -g ledge /var/lib/ledge",
        "deb-systemd-helper enable ledge.service",
        "_dh_action=restart",
        "_dh_action=start",
    ] {
        assert!(postinst.contains(step), "postinst lacks `{step}`:\n{postinst}");
    }
    let postrm = script("postrm");
    let purge = postrm.split("if [ \"$1\" = purge ]").nth(1).expect("a purge branch in postrm");
    assert!(purge.contains("rm -rf /var/lib/ledge"), "purge removes the data:\n{postrm}");
    assert!(!postrm.replace(purge, "").contains("/var/lib/ledge"), "remove keeps the data:\n{postrm}");
    // An upgrade restarts the service after a drain (postinst, above); only a removal stops it.
    let prerm = script("prerm");
    let stop = prerm.find("deb-systemd-invoke stop ledge.service").expect("prerm stops the service on removal");
    assert!(
        prerm[..stop].ends_with("[ \"$1\" = remove ]; then\n\t"),
        "prerm stops the service on upgrade too:\n{prerm}"
    );

    // The unit: how it starts ledge and the hardening it keeps.
    let root = temp.path().join("root");
    run(Command::new("dpkg-deb").arg("--extract").arg(&deb).arg(&root));
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/ledge.service")).expect("unit");
    let exec_start =
        "ExecStart=/usr/bin/ledge serve --data-dir /var/lib/ledge --policies /etc/ledge/policies $LEDGE_OPTS";
    for line in [
        exec_start,
        "EnvironmentFile=-/etc/default/ledge",
        "User=ledge",
        "StateDirectory=ledge",
        "StateDirectoryMode=0700",
        "ProtectSystem=strict",
        "NoNewPrivileges=true",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "KillSignal=SIGTERM",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks `{line}`:\n{unit}");
    }
    let directive = |name: &str| unit.lines().any(|l| l.starts_with(&format!("{name}=")));
    assert!(!directive("MemoryMax"), "no memory cap imposed by default on amd64");
    assert!(!directive("MemoryDenyWriteExecute"), "wasmtime writes the code it compiles");

    // The archive holds the same binary, the unit, the flags file, man pages and completions.
    let listing = run(Command::new("tar").arg("-tvzf").arg(out.join(&archive)));
    let top = archive.trim_end_matches(".tar.gz");
    for (file, mode) in [
        ("ledge", "-rwxr-xr-x"),
        ("ledge.service", "-rw-r--r--"),
        // A template here (no secrets yet): whoever installs it as /etc/default/ledge sets its mode.
        ("ledge.default", "-rw-r--r--"),
        ("man/ledge-serve.1.gz", "-rw-r--r--"),
        ("completions/ledge.bash", "-rw-r--r--"),
    ] {
        let path = format!("{top}/{file}");
        assert!(
            listing.lines().any(|l| l.starts_with(mode) && l.ends_with(&format!(" {path}"))),
            "{path} ({mode}) not in the archive:\n{listing}"
        );
    }

    // lintian: no errors (warnings are printed, not fatal).
    let lintian = Command::new("lintian").args(["--fail-on", "error"]).arg(&deb).output().expect("lintian installed");
    let verdict = String::from_utf8_lossy(&lintian.stdout);
    assert!(lintian.status.success() && !verdict.lines().any(|l| l.starts_with("E:")), "lintian:\n{verdict}");

    serves_as_the_unit_starts_it(&root, &unit).await;
}

/// Starts the packaged binary with the unit's command line and the packaged flags file, moved
/// to a temp data dir and an ephemeral loopback port, and deploys and invokes `hello`.
async fn serves_as_the_unit_starts_it(root: &Path, unit: &str) {
    let flags = run(Command::new("sh")
        .arg("-c")
        .arg(r#". "$1" && printf '%s' "$LEDGE_OPTS""#)
        .arg("sh")
        .arg(root.join("etc/default/ledge")));
    let command_line = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    let data_dir = root.join("var/lib/ledge");
    let mut args: Vec<String> = Vec::new();
    for word in command_line.split_whitespace().skip(1) {
        match word {
            "$LEDGE_OPTS" => args.extend(flags.split_whitespace().map(String::from)),
            "/var/lib/ledge" => args.push(data_dir.display().to_string()),
            "/etc/ledge/policies" => args.push(root.join("etc/ledge/policies").display().to_string()),
            word => args.push(word.to_string()),
        }
    }
    let listen = args.iter().position(|a| a == "--listen").expect("the packaged flags name --listen");
    assert_eq!(args[listen + 1], "127.0.0.1:8080", "the package answers this machine only until told otherwise");
    args[listen + 1] = "127.0.0.1:0".into();
    let mut child = Command::new(root.join("usr/bin/ledge"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the packaged binary runs");
    let stdout = child.stdout.take().expect("stdout");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("ledge listening on ") {
                let _ = sender.send(url.to_string());
            }
        }
    });
    let url = receiver.recv_timeout(Duration::from_secs(60)).expect("the packaged ledge started");
    let token = std::fs::read_to_string(data_dir.join("admin.token")).expect("admin token");
    let auth = format!("Bearer {}", token.trim());
    let component = std::fs::read(guest("hello")).expect("hello.wasm");
    let deployed = client()
        .put(format!("{url}/v1/functions/hello"))
        .header("authorization", &auth)
        .body(component)
        .send()
        .await
        .expect("deploy");
    assert_eq!(deployed.status(), 201);
    // The packaged default policy keeps functions private: the token opens it.
    let anonymous = client().get(format!("{url}/fn/hello/")).send().await.expect("invoke");
    assert_eq!(anonymous.status(), 401);
    let invoked = client().get(format!("{url}/fn/hello/pkg")).header("authorization", &auth).send().await.unwrap();
    assert_eq!(invoked.status(), 200);
    assert_eq!(invoked.text().await.unwrap(), "Hello from ledge! You asked for /pkg\n");
    let _ = child.kill();
    let _ = child.wait();
}
