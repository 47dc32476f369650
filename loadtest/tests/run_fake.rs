//! `ricochet-load run` end to end against the built-in stand-in for `ricochet serve`
//! (`ricochet-load fake-ricochet`), so the runner's plumbing is tested without the real
//! binary: sink, config, health wait, gen, outage, drain, accounting and JSON report.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ricochet-load");

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rl-it-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A `ricochet` executable that runs the fake.
fn fake_ricochet(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("ricochet");
    std::fs::write(
        &p,
        format!("#!/bin/sh\nexec '{BIN}' fake-ricochet \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn run_json(dir: &Path, scenario: &str, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let file = dir.join("scenario.toml");
    std::fs::write(&file, scenario).unwrap();
    let fake = fake_ricochet(dir);
    let out = Command::new(BIN)
        .arg("run")
        .arg("--scenario")
        .arg(&file)
        .arg("--ricochet")
        .arg(&fake)
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}); stderr:\n{stderr}"));
    (out.status.code().unwrap_or(-1), json, stderr)
}

const SMALL: &str = r#"
description = "test"
endpoints = 3
events = 3000
duration = "10s"
rate = 3000
durability = "batch"
drain_timeout = "20s"
drain_idle = "3s"
[sink]
script = "200:0.9,500:0.1"
[endpoint]
retry = ["1s", "1s", "1s", "1s"]
"#;

#[test]
fn run_two_runs_against_fake_ricochet() {
    let dir = temp_dir("two");
    let plot = dir.join("out.svg");
    let (code, v, stderr) = run_json(
        &dir,
        SMALL,
        &[
            "--runs",
            "2",
            "--plot",
            plot.to_str().unwrap(),
            // The raw client's requests reach the same sink after the run's: not in the
            // run's requests/s (its window ran to the raw phase's last request).
            "--raw",
            "--raw-duration",
            "1s",
            "--raw-connections",
            "4",
        ],
    );
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for r in runs {
        // Passed: its temp dir is gone.
        assert!(r["run_dir"].is_null(), "{}", r["run_dir"]);
        // Requests/s and deliveries/s share their start; here 500s add requests. Not
        // their rates: each runs to its own last arrival, and an undelivered id's
        // retries may stretch the requests' window past the last delivery (a CI run
        // read a lower requests/s).
        assert!(r["requests"].as_u64().unwrap() >= r["delivered"].as_u64().unwrap());
        assert!(r["requests_per_s"].as_f64().unwrap() > 0.0);
        assert!(r["deliveries_per_s"].as_f64().unwrap() > 0.0);
        assert_eq!(r["events_sent"], 3000);
        assert_eq!(r["accepted"], 3000);
        assert_eq!(r["lost"], 0);
        assert_eq!(r["misrouted"], 0);
        assert_eq!(r["duplicates"], 0);
        // The fake retries 500s (5 attempts), so a few may stay undelivered.
        let delivered = r["delivered"].as_u64().unwrap();
        let undelivered = r["undelivered"].as_u64().unwrap();
        assert_eq!(delivered + undelivered, 3000);
        assert!(r["retries"].as_u64().unwrap() > 0);
        assert!(r["lag"]["count"].as_u64().unwrap() >= delivered);
        assert!(r["ricochet_cpu_s"].as_f64().is_some());
        assert!(r["ricochet_peak_rss_mib"].as_f64().unwrap() > 0.0);
        assert!(!r["series"].as_array().unwrap().is_empty());
    }
    assert!(v["median"]["accepted_per_s"].as_f64().unwrap() > 1000.0);
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
    assert!(dir.join("out-2.svg").is_file());
    let _ = std::fs::remove_dir_all(dir);
}

