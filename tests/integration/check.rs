//! `ricochet check` (SPEC §1): every error of every endpoint in one run, each with the
//! endpoint, the field and its line:column in the file, each once; `serve` refusing
//! the same file with the same messages; `serve`'s flags winning over the file; and
//! `render` reading its event from standard input.

use std::time::Duration;

use crate::harness::{endpoint, event, run, run_with_input, ServerOpts, TestReceiver, TestServer};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Where `needle` starts in `text`, as the 1-based line:column of the character after
/// `after` within that occurrence (the value after the key).
fn pos(text: &str, needle: &str, after: &str) -> String {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the config"));
    let at = at + needle.find(after).expect("`after` is in `needle`") + after.len();
    let line = text[..at].matches('\n').count() + 1;
    let col = text[..at].rsplit('\n').next().unwrap().chars().count() + 1;
    format!("{line}:{col}")
}

const BROKEN: &str = r#"[server]
admin = "127.0.0.1:0"
allow_private_networks = true

[[endpoint]]
name = "dur"
events = ["t"]
url = "http://127.0.0.1:9/d"
timeout = "10sec"

[[endpoint]]
name = "tpl"
events = ["t"]
url = "http://127.0.0.1:9/t?id={Id"

[[endpoint]]
name = "verb"
events = ["t"]
url = "http://127.0.0.1:9/v"
method = "DELETE"

[[endpoint]]
name = "agent"
events = ["t"]
url = "http://127.0.0.1:9/a"
headers = { "X-Fine" = "1", "User-Agent" = "mine" }

[[endpoint]]
name = "secret"
events = ["t"]
url = "http://127.0.0.1:9/s"
signing_secret = "not-a-secret"
max_in_flight = 0

[[endpoint]]
name = "noevents"
url = "http://127.0.0.1:9/n"
body = "{Id"

[[endpoint]]
name = "fine"
events = ["t"]
url = "http://127.0.0.1:9/f"
"#;

#[test]
fn check_reports_every_endpoint_error_with_field_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, BROKEN).unwrap();
    let p = path.to_str().unwrap();
    let out = run(&["check", "--config", p], Duration::from_secs(30));
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));

    // Each error: FILE:LINE:COLUMN: endpoint NAME: field `F`: ...
    let want = [
        (
            pos(BROKEN, "timeout = \"10sec\"", "= "),
            "endpoint dur: field `timeout`: bad duration unit in \"10sec\"",
        ),
        (
            pos(BROKEN, "url = \"http://127.0.0.1:9/t?id={Id\"", "= "),
            "endpoint tpl: field `url`: ",
        ),
        (
            pos(BROKEN, "method = \"DELETE\"", "= "),
            "endpoint verb: field `method`: unknown variant `DELETE`",
        ),
        (
            pos(BROKEN, "\"User-Agent\" = \"mine\"", "= "),
            "endpoint agent: field `headers.User-Agent`: User-Agent is set by ricochet",
        ),
        (
            pos(BROKEN, "signing_secret = \"not-a-secret\"", "= "),
            "endpoint secret: field `signing_secret`: each secret must be whsec_<base64>",
        ),
        (
            pos(BROKEN, "max_in_flight = 0", "= "),
            "endpoint secret: field `max_in_flight`: must be at least 1",
        ),
        // A required key missing: said, and the rest is checked all the same.
        (
            pos(BROKEN, "[[endpoint]]\nname = \"noevents\"", ""),
            "endpoint noevents: missing field `events`",
        ),
        (
            pos(BROKEN, "body = \"{Id\"", "= "),
            "endpoint noevents: field `body`: ",
        ),
    ];
    let errors: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with(&format!("{p}:")))
        .collect();
    for (at, msg) in &want {
        let prefix = format!("{p}:{at}: {msg}");
        let n = errors.iter().filter(|l| l.starts_with(&prefix)).count();
        assert_eq!(n, 1, "want exactly one {prefix:?} in:\n{stdout}");
    }
    assert_eq!(errors.len(), want.len(), "unexpected errors:\n{stdout}");
    // The template error also says where in the template, with a caret.
    assert!(
        stdout.contains("endpoint tpl: field `url`: line 1, column "),
        "{stdout}"
    );
    assert!(!stdout.contains("endpoint fine"), "{stdout}");
}

