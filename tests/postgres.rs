//! The shared PostgreSQL job store (`--state postgres://...`, issue 12): several real `s3cse`
//! processes on one queue, against the test bed's S3, KMS and PostgreSQL (each test makes its
//! own bucket and its own database).

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Bed, bed, data, pg_database, put_v1, report_statuses, run_s3cse as run, show};
use sqlx::Connection;

/// Starts `cmd` with its stdout and stderr captured (for [`wait`]).
fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn s3cse")
}

fn wait(child: Child) -> Output {
    child.wait_with_output().expect("wait s3cse")
}

/// Samples of `name` with labels `want` in a text exposition, summed.
fn metric(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn status(state: &str) -> serde_json::Value {
    let o = run(&["status", "--state", state, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    serde_json::from_slice(&o.stdout).expect("status json")
}

/// Puts `n` legacy V1 objects of `size` bytes under `obj-NNN`; returns their plaintexts.
async fn seed(b: &Bed, n: usize, size: usize) -> BTreeMap<String, Vec<u8>> {
    let mut inputs = BTreeMap::new();
    for i in 0..n {
        let key = format!("obj-{i:03}");
        let d = data(size + i, i as u8);
        put_v1(&b.s3, &b.bucket, &key, &d).await;
        inputs.insert(key, d);
    }
    inputs
}

/// Every object decrypts under the target key (strict: KMS V2/V3 only) to what was put.
async fn assert_all_migrated(b: &Bed, inputs: &BTreeMap<String, Vec<u8>>) {
    for (key, want) in inputs {
        assert_eq!(&b.get_strict(key).await, want, "{key}");
    }
}

/// One query's single integer on the run's database.
async fn pg_count(url: &str, sql: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut conn)
        .await
        .expect(sql)
}

/// [`pg_count`] while a process may still be creating the tables: 0 until they exist.
async fn pg_poll(url: &str, sql: &str) -> i64 {
    let Ok(mut conn) = sqlx::PgConnection::connect(url).await else {
        return 0;
    };
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut conn)
        .await
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn three_processes_share_one_queue_and_migrate_each_object_once() {
    let Some(b) = bed("pg-three").await else {
        return;
    };
    let Some(state) = pg_database("pg_three").await else {
        return;
    };
    let inputs = seed(&b, 60, 3000).await;
    let textfiles: Vec<String> = (0..3)
        .map(|i| b.path(&format!("p{i}.prom")).display().to_string())
        .collect();
    let children: Vec<Child> = textfiles
        .iter()
        .map(|tf| {
            spawn(
                b.rekey_command(&state)
                    .args(["--concurrency", "4", "--metrics-textfile", tf]),
            )
        })
        .collect();
    for c in children {
        let o = wait(c);
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    }
    // One GenerateDataKey per migrated object, across all three processes.
    let mut gdk = 0.0;
    let mut rewritten = Vec::new();
    for tf in &textfiles {
        let text = std::fs::read_to_string(tf).expect("metrics textfile");
        gdk += metric(
            &text,
            "s3cse_kms_requests_total",
            &[("operation", "GenerateDataKey"), ("outcome", "ok")],
        );
        rewritten.push(metric(
            &text,
            "s3cse_rekey_objects_total",
            &[("result", "rewritten")],
        ));
    }
    assert_eq!(gdk, 60.0, "one data key per object: {rewritten:?}");
    assert_eq!(rewritten.iter().sum::<f64>(), 60.0, "{rewritten:?}");
    assert_all_migrated(&b, &inputs).await;
    // A fourth process sees the whole run.
    let st = status(&state);
    assert_eq!(st["by_state"]["done"]["objects"], 60, "{st}");
    assert_eq!(st["total"]["objects"], 60, "{st}");
    let r = report_statuses(&state);
    assert_eq!(r.len(), 60);
    assert!(r.values().all(|s| s == "succeeded"), "{r:?}");
    assert_eq!(
        pg_count(&state, "SELECT count(*) FROM jobs WHERE attempts <> 1").await,
        0,
        "every object claimed exactly once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_process_leases_lapse_and_the_others_finish_its_work() {
    let Some(b) = bed("pg-kill").await else {
        return;
    };
    let Some(state) = pg_database("pg_kill").await else {
        return;
    };
    let inputs = seed(&b, 45, 2000).await;
    let before = b.etags().await;
    // Slow enough to be killed mid-run: 9 KMS calls a second for the three together (a
    // shared budget), so 45 objects take ~5 s; leases of 3 s.
    let extra = ["--concurrency", "4", "--lease-secs", "3", "--kms-rps", "9"];
    let mut victim = spawn(b.rekey_command(&state).args(extra));
    let victim_pid = victim.id();
    // Kill it once it holds leases and has finished something (it does the listing first).
    let t = Instant::now();
    loop {
        let held = pg_poll(
            &state,
            &format!(
                "SELECT count(*) FROM jobs WHERE state = 'running' \
                 AND lease_owner LIKE '%:{victim_pid}:%'"
            ),
        )
        .await;
        let done = pg_poll(&state, "SELECT count(*) FROM jobs WHERE state = 'done'").await;
        if held > 0 && done > 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "victim never got going"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let others: Vec<Child> = (0..2)
        .map(|_| spawn(b.rekey_command(&state).args(extra)))
        .collect();
    victim.kill().expect("SIGKILL");
    let _ = victim.wait();
    // The rows the victim held when it died.
    let orphaned: Vec<i64> = {
        let mut conn = sqlx::PgConnection::connect(&state).await.expect("connect");
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM jobs WHERE state = 'running' AND lease_owner LIKE '%:{victim_pid}:%'"
        )))
        .fetch_all(&mut conn)
        .await
        .expect("orphaned rows")
    };
    for c in others {
        let o = wait(c);
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    }
    assert_all_migrated(&b, &inputs).await;
    let after = b.etags().await;
    assert!(
        before.keys().all(|k| before[k] != after[k]),
        "all rewritten"
    );
    let st = status(&state);
    assert_eq!(st["by_state"]["done"]["objects"], 45, "{st}");
    // The rows the victim held were finished by the others (after their leases lapsed, or
    // released at a survivor's start as a dead local process's).
    assert!(!orphaned.is_empty(), "the victim held leases when it died");
    let ids: Vec<String> = orphaned.iter().map(i64::to_string).collect();
    assert_eq!(
        pg_count(
            &state,
            &format!(
                "SELECT count(*) FROM jobs WHERE state = 'done' AND id IN ({})",
                ids.join(",")
            )
        )
        .await,
        orphaned.len() as i64,
        "the victim's objects were finished by the others"
    );
    assert_eq!(
        pg_count(
            &state,
            &format!("SELECT count(*) FROM jobs WHERE lease_owner LIKE '%:{victim_pid}:%'")
        )
        .await,
        0,
        "no row is left with the dead process"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lapsed_lease_is_picked_up_by_a_process_already_running() {
    // The survivors of the test above may release a dead local process's rows at their start;
    // here the only other process starts first, so the rows can come back by lapsing only.
    let Some(b) = bed("pg-lapse").await else {
        return;
    };
    let Some(state) = pg_database("pg_lapse").await else {
        return;
    };
    let inputs = seed(&b, 30, 2000).await;
    let extra = ["--concurrency", "2", "--lease-secs", "3", "--kms-rps", "6"];
    let mut victim = spawn(b.rekey_command(&state).args(extra));
    let victim_pid = victim.id();
    let t = Instant::now();
    loop {
        let held = pg_poll(
            &state,
            &format!(
                "SELECT count(*) FROM jobs WHERE state = 'running' \
                 AND lease_owner LIKE '%:{victim_pid}:%'"
            ),
        )
        .await;
        if held > 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "victim never got going"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let survivor = spawn(b.rekey_command(&state).args(extra));
    // Let the survivor start (and pass its start-up release) before the kill.
    let t = Instant::now();
    loop {
        let theirs = pg_poll(
            &state,
            &format!(
                "SELECT count(*) FROM jobs WHERE lease_owner IS NOT NULL \
                 AND lease_owner NOT LIKE '%:{victim_pid}:%'"
            ),
        )
        .await;
        if theirs > 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "survivor never got going"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    victim.kill().expect("SIGKILL");
    let _ = victim.wait();
    let o = wait(survivor);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_all_migrated(&b, &inputs).await;
    assert_eq!(status(&state)["by_state"]["done"]["objects"], 30);
    assert!(
        pg_count(&state, "SELECT count(*) FROM jobs WHERE attempts > 1").await >= 1,
        "the victim's leased objects were claimed again once their leases lapsed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_is_exit_2_before_any_s3_write_and_keeps_its_password() {
    let Some(b) = bed("pg-down").await else {
        return;
    };
    seed(&b, 3, 100).await;
    let before = b.etags().await;
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("postgres://s3cse:hunter2@127.0.0.1:{port}/jobs");
    let o = b.rekey(&url, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(
        !err.contains("hunter2"),
        "the password is never printed: {err}"
    );
    assert_eq!(b.etags().await, before, "no S3 write");
    // The read-only commands too.
    for cmd in ["status", "report"] {
        let o = run(&[cmd, "--state", &url]);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", show(&o));
        assert!(!show(&o).contains("hunter2"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_is_ingested_into_postgres_and_reported_to_s3() {
    let Some(b) = bed("pg-manifest").await else {
        return;
    };
    let Some(state) = pg_database("pg_manifest").await else {
        return;
    };
    let inputs = seed(&b, 8, 500).await;
    // A Batch Operations manifest naming six of the eight, read by two processes at once.
    let named: Vec<&String> = inputs.keys().take(6).collect();
    let csv: String = named
        .iter()
        .map(|k| format!("{},{}\n", b.bucket, k))
        .collect();
    b.s3.put_object()
        .bucket(&b.bucket)
        .key("manifests/batch.csv")
        .body(csv.into_bytes().into())
        .send()
        .await
        .expect("put manifest");
    let manifest = b.url("manifests/batch.csv");
    let mut cmd = b.rekey_command(&state);
    cmd.args(["--manifest", &manifest]);
    let (p1, p2) = (spawn(&mut cmd), spawn(&mut cmd));
    for c in [p1, p2] {
        let o = wait(c);
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    }
    let r = report_statuses(&state);
    assert_eq!(
        r.keys().collect::<Vec<_>>(),
        named,
        "exactly the manifest's rows"
    );
    assert!(r.values().all(|s| s == "succeeded"), "{r:?}");
    for k in &named {
        assert_eq!(&b.get_strict(k).await, &inputs[*k]);
    }
    assert_eq!(
        pg_count(&state, "SELECT count(*) FROM jobs WHERE attempts <> 1").await,
        0,
        "each object migrated once although both processes read the manifest"
    );
    // report --to s3:// from the database.
    let to = format!("s3://{}/reports/", b.bucket);
    let o = run(&[
        "report",
        "--state",
        &state,
        "--to",
        &to,
        "--job-id",
        "00000000-1111-4222-8333-555555555555",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let job = "reports/job-00000000-1111-4222-8333-555555555555";
    let got =
        b.s3.get_object()
            .bucket(&b.bucket)
            .key(format!("{job}/manifest.json"))
            .send()
            .await
            .expect("report manifest");
    let m: serde_json::Value =
        serde_json::from_slice(&got.body.collect().await.expect("body").to_vec()).expect("json");
    let results = m["Results"].as_array().expect("Results");
    assert_eq!(results.len(), 1, "{m}");
    assert_eq!(results[0]["TaskExecutionStatus"], "succeeded", "{m}");
    let key = results[0]["Key"].as_str().expect("key");
    let body =
        b.s3.get_object()
            .bucket(&b.bucket)
            .key(key)
            .send()
            .await
            .expect("result file")
            .body
            .collect()
            .await
            .expect("body")
            .to_vec();
    assert_eq!(String::from_utf8_lossy(&body).lines().count(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kms_budget_is_shared_by_the_processes_of_a_run() {
    let Some(b) = bed("pg-budget").await else {
        return;
    };
    let Some(state) = pg_database("pg_budget").await else {
        return;
    };
    // Two processes on one --kms-rps: each takes half (the log says so). Slow enough (1 KMS
    // call a second each) that both run for a few seconds side by side.
    let _inputs = seed(&b, 8, 100).await;
    let mut cmd = b.rekey_command(&state);
    cmd.args(["--kms-rps", "2"]).env("S3CSE_LOG", "s3cse=info");
    let (p1, p2) = (spawn(&mut cmd), spawn(&mut cmd));
    let (o1, o2) = (wait(p1), wait(p2));
    for o in [&o1, &o2] {
        assert_eq!(o.status.code(), Some(0), "{}", show(o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("processes=2"),
            "each process took half the budget: {}",
            show(o)
        );
    }
    // The run as a whole kept to the budget: 8 GenerateDataKey at 2/s (bursts of 1 each).
    let st = status(&state);
    assert_eq!(st["by_state"]["done"]["objects"], 8, "{st}");
}

/// How far the shared budget drifts (BENCHMARKS.md, "Shared queue"; `scripts/bench-budget.sh`):
/// 90 objects at `--kms-rps 10` (one GenerateDataKey each), by one process, then by three
/// sharing the budget (each a bucket and database of its own, same run). Prints the effective
/// GenerateDataKey rate of each: a shared budget keeps the three near the one.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement; scripts/bench-budget.sh"]
async fn budget_drift() {
    const N: usize = 90;
    for procs in [1usize, 3] {
        let Some(b) = bed("pg-drift").await else {
            return;
        };
        let Some(state) = pg_database("pg_drift").await else {
            return;
        };
        seed(&b, N, 200).await;
        let textfiles: Vec<String> = (0..procs)
            .map(|i| b.path(&format!("p{i}.prom")).display().to_string())
            .collect();
        let t = Instant::now();
        let children: Vec<Child> = textfiles
            .iter()
            .map(|tf| {
                spawn(b.rekey_command(&state).args([
                    "--kms-rps",
                    "10",
                    "--concurrency",
                    "8",
                    "--metrics-textfile",
                    tf,
                ]))
            })
            .collect();
        for c in children {
            let o = wait(c);
            assert_eq!(o.status.code(), Some(0), "{}", show(&o));
        }
        let secs = t.elapsed().as_secs_f64();
        let gdk: f64 = textfiles
            .iter()
            .map(|tf| {
                metric(
                    &std::fs::read_to_string(tf).expect("textfile"),
                    "s3cse_kms_requests_total",
                    &[("operation", "GenerateDataKey")],
                )
            })
            .sum();
        assert_eq!(gdk, N as f64);
        println!(
            "budget: {procs} process(es), --kms-rps 10: {gdk} GenerateDataKey in {secs:.1} s \
             (start to last exit) = {:.1}/s",
            gdk / secs
        );
    }
}