/// Attempts that time out at ricochet while the sink answers them 2xx: every resend is
/// a duplicate the receiver gets. The run waits while ricochet still has deliveries
/// pending, so it counts them (it stopped ricochet once every id had one 2xx, and
/// counted none).
#[test]
fn resends_after_every_id_had_a_2xx_are_counted_as_duplicates() {
    let dir = temp_dir("late-dups");
    let (code, json, stderr) = run_json(
        &dir,
        r#"
description = "the sink answers after the endpoint's timeout"
endpoints = 1
events = 4
duration = "10s"
rate = 100
durability = "batch"
drain_timeout = "30s"
drain_idle = "3s"
[sink]
latency = "500ms"
[endpoint]
timeout = "300ms"
"#,
        &[],
    );
    let run = &json["runs"][0];
    // Five attempts each (the fake's), all reaching the sink: four repeats an event.
    assert_eq!(run["duplicates"], 16, "{stderr}");
    assert_eq!(run["ricochet_pending_at_end"], 0, "{stderr}");
    assert_ne!(code, -1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_with_sink_outage() {
    for mode in ["503", "refuse"] {
        let dir = temp_dir(&format!("outage-{mode}"));
        let sc = format!(
            "description = \"t\"\nendpoints = 2\nevents = 2000\noutage = \"{mode}\"\ndrain_idle = \"3s\"\ndrain_timeout = \"20s\"\n"
        );
        let (code, v, stderr) = run_json(&dir, &sc, &[]);
        assert_eq!(code, 0, "{mode}: stderr:\n{stderr}");
        let r = &v["runs"][0];
        assert_eq!(r["accepted"], 2000, "{mode}");
        assert_eq!(r["delivered"], 2000, "{mode}: {stderr}");
        assert_eq!(r["drained"], true, "{mode}");
        if mode == "503" {
            assert!(r["status_5xx"].as_u64().unwrap() > 0);
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn run_reports_a_missing_binary_clearly() {
    let out = Command::new(BIN)
        .args([
            "run",
            "--scenario",
            "smoke",
            "--ricochet",
            "/nonexistent/ricochet",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/ricochet: no such file"), "{err}");
}

#[test]
fn run_reports_a_server_that_dies_at_start() {
    let dir = temp_dir("dies");
    let bad = dir.join("ricochet");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            &bad,
            "#!/bin/sh\necho 'config error: unknown key' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = Command::new(BIN)
        .args(["run", "--scenario", "smoke", "--ricochet"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exited before becoming healthy"), "{err}");
    assert!(err.contains("config error: unknown key"), "{err}");
    // A failed run keeps its files for inspection and says where.
    let kept = err
        .lines()
        .find_map(|l| l.strip_prefix("run files kept in "))
        .expect("kept dir reported");
    assert!(Path::new(kept).join("ricochet.toml").is_file());
    let _ = std::fs::remove_dir_all(kept);
    let _ = std::fs::remove_dir_all(dir);
}

/// Ricochet exiting mid-ingest while the generator's writer sleeps in a 3 s linger (so
/// it has not written to the closed socket yet) still cuts the ingest short: a failure,
/// not a run that passes on the one event it sent.
#[test]
fn ricochet_exiting_during_ingest_is_a_cut_short_run() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("exits");
    let dies = dir.join("ricochet");
    std::fs::write(
        &dies,
        format!("#!/bin/sh\n'{BIN}' fake-ricochet \"$@\" &\nsleep 1.5\nkill -9 $!\nexit 3\n"),
    )
    .unwrap();
    std::fs::set_permissions(&dies, std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.join("scenario.toml");
    std::fs::write(
        &file,
        "description = \"t\"\nendpoints = 1\nevents = 100000\nrate = 1000\nlinger = \"3s\"\nduration = \"30s\"\ndrain_idle = \"1s\"\ndrain_timeout = \"3s\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--json", "--scenario"])
        .arg(&file)
        .arg("--ricochet")
        .arg(&dies)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}); stderr:\n{stderr}"));
    let r = &v["runs"][0];
    let cut = r["ingest_cut_short"]
        .as_str()
        .unwrap_or_else(|| panic!("not cut short: {r}\nstderr:\n{stderr}"));
    assert!(cut.contains("of 100,000 events"), "{cut}");
    assert_eq!(r["interrupted"], false);
    // Said as ricochet's exit during ingest, or at the run's end when the generator,
    // cut short by the closed socket, finished before the next look at the process (a
    // tenth of a second apart; the wrapper exits just after its server dies): CI saw
    // the second once.
    let notes = r["notes"].to_string();
    assert!(
        notes.contains("ricochet exited during ingest")
            || notes.contains("ricochet had exited: exit status: 3"),
        "{notes}"
    );
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    if let Some(kept) = r["run_dir"].as_str() {
        let _ = std::fs::remove_dir_all(kept);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn https_compare_runs_both_schemes() {
    let dir = temp_dir("https");
    let sc = "description = \"t\"\nendpoints = 3\nevents = 1500\nrate = 1500\ndrain_idle = \"3s\"\ndrain_timeout = \"20s\"\n";
    let (code, v, stderr) = run_json(&dir, sc, &["--https-compare"]);
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["label"], "http");
    assert_eq!(runs[1]["label"], "https");
    for r in runs {
        assert_eq!(r["accepted"], 1500, "{stderr}");
        assert_eq!(r["delivered"], 1500, "{stderr}");
        assert_eq!(r["lost"], 0);
    }
    assert_eq!(runs[0]["tls_handshakes"], serde_json::Value::Null);
    // The fake keeps one connection per delivery thread.
    let hs = runs[1]["tls_handshakes"].as_u64().unwrap();
    assert!((1..=8).contains(&hs), "{hs} handshakes");
    let c = &v["https_compare"];
    assert_eq!(c["pairs"].as_array().unwrap().len(), 1);
    assert!(c["ratio"].as_f64().unwrap() > 0.0);
    assert_eq!(c["target"], 0.7);
    assert!(v["median"]["https"]["deliveries_per_s"].as_f64().unwrap() > 0.0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn rate_check_passes_a_slow_feed_and_catches_a_dispatcher_ignoring_max_rps() {
    // 4 endpoints at 1 event/s each against max_rps = 2: within the limit (the fake
    // delivers at once, so arrivals follow the generator's 250 ms spacing per endpoint).
    let dir = temp_dir("rate-ok");
    let sc = "description = \"t\"\nendpoints = 4\nevents = 12\nrate = 4\ndrain_idle = \"2s\"\ndrain_timeout = \"10s\"\n[endpoint]\nmax_rps = 2\n";
    let (code, v, stderr) = run_json(&dir, sc, &[]);
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let r = &v["runs"][0]["rate_check"];
    assert_eq!(r["endpoints_checked"], 4, "{v}");
    assert_eq!(r["arrivals"], 12);
    assert_eq!(r["windows_over_limit"], 0);
    assert_eq!(r["limit"], 3);
    assert!(r["worst_window"].as_u64().unwrap() <= 2);
    assert_eq!(r["beyond_bucket"], 0);
    let _ = std::fs::remove_dir_all(dir);

    // The fake ignores max_rps: 200 events at once on one endpoint break it, and the run
    // fails.
    let dir = temp_dir("rate-bad");
    let sc = "description = \"t\"\nendpoints = 1\nevents = 200\nrate = 1000\ndrain_idle = \"2s\"\ndrain_timeout = \"10s\"\n[endpoint]\nmax_rps = 2\n";
    let (code, v, stderr) = run_json(&dir, sc, &["--rate-tolerance", "2"]);
    assert_eq!(code, 1, "stderr:\n{stderr}");
    let r = &v["runs"][0]["rate_check"];
    assert_eq!(r["limit"], 4);
    assert_eq!(r["endpoints_over_limit"], 1);
    assert!(r["windows_over_limit"].as_u64().unwrap() >= 150, "{r}");
    assert!(r["beyond_bucket"].as_u64().unwrap() >= 150, "{r}");
    assert_eq!(r["endpoints_beyond_bucket"], 1);
    assert!(v["runs"][0]["notes"].to_string().contains("rate check"));
    // A failed run keeps its temp dir (config, log) and names it.
    let kept = v["runs"][0]["run_dir"]
        .as_str()
        .expect("a failed run keeps its dir");
    assert!(Path::new(kept).join("ricochet.toml").is_file(), "{kept}");
    assert!(
        stderr.contains(&format!("run files kept in {kept}")),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(kept);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn restart_after_ingest_is_timed_and_loses_nothing() {
    // The fake journals acked events to the data dir, so after kill -9 the restarted
    // process resends the backlog it had when the sink was still answering 503.
    let dir = temp_dir("restart");
    let sc = "description = \"t\"\nendpoints = 2\nevents = 1000\noutage = \"503\"\nrestart = true\ndrain_idle = \"3s\"\ndrain_timeout = \"20s\"\n";
    let (code, v, stderr) = run_json(&dir, sc, &["--runs", "2", "--window", "100"]);
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let s = &v["settings"];
    assert_eq!(s["restart"], true, "{s}");
    assert_eq!(s["window"], 128, "rounded up to a power of two: {s}");
    assert_eq!(s["outage"], "503");
    for r in v["runs"].as_array().unwrap() {
        let rs = &r["restart"];
        // The probe is one more event, accepted and delivered like the others.
        assert_eq!(r["events_sent"], 1001, "{stderr}");
        assert_eq!(r["accepted"], 1001, "{stderr}");
        assert_eq!(r["delivered"], 1001, "{stderr}");
        assert_eq!(r["lost"], 0);
        assert_eq!(r["undelivered"], 0);
        assert_eq!(r["drained"], true);
        assert_eq!(rs["probe_accepted"], true, "{rs}");
        assert_eq!(rs["probe_delivered"], true, "{rs}");
        // Above every generated id (events 0..999 on one connection).
        assert_eq!(
            rs["probe_id"],
            format!("ld-{}-1001", r["run_tag"].as_str().unwrap())
        );
        assert_eq!(rs["probe_type"], "load.e1", "1001 % 2 endpoints");
        assert!(rs["probe_ack"].as_str().unwrap().starts_with("ok "), "{rs}");
        assert_eq!(
            rs["backlog_at_kill"], 1000,
            "nothing delivered during the 503s: {rs}"
        );
        assert_ne!(rs["pid"], rs["killed_pid"]);
        let health = rs["health_s"].as_f64().unwrap();
        let ack = rs["first_ack_s"].as_f64().unwrap();
        assert!(health > 0.0 && health < 10.0, "{rs}");
        assert!(ack > 0.0 && ack < 10.0, "{rs}");
        assert!(rs["peak_rss_mib"].as_f64().unwrap() > 0.0, "{rs}");
        assert!(rs["killed_cpu_s"].as_f64().is_some(), "{rs}");
        assert!(r["ricochet_cpu_s"].as_f64().unwrap() >= rs["killed_cpu_s"].as_f64().unwrap());
        assert!(stderr.contains(&format!("kill -9 of ricochet pid {}", rs["killed_pid"])));
    }
    assert!(v["median"]["restart_first_ack_s"].as_f64().unwrap() > 0.0);
    assert!(v["median"]["restart_health_s"].as_f64().unwrap() > 0.0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sweep_runs_each_window_and_draws_the_curve() {
    let dir = temp_dir("sweep");
    let file = dir.join("scenario.toml");
    // Closed loop (flat out), so the window bounds what is in flight.
    std::fs::write(&file, SMALL.replace("rate = 3000", "rate = 0")).unwrap();
    let fake = fake_ricochet(&dir);
    let curve = dir.join("curve.svg");
    let out = Command::new(BIN)
        .args(["sweep", "--scenario"])
        .arg(&file)
        .arg("--ricochet")
        .arg(&fake)
        .args(["--windows", "8,3,8", "--json", "--curve"])
        .arg(&curve)
        .arg("--plot")
        .arg(dir.join("p.svg"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}); stderr:\n{stderr}"));
    let points = v["points"].as_array().unwrap();
    // 3 rounds up to 4; the second 8 is the same window.
    let windows: Vec<u64> = points
        .iter()
        .map(|p| p["window"].as_u64().unwrap())
        .collect();
    assert_eq!(windows, vec![4, 8]);
    for p in points {
        let w = p["window"].as_u64().unwrap();
        assert_eq!(p["in_flight"].as_u64().unwrap(), w); // one connection
        let runs = p["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0]["accepted"], 3000);
        assert_eq!(runs[0]["lost"], 0);
        assert!(p["median"]["ack_p99_us"].as_f64().unwrap() > 0.0);
    }
    assert!(
        stderr.contains("=== window 4: 4 lines in flight"),
        "{stderr}"
    );
    let svg = std::fs::read_to_string(&curve).unwrap();
    assert!(svg.contains("4 in flight") && svg.contains("8 in flight"));
    // Each window's run plot has its own name.
    assert!(dir.join("p-w4.svg").is_file() && dir.join("p-w8.svg").is_file());
    assert!(!dir.join("p.svg").exists());
    // --window belongs to `run`; a sweep refuses it rather than ignore it.
    let out = Command::new(BIN)
        .args([
            "sweep",
            "--scenario",
            "max",
            "--windows",
            "8",
            "--window",
            "8",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--windows, not --window"));
    let _ = std::fs::remove_dir_all(dir);
}
