//! The operator's view (issue 15), against real servers: every S3 attempt counted (SDK retries
//! included), a real Prometheus scraping a real rekey run and answering every query of the
//! Grafana dashboard, the Pushgateway's copy read back, and what a person sees in a terminal
//! (tmux).
//!
//! Prometheus and the Pushgateway are the test bed's (scripts/testbed.sh starts them when the
//! Debian packages are installed; scripts/test.sh installs them). Prometheus scrapes every target
//! listed in `$S3CSE_PROMETHEUS_TARGETS/*.json` once a second.

mod common;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Bed, FaultProxy, bed, data, put_v1, show};

/// `n` small V1 objects (AES/ECB-wrapped key, CBC content): each is rewritten, one
/// GenerateDataKey per object.
async fn fill(b: &Bed, n: u32) {
    let mut puts = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let (s3, bucket) = (b.s3.clone(), b.bucket.clone());
        puts.push(async move {
            put_v1(
                &s3,
                &bucket,
                &format!("k/{i:04}"),
                &data(200 + i as usize, i as u8),
            )
            .await;
        });
        if puts.len() >= 16 {
            futures::StreamExt::next(&mut puts).await;
        }
    }
    while futures::StreamExt::next(&mut puts).await.is_some() {}
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    l.local_addr().expect("addr").port()
}

/// `GET url` (plain http) with a bare HTTP/1.0 request: (status, body).
fn http_get(url: &str) -> std::io::Result<(u16, String)> {
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    Ok((status, body.unwrap_or_default()))
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Sum of the samples of `name` whose labels include every `want` pair, in a text exposition.
fn sample_sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The Prometheus / Pushgateway of the test bed, or `None` (with a message; a failure on CI).
fn prometheus() -> Option<(String, String, String)> {
    let get = |v: &str| std::env::var(v).ok();
    match (
        get("S3CSE_PROMETHEUS_URL"),
        get("S3CSE_PUSHGATEWAY_URL"),
        get("S3CSE_PROMETHEUS_TARGETS"),
    ) {
        (Some(p), Some(g), Some(t)) => Some((p, g, t)),
        _ if std::env::var("CI").is_ok() => {
            panic!(
                "CI needs the test bed's Prometheus and Pushgateway (scripts/test.sh installs them)"
            )
        }
        _ => {
            eprintln!(
                "skipped: no Prometheus in the test bed (apt-get install prometheus prometheus-pushgateway; scripts/testbed.sh up)"
            );
            None
        }
    }
}

/// The SDK retries a 503 SlowDown by itself, so before issue 15 rekey counted only the attempt
/// that finally worked: `outcome="throttled"` stayed 0 unless three attempts in a row failed.
/// Through a proxy that answers 4% of S3 requests with SlowDown, every injected SlowDown must be
/// counted once, and the SDK's retries of them must show in `s3cse_rekey_retries_total`.
/// Failed on the old code: 0 throttled attempts counted for 9 injected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_throttled_s3_attempt_is_counted_sdk_retries_included() {
    let Some(b) = bed("obs-throttle").await else {
        return;
    };
    const N: u32 = 80;
    fill(&b, N).await;
    let proxy = FaultProxy::start(15, &[("slowdown", 0.04)]);
    let state = b.path("state.db");
    let prom = b.path("metrics.prom");
    let mut cmd = b.rekey_command(&state);
    cmd.arg("--metrics-textfile").arg(&prom);
    proxy.point(&mut cmd);
    let o = cmd.output().expect("run");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let text = std::fs::read_to_string(&prom).expect("textfile");
    let injected = proxy.faults().get("slowdown").copied().unwrap_or(0);
    assert!(
        injected > 0,
        "the proxy injected no SlowDown: {}",
        proxy.stderr()
    );
    let throttled = sample_sum(
        &text,
        "s3cse_s3_requests_total",
        &[("outcome", "throttled")],
    );
    assert_eq!(
        throttled, injected as f64,
        "every SlowDown attempt counted once ({injected} injected)\n{text}"
    );
    let retried = sample_sum(
        &text,
        "s3cse_rekey_retries_total",
        &[("service", "s3"), ("reason", "throttled")],
    );
    assert!(
        retried >= 1.0 && retried <= throttled,
        "the SDK's retries of throttled attempts: {retried} for {throttled} throttled\n{text}"
    );
    let ok = sample_sum(&text, "s3cse_s3_requests_total", &[("outcome", "ok")]);
    assert!(
        ok >= f64::from(N * 2),
        "HEAD/GET + PUT per object at least: {ok}"
    );
}

