//! The fuzz targets of s3cse, one function per target, each asserting its invariants with a
//! panic. Shared by two drivers:
//!
//! - `fuzz/fuzz_targets/*.rs` (cargo-fuzz / libFuzzer, coverage-guided, `scripts/fuzz.sh`);
//! - `tests/fuzz.rs` (proptest, a bounded number of cases in `cargo test`).
//!
//! Invariants, for every input: no panic; no allocation sized by a length field of the input
//! (libFuzzer's `-rss_limit_mb` / `-malloc_limit_mb` catch one); no plaintext released for a
//! body that does not authenticate; every decryption failure is the one opaque
//! `CodecError::DecryptionFailed`; an envelope that decodes encodes back to itself.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context as TaskContext, Poll};

use s3cse::client::ByteRange;
use s3cse::codec::{self, CodecError, DecryptPolicy, ObjectDecryptor, WriteFormat};
use s3cse::content::{self, range};
use s3cse::envelope::{self, Detected, Envelope, Location, Metadata};
use s3cse::keyring::{AesMasterKey, Keyring};
use s3cse::secret::SecretBytes;
use tokio::io::{AsyncRead, ReadBuf};

/// A cursor over fuzz bytes: numbers and choices come from the front, never panicking when the
/// input runs out (zeros then).
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input(data)
    }
    pub fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    pub fn u64(&mut self) -> u64 {
        (0..8).fold(0u64, |acc, _| (acc << 8) | u64::from(self.byte()))
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            ((usize::from(self.byte()) << 8) | usize::from(self.byte())) % n
        }
    }
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Envelope detection and decoding.

/// Field names the envelope codec looks at, so that mutated maps hit real fields often.
pub const FIELDS: &[&str] = &[
    "x-amz-key",
    "x-amz-key-v2",
    "x-amz-iv",
    "x-amz-matdesc",
    "x-amz-cek-alg",
    "x-amz-wrap-alg",
    "x-amz-tag-len",
    "x-amz-unencrypted-content-length",
    "x-amz-c",
    "x-amz-3",
    "x-amz-w",
    "x-amz-m",
    "x-amz-t",
    "x-amz-d",
    "x-amz-i",
];

/// Metadata from fuzz bytes: a JSON object when the bytes are one (the corpus is the vectors'
/// metadata), else `name=value` lines where a name that is a small number picks one of
/// [`FIELDS`].
pub fn metadata_of(data: &[u8]) -> Metadata {
    if let Ok(m) = serde_json::from_slice::<BTreeMap<String, String>>(data) {
        return m;
    }
    let text = String::from_utf8_lossy(data);
    let mut m = Metadata::new();
    for line in text.split('\n') {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        let k = match k.parse::<usize>() {
            Ok(i) => FIELDS[i % FIELDS.len()].to_owned(),
            Err(_) => k.to_ascii_lowercase(),
        };
        m.insert(k, v.to_owned());
    }
    m
}

/// Target `envelope`: detect/decode object metadata, complete it with an instruction file, and
/// re-encode whatever decodes.
pub fn envelope_target(data: &[u8]) {
    // Split: object metadata | 0xff | instruction file JSON.
    let (meta, file) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let m = metadata_of(meta);
    let _ = envelope::has_envelope_fields(&m);
    let detected = envelope::detect(&m);
    if let Ok(Detected::Complete(env)) = &detected {
        round_trip(env);
    }
    if let (Ok(d), Some(file)) = (detected, file)
        && !matches!(d, Detected::Complete(_))
        && let Ok(env) = d.complete_with_instruction_file(&m, file)
    {
        assert_eq!(env.location, Location::InstructionFile);
        round_trip(&env);
        // What goes to an instruction file comes back from one.
        let (object, json) = env.to_instruction_file();
        let back = envelope::detect(&object)
            .and_then(|d| d.complete_with_instruction_file(&object, &json))
            .unwrap_or_else(|e| panic!("instruction file of {env:?} does not decode: {e}"));
        assert_eq!(back, env, "instruction-file round trip");
    }
}