#[test]
fn serve_refuses_a_bad_config_with_the_same_messages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    // The same endpoints, with the data dir and socket in the scratch directory; its
    // errors are compared with what `check` says of this very file.
    let config = BROKEN.replacen(
        "[server]\n",
        &format!(
            "[server]\ndata_dir = {:?}\nsocket = {:?}\n",
            dir.path().join("data"),
            dir.path().join("s.sock")
        ),
        1,
    );
    std::fs::write(&path, &config).unwrap();
    let p = path.to_str().unwrap();
    let check = run(&["check", "--config", p], Duration::from_secs(30));
    assert_eq!(check.status.code(), Some(1));
    let errors: Vec<String> = text(&check.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("{p}:")))
        .map(str::to_string)
        .collect();
    assert_eq!(errors.len(), 8, "{}", text(&check.stdout));

    let serve = run(&["serve", "--config", p], Duration::from_secs(30));
    let stderr = text(&serve.stderr);
    assert_eq!(serve.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("invalid configuration"), "{stderr}");
    for e in &errors {
        assert_eq!(stderr.matches(e.as_str()).count(), 1, "{e:?} in:\n{stderr}");
    }
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created for a bad config"
    );
}

/// A template error's source line may hold a credential that no name rule recognises
/// (a custom header's, a URL's `?t=`, a body's): `check` shows it to whoever runs it on
/// the file, `serve`'s refusal, which goes to the log, gives the position without it.
#[test]
fn serve_refuses_a_template_error_without_its_source_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leaky.toml");
    let config = format!(
        "[server]\ndata_dir = {:?}\nsocket = {:?}\nadmin = \"127.0.0.1:0\"\n\n\
         [[endpoint]]\nname = \"a\"\nevents = [\"t\"]\n\
         url = \"http://partner.example/pb?t=QUERYSECRET&o={{Id\"\n\
         headers = {{ X-Partner-Ref = \"HEADERSECRET {{zz(\" }}\n\
         body = \"{{\\\"k\\\": \\\"BODYSECRET\\\", {{Id\"\n",
        dir.path().join("data"),
        dir.path().join("s.sock")
    );
    std::fs::write(&path, &config).unwrap();
    let p = path.to_str().unwrap();
    let check = run(&["check", "--config", p], Duration::from_secs(30));
    let stdout = text(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{stdout}");
    for secret in ["QUERYSECRET", "HEADERSECRET", "BODYSECRET"] {
        assert!(stdout.contains(secret), "check shows the line: {stdout}");
    }

    let serve = run(&["serve", "--config", p], Duration::from_secs(30));
    let stderr = text(&serve.stderr);
    assert_eq!(serve.status.code(), Some(1), "{stderr}");
    for secret in ["QUERYSECRET", "HEADERSECRET", "BODYSECRET"] {
        assert!(!stderr.contains(secret), "{secret} in the log:\n{stderr}");
    }
    // Each problem still says where it is, and how to see the line.
    for field in ["url", "headers.X-Partner-Ref", "body"] {
        let prefix = format!("endpoint a: field `{field}`: line 1, column ");
        assert_eq!(
            stderr.matches(&prefix).count(),
            1,
            "{prefix:?} in:\n{stderr}"
        );
    }
    assert!(
        stderr.contains(&format!("`ricochet check --config {p}` shows them")),
        "{stderr}"
    );
}

#[test]
fn check_accepts_a_good_config_and_stops_at_a_syntax_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[[endpoint]]\nname = \"a\"\nevents = [\"t\"]\nurl = \"http://h/{Id}\"\nheaders = { X-A = \"{Id}\" }\n\n[[endpoint]]\nname = \"b\"\nevents = [\"*\"]\nurl = \"https://h/\"\n",
    )
    .unwrap();
    let out = run(
        &["check", "--config", good.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("ok (2 endpoints)"),
        "{}",
        text(&out.stdout)
    );

    // Not TOML: one error, where it is; nothing past it can be read.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[endpoint]]\nname = \"a\nevents = [\"t\"]\n\n[[endpoint]]\nname = \"b\"\ntimeout = \"x\"\n",
    )
    .unwrap();
    let out = run(
        &["check", "--config", bad.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1));
    // On stdout, as every other problem of the file is.
    let said = text(&out.stdout);
    assert!(
        said.starts_with(&format!("{}: TOML syntax error at 2:10: ", bad.display())),
        "{said}"
    );
    assert!(!said.contains("timeout"), "{said}");
}