/// A real Prometheus scrapes a real rekey run (`--metrics-addr`, through a proxy that throttles
/// S3 and KMS now and then), and every expression of the Grafana dashboard, its variables
/// substituted as Grafana does with "All" selected, returns data through Prometheus's HTTP API.
/// The run also push-adds to the real Pushgateway, and the pushed series are read back from it
/// and, scraped by Prometheus, through a query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_answers_every_dashboard_query_about_a_real_run() {
    let Some((prom_url, push_url, targets)) = prometheus() else {
        return;
    };
    let Some(b) = bed("obs-prom").await else {
        return;
    };
    const N: u32 = 150;
    fill(&b, N).await;
    let proxy = FaultProxy::start(7, &[("slowdown", 0.03), ("kms-throttle", 0.03)]);
    let addr = format!("127.0.0.1:{}", free_port());
    // One file per test run: Prometheus (file_sd) starts scraping it within a second.
    let instance = format!("obs-{}-{}", std::process::id(), free_port());
    let target_file = Path::new(&targets).join(format!("{instance}.json"));
    let target = serde_json::json!([{
        "targets": [addr],
        "labels": {"namespace": "s3cse-test", "shard": "0", "run": instance},
    }]);
    std::fs::write(&target_file, target.to_string()).expect("target file");
    struct RemoveOnDrop(std::path::PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _cleanup = RemoveOnDrop(target_file);

    let state = b.path("state.db");
    let mut cmd = b.rekey_command(&state);
    cmd.args(["--metrics-addr", &addr, "--pushgateway", &push_url])
        // About 10 s of work: Prometheus scrapes it ~10 times, enough for every rate().
        .args(["--s3-rps", "45", "--concurrency", "4", "--shard", "0/1"]);
    proxy.point(&mut cmd);
    let o = cmd.output().expect("run");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let faults = proxy.faults();
    assert!(
        faults.get("slowdown").copied().unwrap_or(0) > 0
            && faults.get("kms-throttle").copied().unwrap_or(0) > 0,
        "{faults:?}"
    );

    // The Pushgateway holds the pushed group (job s3cse-rekey, shard 0).
    let (status, pushed) = http_get(&format!("{push_url}/metrics")).expect("pushgateway");
    assert_eq!(status, 200);
    let pushed_done = sample_sum(
        &pushed,
        "s3cse_rekey_objects_total",
        &[
            ("job", "s3cse-rekey"),
            ("shard", "0"),
            ("result", "rewritten"),
        ],
    );
    assert!(pushed_done >= f64::from(N), "{pushed}");

    // Prometheus scrapes the Pushgateway every second: wait for the pushed success.
    let query = |expr: &str, at: f64| -> serde_json::Value {
        let url = format!("{prom_url}/api/v1/query?query={}&time={at:.3}", enc(expr));
        let (status, body) = http_get(&url).expect("prometheus");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(status, 200, "{expr}: {body}");
        v
    };
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let read_back =
        "s3cse_rekey_objects_total{job=\"s3cse-rekey\", shard=\"0\", result=\"rewritten\"}";
    let t = Instant::now();
    let at = loop {
        let at = now();
        let v = query(
            &format!(
                "{read_back} and on() s3cse_rekey_last_success_timestamp_seconds{{job=\"s3cse-rekey\", shard=\"0\"}}"
            ),
            at,
        );
        let got = v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok());
        if got.is_some_and(|g| g >= f64::from(N)) {
            break at;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the pushed series never reached Prometheus: {v}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // And the direct scrapes happened (the target's own series, job "s3cse").
    let scraped = query(
        &format!(
            "max_over_time(s3cse_rekey_objects_total{{run=\"{instance}\", result=\"rewritten\"}}[5m])"
        ),
        at,
    );
    assert!(
        !scraped["data"]["result"]
            .as_array()
            .is_none_or(|r| r.is_empty()),
        "Prometheus never scraped --metrics-addr: {scraped}"
    );

    // Every dashboard expression, with the variables as Grafana substitutes them for "All".
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/s3cse-rekey.json"),
        )
        .expect("dashboard"),
    )
    .expect("dashboard json");
    let mut empty = Vec::new();
    let mut n = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str() else {
                continue;
            };
            n += 1;
            let expr = expr
                .replace("$__rate_interval", "30s")
                .replace("$namespace", ".*")
                .replace("$job", ".*")
                .replace("$shard", ".*");
            let v = query(&expr, at);
            assert_eq!(v["status"], "success", "{expr}: {v}");
            let has_data = match v["data"]["resultType"].as_str() {
                Some("vector" | "matrix") => v["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty()),
                Some("scalar") => true,
                _ => false,
            };
            if !has_data {
                empty.push(format!("{}: {expr}", panel["title"]));
            }
        }
    }
    assert!(n >= 30, "only {n} expressions found");
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );

    // Throttling is seen as it happens: throttled attempts of both services in Prometheus.
    for (metric, fault) in [
        ("s3cse_s3_requests_total", "slowdown"),
        ("s3cse_kms_requests_total", "kms-throttle"),
    ] {
        let v = query(
            &format!(
                "sum(max_over_time({metric}{{run=\"{instance}\", outcome=\"throttled\"}}[5m]))"
            ),
            at,
        );
        let got = v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(
            got >= 1.0,
            "{metric}: {v} ({fault}: {:?})",
            faults.get(fault)
        );
    }
}