/// An envelope encodes to metadata that decodes to the same envelope (symmetric codec).
fn round_trip(env: &Envelope) {
    let mut want = env.clone();
    want.location = Location::ObjectMetadata;
    let m = env.to_metadata();
    let back = envelope::decode(&m).unwrap_or_else(|e| panic!("{env:?} re-encoded as {m:?}: {e}"));
    assert_eq!(back, want, "metadata round trip via {m:?}");
}

/// Target `instruction_file`: the JSON parser alone (deep nesting, huge numbers, odd types).
pub fn instruction_file_target(data: &[u8]) {
    if let Ok(m) = envelope::parse_instruction_file(data) {
        // Keys come back lowercased; values are strings.
        assert!(m.keys().all(|k| k.to_ascii_lowercase() == *k));
        let _ = envelope::detect(&m);
    }
}

/// Target `rfc2047`: encoded words and the encryption context / matdesc parser behind them.
pub fn context_target(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(out) = envelope::rfc2047::decode(&text) {
        // Decoding never grows the text by more than Latin-1's doubling: no allocation driven
        // by anything but the input's own size.
        assert!(
            out.len() <= text.len() * 2,
            "{text:?} -> {} bytes",
            out.len()
        );
    }
    if let Ok(ctx) = envelope::parse_context("x-amz-matdesc", &text) {
        // A parsed context encodes to JSON that parses back to itself.
        let json = envelope::context_json(&ctx);
        assert_eq!(
            envelope::parse_context("x-amz-matdesc", &json).ok(),
            Some(ctx)
        );
    }
    let _ = s3cse::rekey::plan::key_id_of(&text);
}

// ---------------------------------------------------------------------------------------------
// Ranges.