/// `check` warns, as `serve` does when it starts, of an endpoint whose retry schedule
/// runs past the retention (retries due after it expire unsent), and still passes it.
#[test]
fn check_warns_of_a_schedule_that_runs_past_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[server]\nretention = \"1d\"\n\n[[endpoint]]\nname = \"a\"\nevents = [\"t\"]\nurl = \"http://h/\"\n\n[[endpoint]]\nname = \"b\"\nevents = [\"t\"]\nurl = \"http://h/\"\nretry = [\"1h\"]\n",
    )
    .unwrap();
    let out = run(
        &["check", "--config", path.to_str().unwrap()],
        Duration::from_secs(30),
    );
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        [
            format!(
                "{}:4:1: warning: endpoint a: its min_delay and retry schedule (111105s, 30 h \
                 51 min 45 s) run past `retention` (1d): retries due after it expire unsent",
                path.display()
            ),
            format!("{}: ok (2 endpoints)", path.display()),
        ],
    );
}

/// With the SSRF guard on, `check` warns of a URL naming `localhost` (or a name under it:
/// RFC 6761's loopback), at its `url`, and still passes the file: a name is judged at each
/// delivery, but this one can only be refused. With the guard off it says nothing.
#[test]
fn check_warns_of_a_url_naming_localhost_while_the_guard_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let endpoints = "[[endpoint]]\nname = \"a\"\nevents = [\"t\"]\nurl = \"http://localhost:9000/pb\"\n\n\
                     [[endpoint]]\nname = \"b\"\nevents = [\"t\"]\nurl = \"http://API.localhost./pb?x={X}\"\n\n\
                     [[endpoint]]\nname = \"c\"\nevents = [\"t\"]\nurl = \"http://localhost.example/pb\"\n";
    let check = |server: &str| {
        let config = format!("{server}{endpoints}");
        std::fs::write(&path, &config).unwrap();
        let out = run(
            &["check", "--config", path.to_str().unwrap()],
            Duration::from_secs(30),
        );
        let said = text(&out.stdout);
        assert!(out.status.success(), "{said}");
        (config, said)
    };
    let (config, said) = check("");
    let warning = |name: &str, host: &str, url: &str| {
        format!(
            "{}:{}: warning: endpoint {name}: field `url`: {host} is this machine's loopback, \
             which the SSRF guard refuses while `allow_private_networks` is off: every \
             delivery would fail (for a receiver on this machine, set \
             `allow_private_networks = true` under [server])",
            path.display(),
            pos(&config, &format!("url = \"{url}"), "url = ")
        )
    };
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        [
            warning("a", "localhost", "http://localhost:9000"),
            warning("b", "api.localhost", "http://API.localhost."),
            format!("{}: ok (3 endpoints)", path.display()),
        ],
    );
    let (_, said) = check("[server]\nallow_private_networks = true\n\n");
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        [format!("{}: ok (3 endpoints)", path.display())],
    );
}