/// What a person sees at a terminal (tmux, 150x40): during a rekey of 300 objects, the live
/// display (objects, bytes, rates, ETA, per-state counts) and almost no log lines; before
/// issue 15, one INFO line per object scrolled the progress bar away (70 lines in 3 s). At the
/// end, the summary with human-readable numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_shows_the_live_display_not_a_log_line_per_object() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("skipped: tmux is not installed");
        return;
    }
    let Some(b) = bed("obs-tmux").await else {
        return;
    };
    const N: u32 = 300;
    fill(&b, N).await;
    // The pane's shell starts from the tmux server's environment: pass ours explicitly, and use
    // a private tmux server (-L), so no other session or server is touched.
    let script = b.path("run.sh");
    let mut sh = String::from("#!/bin/sh\n");
    for (k, v) in std::env::vars() {
        if k.starts_with("AWS_") || k == "S3CSE_TESTBED" || k == "PATH" {
            sh.push_str(&format!("export {k}='{v}'\n"));
        }
    }
    sh.push_str("unset S3CSE_LOG NO_COLOR\nexport TERM=xterm-256color\n");
    let rekey = b.rekey_command(b.path("state.db"));
    let rekey: Vec<String> = std::iter::once(rekey.get_program())
        .chain(rekey.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect();
    sh.push_str(&format!(
        "{} --s3-rps 90 --concurrency 4\necho EXIT=$?\nsleep 120\n",
        rekey.join(" ")
    ));
    std::fs::write(&script, sh).expect("script");
    let socket = format!("s3cse-test-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .arg("-L")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("tmux")
    };
    struct KillServer(String);
    impl Drop for KillServer {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["-L", &self.0, "kill-server"])
                .output();
        }
    }
    let _server = KillServer(socket.clone());
    let o = tmux(&[
        "new-session",
        "-d",
        "-s",
        "rekey",
        "-x",
        "150",
        "-y",
        "40",
        &format!("sh {}", script.display()),
    ]);
    assert!(o.status.success(), "{}", show(&o));
    let mut screens: BTreeMap<u32, String> = BTreeMap::new();
    let t = Instant::now();
    let mut i = 0;
    let last = loop {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let o = tmux(&["capture-pane", "-p", "-t", "rekey"]);
        let screen = String::from_utf8_lossy(&o.stdout).to_string();
        if screen.contains("EXIT=") {
            break screen;
        }
        screens.insert(i, screen);
        i += 1;
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no end: {screens:?}"
        );
    };
    let live: Vec<&String> = screens
        .values()
        .filter(|s| s.contains("objects") && s.contains("ETA") && s.contains("migrated"))
        .collect();
    assert!(
        !live.is_empty(),
        "no live display in {} screens: {screens:?}",
        screens.len()
    );
    let sample = live[live.len() / 2];
    assert!(sample.contains("/s"), "rates: {sample}");
    assert!(sample.contains(&format!("/{N} objects")), "{sample}");
    for s in screens.values().chain([&last]) {
        let log_lines = s.lines().filter(|l| l.contains(" INFO ")).count();
        assert!(log_lines < 5, "{log_lines} INFO lines on screen:\n{s}");
    }
    assert!(last.contains("EXIT=0"), "{last}");
    assert!(
        last.contains(&format!("work: {N} migrated (")),
        "the summary: {last}"
    );
    assert!(last.contains("B)"), "a human-readable size: {last}");
}
