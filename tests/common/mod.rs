//! Shared helpers of the integration tests that talk to the local test bed (SeaweedFS for S3,
//! moto for KMS), started by `scripts/testbed.sh up` (and by `scripts/test.sh`, which sources
//! `.testbed/env` so these variables are set). Without the test bed the tests say so and return.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use s3cse::client::{GetOptions, PutRequest, S3Cse};
use s3cse::keyring::{AesMasterKey, AwsKms, Keyring, KmsKeyring};

/// The test bed's environment, or `None` (with a message) when it is not running.
pub fn testbed() -> Option<()> {
    if std::env::var("S3CSE_TESTBED").is_ok() {
        return Some(());
    }
    if std::env::var("CI").is_ok() {
        panic!("CI must run the integration tests: S3CSE_TESTBED is unset (run scripts/test.sh)");
    }
    eprintln!("skipped: the local S3+KMS test bed is not running (run scripts/test.sh)");
    None
}

pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}

pub async fn s3() -> aws_sdk_s3::Client {
    let conf = sdk_config().await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    )
}

pub async fn kms() -> aws_sdk_kms::Client {
    aws_sdk_kms::Client::new(&sdk_config().await)
}

/// A fresh bucket with a name unique to this process and call.
pub async fn bucket(s3: &aws_sdk_s3::Client, tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{tag}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() % 100_000)
            .unwrap_or(0)
    );
    s3.create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("create bucket");
    name
}

/// What most test-bed tests start from: the S3 and KMS clients, a fresh bucket, a fresh KMS key
/// and a temporary directory for local files.
pub struct Bed {
    pub s3: aws_sdk_s3::Client,
    pub kms: aws_sdk_kms::Client,
    pub bucket: String,
    /// A fresh KMS key (the target key of the `rekey` tests).
    pub key_id: String,
    pub dir: tempfile::TempDir,
}

/// A [`Bed`] with a bucket named after `tag`, or `None` when the test bed is not running (the
/// test says so and returns): `let Some(b) = bed("tag").await else { return };`.
pub async fn bed(tag: &str) -> Option<Bed> {
    testbed()?;
    let (s3, kms) = (s3().await, kms().await);
    let bucket = bucket(&s3, tag).await;
    let key_id = kms_key(&kms).await;
    Some(Bed {
        s3,
        kms,
        bucket,
        key_id,
        dir: tempfile::tempdir().expect("tmp"),
    })
}