#[test]
fn serve_flags_win_over_the_config_file() {
    let rx = TestReceiver::start();
    let flags = tempfile::tempdir().expect("temp dir");
    let (data, socket) = (flags.path().join("data"), flags.path().join("flag.sock"));
    // The file says 2 workers, the default driver, no TCP listener, and its own data dir
    // and socket; the flags say otherwise.
    let srv = TestServer::start_with(
        ServerOpts::new(&endpoint("e", r#"["t"]"#, &rx.url("/"), ""))
            .arg("--data-dir")
            .arg(data.to_str().unwrap())
            .arg("--socket")
            .arg(socket.to_str().unwrap())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--workers")
            .arg("1")
            .arg("--driver")
            .arg("legacy"),
    );
    for want in [
        "workers=1",
        "driver=legacy",
        "durability=sync",
        "tcp=127.0.0.1:",
        &format!("socket={}", socket.display()),
    ] {
        assert!(srv.ready.contains(want), "{want} in {}", srv.ready);
    }
    assert_eq!(
        srv.connect().send(&event("t", "flag-1", "{}")),
        "ok flag-1 1"
    );
    let tcp = srv.tcp.expect("--listen opens the TCP listener");
    let mut c = crate::harness::Conn::tcp(tcp);
    assert_eq!(c.send(&event("t", "flag-2", "{}")), "ok flag-2 1");
    rx.wait_for(2, Duration::from_secs(10));
    assert!(data.join("CURRENT").exists(), "RocksDB in the --data-dir");
    // The store holds endpoint secrets: a data dir ricochet creates is its owner's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&data).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "data dir mode {mode:o}");
    assert!(
        !srv.dir.path().join("data").exists(),
        "the file's data_dir is not used"
    );
}

/// `--admin` and `--listen` say what they take as the file's `admin` and `listen` do: a
/// host name is no address (it is not resolved), where the standard parser said only
/// `invalid socket address syntax`.
#[test]
fn serve_address_flags_say_what_they_take() {
    for flag in ["--admin", "--listen"] {
        let out = run(&["serve", flag, "localhost:7878"], Duration::from_secs(30));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(
                "\"localhost:7878\" is no socket address: an IP address and port, such as \
                 127.0.0.1:7878 or [::1]:7878 (a host name is not resolved)"
            ),
            "{flag}: {stderr}"
        );
    }
}

/// A data dir that already exists open to others keeps its mode, but the files the
/// store makes in it are owner-only (they hold the endpoints' secrets) and the start
/// warns; the socket's mode still follows the umask the server started with.
#[test]
fn a_data_dir_open_to_others_gets_owner_only_files_and_a_warning() {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = std::sync::Arc::new(tempfile::tempdir().expect("temp dir"));
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(dir.path().join("data"))
        .unwrap();
    let mut opts = ServerOpts::new(&endpoint(
        "e",
        r#"["t"]"#,
        "http://127.0.0.1:9/",
        "headers = { Authorization = \"Bearer s3cret-0644\" }",
    ));
    opts.umask = Some(0o022);
    let srv = TestServer::start_in(dir.clone(), &opts);
    srv.wait_log(
        "the data dir is open to its group or others",
        Duration::from_secs(10),
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let data = dir.path().join("data");
    assert_eq!(mode(&data), 0o755, "an existing dir keeps its mode");
    let files: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() >= 4, "{files:?}");
    for f in files {
        assert_eq!(mode(&f) & 0o077, 0, "{} is {:o}", f.display(), mode(&f));
    }
    assert_eq!(mode(&dir.path().join("ricochet.sock")), 0o755);
}

#[test]
fn render_reads_the_event_from_standard_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("r.toml");
    std::fs::write(
        &config,
        endpoint(
            "partner",
            r#"["sale"]"#,
            "http://partner.example/hook",
            "format = \"form\"",
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let args = ["render", "--config", config, "--endpoint", "partner"];
    // Pretty-printed, as a file would be.
    let input =
        b"{\n  \"type\": \"sale\",\n  \"id\": \"s-1\",\n  \"data\": {\"amount\": 12.5}\n}\n";
    let out = run_with_input(&args, Some(input), Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let req = text(&out.stdout);
    assert!(req.starts_with("POST /hook HTTP/1.1\r\n"), "{req}");
    assert!(req.contains("\r\nwebhook-id: s-1\r\n"), "{req}");
    assert!(req.ends_with("\r\n\r\namount=12.5"), "{req}");
    // `-` for the file is standard input too, as for most tools.
    let dash = [&args[..], &["-"]].concat();
    let out = run_with_input(&dash, Some(input), Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let untimed = |r: &str| {
        r.split("\r\n")
            .filter(|l| !l.starts_with("webhook-timestamp:"))
            .collect::<Vec<_>>()
            .join("\r\n")
    };
    assert_eq!(untimed(&text(&out.stdout)), untimed(&req));
    // Nothing on standard input is not an event.
    let out = run_with_input(&args, Some(b""), Duration::from_secs(30));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("empty input: give one event as a JSON object"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn serve_never_removes_a_file_that_is_not_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    let config = dir.path().join("r.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = {:?}\nsocket = {:?}\nadmin = \"127.0.0.1:0\"\n",
            dir.path().join("data"),
            file
        ),
    )
    .unwrap();
    let serve = run(
        &["serve", "--config", config.to_str().unwrap()],
        Duration::from_secs(30),
    );
    let stderr = text(&serve.stderr);
    assert_eq!(serve.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("exists and is not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}