/// Target `range`: `--range` parsing, its resolution against an object length, and the GCM/CBC
/// range plans, checked against a whole-object decryption of a real body.
pub fn range_target(data: &[u8]) {
    let mut inp = Input::new(data);
    let len = inp.u64() % 600;
    let text = String::from_utf8_lossy(inp.bytes(32)).into_owned();
    if let Ok(r) = text.parse::<ByteRange>()
        && let Some((a, b)) = r.resolve(len)
    {
        assert!(a <= b && b < len, "{text:?} on {len} -> {a}..={b}");
    }
    // Plans on arbitrary numbers must not overflow or panic.
    let (s, e, l) = (inp.u64(), inp.u64(), inp.u64());
    for plan in [range::plan_gcm(s, e, l), range::plan_cbc(s, e, l)]
        .into_iter()
        .flatten()
    {
        assert!(plan.fetch_start <= plan.fetch_end_inclusive);
        assert!(plan.fetch_end_inclusive < l, "{plan:?} fetches past {l}");
    }
    // Differential: a ranged decryption equals the slice of the whole plaintext.
    let objs = objects();
    let o = &objs[inp.below(objs.len())];
    let plain = &o.plaintext;
    let (start, end) = (inp.u64() % 700, inp.u64() % 700);
    let ct_len = o.body.len() as u64;
    let key = o.cek.expose();
    match o.env.content_alg {
        envelope::ContentAlg::AesGcm => {
            let Some(plan) = range::plan_gcm(start, end, ct_len) else {
                assert!(start > end || start >= plain.len() as u64);
                return;
            };
            let fetched = &o.body[plan.fetch_start as usize..=plan.fetch_end_inclusive as usize];
            let got = range::decrypt_gcm_range(key, &o.env.iv, &plan, fetched).unwrap();
            let want_end = (end as usize).min(plain.len() - 1);
            assert_eq!(got, plain[start as usize..=want_end], "gcm {start}..={end}");
        }
        envelope::ContentAlg::AesCbc => {
            let Some(plan) = range::plan_cbc(start, end, ct_len) else {
                return;
            };
            let fetched = &o.body[plan.fetch_start as usize..=plan.fetch_end_inclusive as usize];
            let got = range::decrypt_cbc_range(key, &o.env.iv, &plan, ct_len, fetched).unwrap();
            let want: &[u8] = if (start as usize) < plain.len() {
                &plain[start as usize..=(end as usize).min(plain.len() - 1)]
            } else {
                &[]
            };
            assert_eq!(got, want, "cbc {start}..={end}");
        }
        envelope::ContentAlg::AesGcmCommitting => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Whole-object decryption.

/// An object written by s3cse's own writers under the vectors' AES key.
pub struct Object {
    pub env: Envelope,
    pub body: Vec<u8>,
    pub plaintext: Vec<u8>,
    pub cek: SecretBytes,
}

pub fn keyring() -> Keyring {
    let hex = include_bytes!("../tests/vectors/keys/aes256.hex");
    Keyring::aes(AesMasterKey::from_file_bytes(hex).unwrap())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Three small objects (V1 AES/ECB + CBC, V2 AES/GCM wrap + GCM, V3 committing), built once.
pub fn objects() -> &'static [Object] {
    static OBJECTS: OnceLock<Vec<Object>> = OnceLock::new();
    OBJECTS.get_or_init(|| {
        let rt = runtime();
        let ring = keyring();
        let plaintext: Vec<u8> = (0..517u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut out = Vec::new();
        for which in 0..3 {
            let len = Some(plaintext.len() as u64);
            let enc = match which {
                0 => codec::new_legacy_v1_encryption(&ring, len).unwrap(),
                1 => rt
                    .block_on(codec::new_encryption(
                        &ring,
                        WriteFormat::V2,
                        &Default::default(),
                        len,
                    ))
                    .unwrap(),
                _ => rt
                    .block_on(codec::new_encryption(
                        &ring,
                        WriteFormat::V3,
                        &Default::default(),
                        len,
                    ))
                    .unwrap(),
            };
            let mut body = Vec::new();
            let (env, _) = rt
                .block_on(codec::encrypt_stream(enc, &mut &plaintext[..], &mut body))
                .unwrap();
            let cek = rt
                .block_on(codec::unwrap_content_key(
                    &env,
                    &ring,
                    &DecryptPolicy::legacy(),
                ))
                .unwrap()
                .remove(0);
            out.push(Object {
                env,
                body,
                plaintext: plaintext.clone(),
                cek,
            });
        }
        out
    })
}

/// An `AsyncRead` that hands out its bytes in the chunk sizes it is given (then 1-byte reads).
struct Chunked<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    i: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let want = self.sizes.get(self.i).copied().unwrap_or(1).max(1);
        self.i += 1;
        let n = want.min(buf.remaining()).min(self.data.len());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// Target `decrypt`: one of [`objects`], its body and envelope mutated (bits flipped, cut,
/// extended, a metadata field replaced) or not, decrypted in random chunks, both through
/// `ObjectDecryptor` and through `decrypt_stream` (which must release nothing on failure).
pub fn decrypt_target(data: &[u8]) {
    let mut inp = Input::new(data);
    let objs = objects();
    let o = &objs[inp.below(objs.len())];
    let mut body = o.body.clone();
    let mut meta = o.env.to_metadata();
    let mut body_changed = false;
    let mut meta_changed = false;
    for _ in 0..inp.below(4) {
        match inp.byte() % 5 {
            0 if !body.is_empty() => {
                let i = inp.below(body.len());
                let bit = 1u8 << (inp.byte() % 8);
                body[i] ^= bit;
                body_changed = true;
            }
            1 => {
                let n = inp.below(body.len() + 1);
                body_changed |= n != body.len();
                body.truncate(n);
            }
            2 => {
                let n = 1 + inp.below(40);
                let extra = inp.bytes(n).to_vec();
                body_changed |= !extra.is_empty();
                body.extend_from_slice(&extra);
            }
            3 => {
                let k = FIELDS[inp.below(FIELDS.len())];
                let n = inp.below(64);
                let v = String::from_utf8_lossy(inp.bytes(n)).into_owned();
                if meta.get(k) != Some(&v) {
                    meta.insert(k.to_owned(), v);
                    meta_changed = true;
                }
            }
            _ => {}
        }
    }
    // Two flips of one bit, or a cut and an extension, can give the object back unchanged.
    body_changed &= body != o.body;
    meta_changed &= meta != o.env.to_metadata();
    let sizes: Vec<usize> = (0..inp.below(16)).map(|_| inp.below(300)).collect();
    let Ok(env) = envelope::decode(&meta) else {
        return;
    };

    // ObjectDecryptor with the real content key, random chunking.
    if let Ok(mut dec) = ObjectDecryptor::new(&env, &o.cek) {
        let mut out = Vec::new();
        let mut rest = &body[..];
        let mut res = Ok(());
        for &s in &sizes {
            let (a, b) = rest.split_at(s.min(rest.len()));
            rest = b;
            res = res.and_then(|()| dec.update(a, &mut out));
        }
        let res = res
            .and_then(|()| dec.update(rest, &mut out))
            .and_then(|()| dec.finish(&mut out));
        match res {
            Ok(n) => {
                assert_eq!(n as usize, out.len());
                // GCM and V3 never accept a changed body; CBC does what it can.
                if env.content_alg != envelope::ContentAlg::AesCbc {
                    assert!(
                        !body_changed,
                        "{:?}: a changed body authenticated",
                        env.content_alg
                    );
                }
                if !body_changed && !meta_changed {
                    assert_eq!(out, o.plaintext);
                }
            }
            Err(e) => assert!(
                matches!(e, CodecError::DecryptionFailed),
                "not the opaque error: {e:?}"
            ),
        }
    }

    // decrypt_stream through the keyring: on failure nothing reaches the destination.
    let rt = runtime();
    let mut src = Chunked {
        data: &body,
        sizes,
        i: 0,
    };
    let mut dst = Vec::new();
    let res = rt.block_on(codec::decrypt_stream(
        &env,
        &keyring(),
        &DecryptPolicy::legacy(),
        &mut src,
        &mut dst,
    ));
    match res {
        Ok(n) => {
            assert_eq!(n as usize, dst.len());
            if env.content_alg != envelope::ContentAlg::AesCbc {
                assert!(!body_changed, "a changed body authenticated");
            }
            if !body_changed && !meta_changed {
                assert_eq!(dst, o.plaintext);
            }
        }
        Err(e) => {
            assert!(dst.is_empty(), "{} bytes released before {e}", dst.len());
            if !meta_changed {
                assert!(
                    matches!(e, CodecError::DecryptionFailed),
                    "not the opaque error: {e:?}"
                );
            }
        }
    }
}

/// Target `content`: the content ciphers alone, on arbitrary keys, IVs and bodies (a key or IV
/// of a wrong length is an error, never a panic).
pub fn content_target(data: &[u8]) {
    let mut inp = Input::new(data);
    let n = inp.below(40);
    let key = inp.bytes(n).to_vec();
    let n = inp.below(20);
    let iv = inp.bytes(n).to_vec();
    let which = inp.byte() % 3;
    let body = inp.rest();
    let dec = match which {
        0 => content::gcm_decryptor(&key, &iv, &[]),
        1 => content::cbc_decryptor(&key, &iv),
        _ => content::commit::committing_decryptor(&key, &iv, body.get(..28).unwrap_or(&[]))
            .map(|d| Box::new(d) as Box<dyn content::ContentDecryptor>),
    };
    let Ok(mut dec) = dec else { return };
    let mut out = Vec::new();
    let _ = dec.update(body, &mut out);
    let _ = dec.finish(&mut out);
    assert!(out.len() <= body.len(), "more plaintext than ciphertext");
}