impl Bed {
    /// `name` in the bed's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `bytes` to `name` in the temporary directory; returns its path.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).expect("write");
        p
    }

    /// `s3://BUCKET/KEY`.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// `s3://BUCKET`: the whole bucket, as `rekey` and `scan` take it.
    pub fn bucket_url(&self) -> String {
        format!("s3://{}", self.bucket)
    }

    /// `s3cse rekey s3://BUCKET --state STATE --kms-key-id KEY --aes-key-file AES`: the bed's
    /// bucket to the bed's key, legacy objects read with the vectors' AES key; warnings only in
    /// its log (a later `.env("S3CSE_LOG", ..)` wins), no stdin. Options go on with `.args(..)`;
    /// the command can be spawned more than once (several processes on one state).
    pub fn rekey_command(&self, state: impl AsRef<OsStr>) -> Command {
        let mut cmd = bin();
        cmd.arg("rekey")
            .arg(self.bucket_url())
            .arg("--state")
            .arg(state)
            .args(["--kms-key-id", &self.key_id])
            .arg("--aes-key-file")
            .arg(aes_key_file())
            .env("S3CSE_LOG", "warn")
            .stdin(Stdio::null());
        cmd
    }

    /// [`Bed::rekey_command`] with `extra` options, run to its end.
    pub fn rekey(&self, state: impl AsRef<OsStr>, extra: &[&str]) -> Output {
        self.rekey_command(state)
            .args(extra)
            .output()
            .expect("run s3cse rekey")
    }

    /// Stores `body` as is (no encryption) with the given user metadata.
    pub async fn raw_put(&self, key: &str, body: Vec<u8>, meta: &[(String, String)]) {
        let mut req = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body.into());
        for (k, v) in meta {
            req = req.metadata(k, v);
        }
        req.send().await.expect("raw put");
    }

    /// The stored bytes of an object and its user metadata (no decryption).
    pub async fn raw_get(&self, key: &str) -> (Vec<u8>, HashMap<String, String>) {
        let out = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .expect("raw get");
        let meta = out.metadata().cloned().unwrap_or_default();
        (
            out.body
                .collect()
                .await
                .expect("body")
                .into_bytes()
                .to_vec(),
            meta,
        )
    }

    /// Turns versioning on for the bed's bucket.
    pub async fn enable_versioning(&self) {
        self.s3
            .put_bucket_versioning()
            .bucket(&self.bucket)
            .versioning_configuration(
                aws_sdk_s3::types::VersioningConfiguration::builder()
                    .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .expect("versioning");
    }

    /// The current version id of `key` (versioned bucket).
    pub async fn version_of(&self, key: &str) -> String {
        self.s3
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .expect("head")
            .version_id()
            .expect("versioned")
            .to_owned()
    }

    /// `key` read back by AWS's Python client under the bed's key (the rekey target).
    pub fn aws_reads(&self, key: &str) -> Vec<u8> {
        let out = self.path("aws-out");
        let o = peer_get(
            "awsclient",
            &self.bucket,
            key,
            &out,
            &["--kms-key-id", &self.key_id],
        );
        assert_ok(key, &o);
        std::fs::read(&out).expect("out")
    }

    /// Stores `json` as an instruction-file object, with the marker AWS's clients put on them.
    pub async fn put_instruction(&self, key: &str, json: Vec<u8>) {
        self.raw_put(
            key,
            json,
            &[("x-amz-crypto-instr-file".into(), String::new())],
        )
        .await;
    }

    /// Encrypts `body` with `ring` as `format` and stores it with its envelope in
    /// `<key>.instruction` (as Java, Ruby, PHP and .NET can write it). Returns the file's JSON.
    pub async fn put_with_instruction_file(
        &self,
        ring: &Keyring,
        format: s3cse::codec::WriteFormat,
        key: &str,
        body: &[u8],
    ) -> Vec<u8> {
        let enc = s3cse::codec::new_encryption(
            ring,
            format,
            &Default::default(),
            Some(body.len() as u64),
        )
        .await
        .expect("encryption");
        let mut ct = Vec::new();
        let (env, _) = s3cse::codec::encrypt_stream(enc, &mut &body[..], &mut ct)
            .await
            .expect("encrypt");
        let (object_meta, file) = env.to_instruction_file();
        self.raw_put(key, ct, &object_meta.into_iter().collect::<Vec<_>>())
            .await;
        self.put_instruction(&format!("{key}.instruction"), file.clone())
            .await;
        file
    }

    /// Every key in the bucket with its ETag.
    pub async fn etags(&self) -> std::collections::BTreeMap<String, String> {
        let out = self
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .send()
            .await
            .expect("list");
        out.contents()
            .iter()
            .map(|o| {
                (
                    o.key().unwrap_or_default().to_owned(),
                    o.e_tag().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Every key in the bucket, sorted.
    pub async fn keys(&self) -> Vec<String> {
        self.etags().await.into_keys().collect()
    }

    /// Ids of the multipart uploads open in the bucket, sorted.
    pub async fn open_uploads(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .open_uploads_by_key()
            .await
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        ids.sort();
        ids
    }

    /// `(key, upload id)` of the multipart uploads open in the bucket (one listing page).
    pub async fn open_uploads_by_key(&self) -> Vec<(String, String)> {
        let l = self
            .s3
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .send()
            .await
            .expect("list uploads");
        l.uploads()
            .iter()
            .filter_map(|u| Some((u.key()?.to_owned(), u.upload_id()?.to_owned())))
            .collect()
    }

    /// Reads an object back with s3cse's strict policy: only V2/V3 `kms+context` under the bed's
    /// key decrypt, so this also proves the object was migrated to it.
    pub async fn get_strict(&self, key: &str) -> Vec<u8> {
        let kms = AwsKms::new(self.kms.clone());
        let ring = Keyring::kms(KmsKeyring::new(Arc::new(kms), &self.key_id));
        let mut out = Vec::new();
        S3Cse::new(self.s3.clone(), ring)
            .get_to(&self.bucket, key, &GetOptions::default(), &mut out)
            .await
            .expect("strict get");
        out
    }
}

/// A new symmetric KMS key in moto; returns its key id.
pub async fn kms_key(kms: &aws_sdk_kms::Client) -> String {
    let out = kms
        .create_key()
        .description("s3cse test")
        .send()
        .await
        .expect("create key");
    out.key_metadata().expect("metadata").key_id().to_owned()
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_s3cse"))
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn")
}

/// Runs a peer script (`aioboto3` or `awsclient`) with its own venv's Python.
pub fn peer(which: &str, args: &[&str]) -> Output {
    let py = std::env::var(format!("S3CSE_PY_{}", which.to_uppercase())).expect("peer python");
    let dir = std::env::var("S3CSE_PEERS_DIR").expect("S3CSE_PEERS_DIR");
    Command::new(py)
        .arg(Path::new(&dir).join(format!("{which}_peer.py")))
        .args(args)
        .output()
        .expect("spawn peer")
}

/// `peer WHICH put --bucket B --key K --input FILE EXTRA...`: a peer encrypts `input` into S3.
pub fn peer_put(which: &str, bucket: &str, key: &str, input: &Path, extra: &[&str]) -> Output {
    peer_object(which, "put", bucket, key, ("--input", input), extra)
}

/// `peer WHICH get --bucket B --key K --output FILE EXTRA...`: a peer decrypts an object.
pub fn peer_get(which: &str, bucket: &str, key: &str, output: &Path, extra: &[&str]) -> Output {
    peer_object(which, "get", bucket, key, ("--output", output), extra)
}

fn peer_object(
    which: &str,
    op: &str,
    bucket: &str,
    key: &str,
    (file_flag, file): (&str, &Path),
    extra: &[&str],
) -> Output {
    let file = file.display().to_string();
    let mut args = vec![op, "--bucket", bucket, "--key", key, file_flag, &file];
    args.extend_from_slice(extra);
    peer(which, &args)
}

/// `awsclient_peer.py head`: an object's content type, user metadata and tags, as JSON.
pub fn peer_head(bucket: &str, key: &str) -> serde_json::Value {
    let o = peer("awsclient", &["head", "--bucket", bucket, "--key", key]);
    assert_ok("head", &o);
    serde_json::from_slice(&o.stdout).expect("head json")
}

/// Owned arguments from string literals: `strings(&["--format", "v3"])`.
pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

pub fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// Deterministic test data of `n` bytes.
pub fn data(n: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The AES-256 master key file of the vectors: the legacy key of [`put_v1`] objects.
pub fn aes_key_file() -> PathBuf {
    vectors().join("keys/aes256.hex")
}

/// The RSA-2048 private key (PEM) of the vectors.
pub fn rsa_private_key_file() -> PathBuf {
    vectors().join("keys/rsa2048-private.pem")
}

/// The AES-256 master key of [`aes_key_file`].
pub fn aes_key() -> AesMasterKey {
    let bytes = std::fs::read(aes_key_file()).expect("aes key");
    AesMasterKey::from_file_bytes(&bytes).expect("aes key")
}

/// Writes `data` with s3cse's legacy V1 writer (AES/ECB-wrapped key under [`aes_key_file`],
/// CBC content): a legacy object for `rekey` to migrate.
pub async fn put_v1(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, data: &[u8]) {
    put_v1_with(s3, bucket, key, data, PutRequest::default()).await;
}

/// [`put_v1`] with the rest of the request (metadata, attributes, tags) from `req`.
pub async fn put_v1_with(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    data: &[u8],
    req: PutRequest,
) {
    let ring = Keyring::aes(aes_key());
    let client = S3Cse::new(s3.clone(), ring.clone());
    let enc = s3cse::codec::new_legacy_v1_encryption(&ring, Some(data.len() as u64)).expect("v1");
    let req = PutRequest {
        bucket: bucket.into(),
        key: key.into(),
        plaintext_len: Some(data.len() as u64),
        ..req
    };
    client
        .put_encrypted(&req, enc, &mut &data[..])
        .await
        .expect("put v1");
}

/// `(state, action, source_format, previous_version_id, error_code, result_etag)` of `key` in
/// a rekey state (a SQLite file or a `postgres://` URL), read directly from its job table.
pub type Record = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

pub async fn record(state: &str, key: &str) -> Record {
    const SELECT: &str = "SELECT state, action, source_format, previous_version_id, error_code, \
                          result_etag FROM jobs WHERE key = ";
    // The same read on either backend's pool; `$placeholder`: its parameter syntax.
    macro_rules! read {
        ($db:expr, $placeholder:literal) => {{
            let db = $db.await.expect("open state");
            let r = sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT}{}", $placeholder)))
                .bind(key)
                .fetch_one(&db)
                .await
                .expect("row");
            db.close().await;
            r
        }};
    }
    if state.starts_with("postgres://") || state.starts_with("postgresql://") {
        read!(sqlx::PgPool::connect(state), "$1")
    } else {
        read!(sqlx::SqlitePool::connect(&format!("sqlite://{state}")), "?")
    }
}

/// `tests/faultproxy/faultproxy.py` in front of the test bed's S3 and KMS, on a free loopback
/// port, injecting faults at the given rates; killed on drop. Point a child process at it with
/// [`FaultProxy::point`].
pub struct FaultProxy {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// One JSON line per injected fault.
    pub log: PathBuf,
    dir: tempfile::TempDir,
}

impl FaultProxy {
    /// Starts the proxy with `--seed seed` and `--rate KIND=P` for each of `rates`; waits until
    /// it listens (at most 20 s).
    pub fn start(seed: u64, rates: &[(&str, f64)]) -> FaultProxy {
        use std::io::BufRead as _;
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("faults.jsonl");
        let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let python = std::env::var("S3CSE_PY_TESTBED").unwrap_or_else(|_| "python3".into());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faultproxy/faultproxy.py");
        let upstream = |var: &str| std::env::var(var).unwrap_or_else(|_| panic!("{var} unset"));
        let mut cmd = Command::new(python);
        cmd.arg(script)
            .args(["--s3", &upstream("AWS_ENDPOINT_URL_S3")])
            .args(["--kms", &upstream("AWS_ENDPOINT_URL_KMS")])
            .args(["--seed", &seed.to_string()])
            .arg("--log")
            .arg(&log);
        for (kind, p) in rates {
            cmd.args(["--rate", &format!("{kind}={p}")]);
        }
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn faultproxy");
        // The first line says where it listens; read it on a thread, so a proxy that never
        // prints it cannot hang the test.
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_default();
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            let err = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
            panic!("faultproxy did not start: {line:?}\n{err}");
        };
        FaultProxy {
            url: format!("http://{addr}"),
            child,
            log,
            dir,
        }
    }

    /// Sends `cmd`'s S3 and KMS requests through the proxy.
    pub fn point<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("AWS_ENDPOINT_URL_S3", &self.url)
            .env("AWS_ENDPOINT_URL_KMS", &self.url)
    }

    /// Faults injected so far, by kind.
    pub fn faults(&self) -> std::collections::BTreeMap<String, u64> {
        let mut n = std::collections::BTreeMap::new();
        for line in std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
        {
            let v: serde_json::Value = serde_json::from_str(line).expect("fault log line");
            *n.entry(v["kind"].as_str().unwrap_or("?").to_owned())
                .or_insert(0) += 1;
        }
        n
    }

    /// `METHOD TARGET` of each injected fault of `kind`, in order.
    pub fn log_lines(&self, kind: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["kind"] == kind)
            .map(|v| {
                format!(
                    "{} {}",
                    v["method"].as_str().unwrap_or("?"),
                    v["target"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }

    /// What the proxy wrote to stderr (dropped connections), for failure messages.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `s3cse ARGS...` (the binary under test), warnings only in its log.
pub fn run_s3cse(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_s3cse"))
        .args(args)
        .env("S3CSE_LOG", "warn")
        .output()
        .expect("run s3cse")
}

/// A command's exit code, stdout and stderr, for assertion messages.
/// `key -> TaskStatus` of `s3cse report --format jsonl` over a state (file or URL).
pub fn report_statuses(state: &str) -> std::collections::BTreeMap<String, String> {
    let o = run_s3cse(&["report", "--state", state, "--format", "jsonl"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("jsonl");
            (
                v["Key"].as_str().expect("key").to_owned(),
                v["TaskStatus"].as_str().expect("status").to_owned(),
            )
        })
        .collect()
}

pub fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Writes `data` as V2 with a raw AES key (`AES/GCM` wrap, GCM content), as `s3cse put
/// --aes-key-file` does, with the vectors' AES key.
pub async fn put_raw_gcm(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, data: &[u8]) {
    let client = S3Cse::new(s3.clone(), Keyring::aes(aes_key()));
    let req = PutRequest {
        bucket: bucket.into(),
        key: key.into(),
        format: s3cse::codec::WriteFormat::V2,
        ..PutRequest::default()
    };
    client
        .put_from(&req, &mut &data[..])
        .await
        .expect("put raw gcm");
}

/// The in-process `rekey` configuration the CLI would build for `b`'s bucket: one worker,
/// verify on, the CLI's copy thresholds, the target's [`s3cse::rekey::owner::KeyOwner`] asking
/// `kms`. Tests change what they exercise with struct update syntax.
pub async fn rekey_config(
    b: &Bed,
    client: S3Cse,
    kms: Arc<dyn s3cse::keyring::KmsClient>,
    target: s3cse::rekey::TargetKey,
    store: s3cse::store::JobStore,
    metrics: Arc<s3cse::metrics::Metrics>,
) -> s3cse::rekey::RekeyConfig {
    use std::time::Duration;

    s3cse::rekey::RekeyConfig {
        bucket: b.bucket.clone(),
        prefix: String::new(),
        shard: None,
        manifest: None,
        list_page_size: s3cse::rekey::scan::MAX_LIST_PAGE_SIZE,
        listers: 1,
        context: s3cse::envelope::Context::new(),
        concurrency: 1,
        dry_run: false,
        reencrypt: false,
        goal: s3cse::rekey::Goal::default(),
        require_commitment: false,
        verify: true,
        max_claims: 10,
        object_timeout: Duration::from_secs(600),
        always_read_tags: false,
        lease: Duration::from_secs(30),
        scan: true,
        work: true,
        attribute_policy: s3cse::client::AttributePolicy::discover(&client, &b.bucket)
            .await
            .expect("bucket settings"),
        client,
        owner: Arc::new(s3cse::rekey::owner::KeyOwner::new(
            target.clone(),
            kms.clone(),
        )),
        kms,
        target,
        store,
        metrics,
        s3_limit: s3cse::rekey::limit::RateLimit::default(),
        copy_part_threshold: s3cse::rekey::copy::MAX_COPY_SIZE,
        copy_part_size: s3cse::rekey::copy::COPY_PART_SIZE,
    }
}

/// A fresh PostgreSQL database on the test bed's server (`S3CSE_TEST_PG_URL`, started by
/// `scripts/testbed.sh`), named after `tag`: its URL, for `--state`. `None` (with a message)
/// when the bed has no PostgreSQL; CI must have one.
pub async fn pg_database(tag: &str) -> Option<String> {
    use sqlx::Connection;

    let Ok(admin) = std::env::var("S3CSE_TEST_PG_URL") else {
        if std::env::var("CI").is_ok() {
            panic!("CI must run the PostgreSQL tests: S3CSE_TEST_PG_URL is unset");
        }
        eprintln!("skipped: the test bed runs no PostgreSQL (run scripts/testbed.sh up)");
        return None;
    };
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{}_{}_{}_{}",
        tag.replace('-', "_"),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() % 100_000)
            .unwrap_or(0)
    );
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to the test bed's PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .expect("create database");
    let base = admin
        .rsplit_once('/')
        .expect("a database in S3CSE_TEST_PG_URL")
        .0;
    Some(format!("{base}/{name}"))
}
