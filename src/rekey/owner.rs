//! Is a KMS ciphertext blob under the target key? The question every "current" decision of
//! `rekey` and `audit` rests on, answered truthfully on real AWS KMS.
//!
//! # Why the blob alone does not say
//! moto's blobs start with the key id in ASCII, and [`TargetKey::owns_blob`] finds it. Real KMS
//! blobs do not carry the key id in the clear: their cleartext header holds the identifier of
//! the *backing key* (HBKID) the KMS key encrypted with
//! (<https://docs.aws.amazon.com/kms/latest/cryptographic-details/customer-data-operations.html>),
//! and outside observers found some bytes fixed for all keys, some fixed per key and random
//! looking, and the rest new on every call (awsteele.com, "Cursory KMS research", 2020). A
//! search for the key id never matches there, so without more every object under the target
//! would look foreign: rekey would rewrap it again on every run and `audit` would never pass.
//!
//! # What is done instead
//! 1. The key id in the blob ([`TargetKey::owns_blob`]): yes, with no KMS call (moto and any KMS
//!    that names the key).
//! 2. A **signature** of the target key, only for key material made and kept by AWS KMS
//!    ([`TargetKey::aws_backed`]): on first need, [`PROBES`] GenerateDataKey calls under the
//!    target (plaintexts zeroized at once) and one Decrypt pinned to the target (it proves the
//!    caller may ask). The byte positions equal in all samples are the blob's fixed header,
//!    which holds the HBKID; their values are the signature. A blob of the same length with the
//!    same values at those positions was made by the same backing key: yes, with no KMS call.
//!    A different KMS key has a different backing key, so its blobs differ there. Samples that
//!    split two ways (the target rotated between them) make no signature ([`shape_of`]); a
//!    probe that fails for lack of permission fails every later question without a call.
//! 3. Otherwise KMS is asked: `Decrypt` pinned to the target (`KeyId`), plaintext dropped (and
//!    zeroized) at once. Success: yes, and the blob's values at the signature positions are
//!    kept as another signature of the target (an older backing key: the target was rotated).
//!    `IncorrectKeyException`: no, and the values are kept as a foreign signature, so the next
//!    blob of that backing key is answered without KMS. `AccessDeniedException` (a key in
//!    another account; moto says it for any other key; a key-policy condition) and a blob that
//!    does not decrypt (tampered, wrong context) are no, and teach nothing. Throttling, network
//!    errors and a disabled target are errors (the caller retries or fails the object).
//!
//! So on AWS, KMS is asked about once per backing key in the bucket, not once per object (more
//! for blobs of other lengths, refused ones and past [`MAX_SIGNATURES`]). A wrong "no" only
//! costs a needless rewrap; a wrong "yes" would leave a legacy object behind, so a "yes" comes
//! only from the key id at the start of the blob, from the target's own samples, or from KMS
//! itself. The samples rest on one documented fact: a blob's cleartext header names its
//! backing key, which belongs to one KMS key.
//!
//! Signatures are kept up to [`MAX_SIGNATURES`] a side; beyond that every unknown blob is
//! asked (bounded memory, correct answers, more calls).

use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::envelope::{Context, Envelope, WrapAlg};
use crate::keyring::{KmsClient, KmsError, KmsErrorKind, kms_source_context};

use super::plan::TargetKey;

/// GenerateDataKey calls whose blobs make the target's signature: a random byte equal in all
/// of them by chance is one in 2^24, so the signature is the fixed header.
pub const PROBES: usize = 4;
/// Fewer equal positions than this and no signature is trusted: every blob is asked about.
pub const MIN_SIGNATURE: usize = 16;
/// Positions taking exactly two values across the samples that mark them as coming from two
/// backing keys ([`shape_of`]).
pub const SPLIT_POSITIONS: usize = 4;
/// Signatures kept per side (the target's backing keys, foreign ones).
pub const MAX_SIGNATURES: usize = 64;

/// The encryption context of the probes: the one V2 writers give GenerateDataKey.
const PROBE_CONTEXT: (&str, &str) = ("aws:x-amz-cek-alg", "AES/GCM/NoPadding");

/// Answers "is this blob under the target key" (module docs).
pub struct KeyOwner {
    target: TargetKey,
    kms: Option<Arc<dyn KmsClient>>,
    /// Read the key id off the blob (step 1). Off only in tests, to take the path real KMS
    /// blobs take on a KMS whose blobs do name the key.
    key_id_in_blob: bool,
    /// The positions, learned on first need.
    shape: OnceCell<Option<Shape>>,
    known: Mutex<Known>,
    /// One KMS question at a time: objects of one backing key checked at once would each ask
    /// before the first answer is learned.
    asking: tokio::sync::Mutex<()>,
    /// The probe's failure, when retrying cannot mend it.
    failed: Mutex<Option<KmsError>>,
}

/// Where a blob of the target key has its fixed bytes.
#[derive(Debug, Clone)]
struct Shape {
    len: usize,
    positions: Vec<usize>,
}

impl Shape {
    /// The blob's values at the positions, if it has the shape's length.
    fn values(&self, blob: &[u8]) -> Option<Vec<u8>> {
        (blob.len() == self.len).then(|| self.positions.iter().map(|&i| blob[i]).collect())
    }
}

#[derive(Default)]
struct Known {
    ours: Vec<Vec<u8>>,
    theirs: Vec<Vec<u8>>,
}

/// How an answer was reached (tests and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// Not a KMS wrap at all.
    NotKms,
    /// The key id is in the blob.
    KeyId,
    /// A signature matched (the target's or a foreign one).
    Signature,
    /// KMS answered.
    Kms,
    /// The envelope names no encryption context KMS could be asked with: no, unasked.
    Envelope,
    /// No KMS client (offline): only the key id counts.
    Offline,
}

impl KeyOwner {
    /// Asks KMS (through `kms`, which should carry the run's rate limit and metrics) when the
    /// blob does not say.
    pub fn new(target: TargetKey, kms: Arc<dyn KmsClient>) -> Self {
        Self::build(target, Some(kms))
    }

    /// Without KMS: only a blob naming the target's key id is the target's.
    pub fn offline(target: TargetKey) -> Self {
        Self::build(target, None)
    }

    fn build(target: TargetKey, kms: Option<Arc<dyn KmsClient>>) -> Self {
        Self {
            target,
            kms,
            key_id_in_blob: true,
            shape: OnceCell::new(),
            known: Mutex::new(Known::default()),
            asking: tokio::sync::Mutex::new(()),
            failed: Mutex::new(None),
        }
    }

    /// Never read the key id off a blob: answers come from signatures and KMS only, as for
    /// real AWS KMS blobs. For tests against a KMS whose blobs name their key (moto).
    #[doc(hidden)]
    pub fn ignoring_key_id_in_blobs(mut self) -> Self {
        self.key_id_in_blob = false;
        self
    }

    pub fn target(&self) -> &TargetKey {
        &self.target
    }

    /// True if `env`'s data key is wrapped by the target key (`kms` or `kms+context`).
    pub async fn owns(&self, env: &Envelope) -> Result<bool, KmsError> {
        self.owns_with_basis(env).await.map(|(yes, _)| yes)
    }

    /// [`Self::owns`], with how the answer was reached.
    pub async fn owns_with_basis(&self, env: &Envelope) -> Result<(bool, Basis), KmsError> {
        if !matches!(env.wrap, WrapAlg::Kms | WrapAlg::KmsContext) {
            return Ok((false, Basis::NotKms));
        }
        let blob = &env.encrypted_key;
        if self.key_id_in_blob && self.target.owns_blob(blob) {
            return Ok((true, Basis::KeyId));
        }
        let Some(kms) = &self.kms else {
            return Ok((false, Basis::Offline));
        };
        let shape = self.shape(kms.as_ref()).await?;
        let values = shape.and_then(|s| s.values(blob));
        if let Some(v) = &values
            && let Some(answer) = self.lookup(v)
        {
            return Ok((answer, Basis::Signature));
        }
        // One question at a time for a blob whose answer will be learned, so objects of one
        // backing key checked at once ask once.
        let _asking = match &values {
            Some(_) => Some(self.asking.lock().await),
            None => None,
        };
        if let Some(v) = &values
            && let Some(answer) = self.lookup(v)
        {
            return Ok((answer, Basis::Signature));
        }
        // The context KMS wants; an envelope that cannot name one is not ours to vouch for.
        let Ok(context) = kms_source_context(env) else {
            return Ok((false, Basis::Envelope));
        };
        match kms
            .decrypt(Some(key_name(&self.target)), blob, &context)
            .await
        {
            Ok(plaintext) => {
                drop(plaintext);
                if let Some(v) = values {
                    self.learn(v, true);
                }
                Ok((true, Basis::Kms))
            }
            // The one answer that names the blob's key as another: learned.
            Err(e) if e.kind == KmsErrorKind::IncorrectKey => {
                if let Some(v) = values {
                    self.learn(v, false);
                }
                Ok((false, Basis::Kms))
            }
            // Not decryptable pinned to the target (tampered, wrong context) or refused (a key
            // in another account; moto's answer for any other key; a key-policy condition on
            // this context): no, and nothing learned, as a target blob may be refused too.
            Err(e)
                if matches!(
                    e.kind,
                    KmsErrorKind::InvalidCiphertext
                        | KmsErrorKind::AccessDenied
                        | KmsErrorKind::SourceKeyNotAllowed
                ) =>
            {
                Ok((false, Basis::Kms))
            }
            // Throttling, network, the target disabled or gone: no answer.
            Err(e) => Err(e),
        }
    }

    /// Learns the target's signature once (the probe), before the first question that needs
    /// it. `audit` calls it at start, so a missing permission is exit 2 before any object.
    pub async fn prepare(&self) -> Result<(), KmsError> {
        match &self.kms {
            Some(kms) => self.shape(kms.as_ref()).await.map(|_| ()),
            None => Ok(()),
        }
    }

    /// The target's shape: probed once; a failure that a retry cannot mend (no permission,
    /// the key disabled) is kept and returned to every later caller without another call.
    async fn shape(&self, kms: &dyn KmsClient) -> Result<Option<&Shape>, KmsError> {
        if !self.target.aws_backed {
            return Ok(None);
        }
        if let Some(e) = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(e);
        }
        let r = self
            .shape
            .get_or_try_init(|| async {
                // Two tries: a rotation of the target between the samples spoils one.
                for _ in 0..2 {
                    let samples = probe(&self.target, kms).await?;
                    if let Some(shape) = self.seed(&samples) {
                        return Ok(Some(shape));
                    }
                }
                tracing::warn!(
                    "no trustworthy signature of the target key: every kms+context object \
                     that does not name the key is checked with a KMS Decrypt"
                );
                Ok::<_, KmsError>(None)
            })
            .await;
        match r {
            Ok(shape) => Ok(shape.as_ref()),
            Err(e) => {
                if !matches!(e.kind, KmsErrorKind::Throttled | KmsErrorKind::Transient) {
                    *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                }
                Err(e)
            }
        }
    }

    fn lookup(&self, values: &[u8]) -> Option<bool> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.ours.iter().any(|s| s == values) {
            Some(true)
        } else if known.theirs.iter().any(|s| s == values) {
            Some(false)
        } else {
            None
        }
    }

    fn learn(&self, values: Vec<u8>, ours: bool) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let side = if ours {
            &mut known.ours
        } else {
            &mut known.theirs
        };
        if side.len() < MAX_SIGNATURES && !side.contains(&values) {
            side.push(values);
        }
    }

    /// A signature from sample blobs (the probe's; unit tests give their own).
    fn seed(&self, samples: &[Vec<u8>]) -> Option<Shape> {
        let shape = shape_of(samples)?;
        tracing::debug!(
            len = shape.len,
            fixed = shape.positions.len(),
            "blobs under the target key have a signature"
        );
        self.learn(shape.values(&samples[0])?, true);
        Some(shape)
    }
}

/// The positions equal in every sample (all of one length), if there are enough of them and
/// the samples come from one backing key. Samples from two (the target rotated between them)
/// agree on the header bytes common to all keys but split two ways on the backing-key id: such
/// a shape would match any key's blobs, so it is refused. Per-call random bytes take two
/// values or fewer in [`PROBES`] samples once in ~10^4 positions; [`SPLIT_POSITIONS`] of them
/// never happen by chance.
fn shape_of(samples: &[Vec<u8>]) -> Option<Shape> {
    let first = samples.first()?;
    if samples.len() < 2 || samples.iter().any(|s| s.len() != first.len()) {
        return None;
    }
    let mut positions = Vec::new();
    let mut split = 0;
    for i in 0..first.len() {
        let mut seen: Vec<u8> = samples.iter().map(|s| s[i]).collect();
        seen.sort_unstable();
        seen.dedup();
        match seen.len() {
            1 => positions.push(i),
            2 if samples.len() > 2 => split += 1,
            _ => {}
        }
    }
    (positions.len() >= MIN_SIGNATURE && split < SPLIT_POSITIONS).then_some(Shape {
        len: first.len(),
        positions,
    })
}

/// How KMS is told the target: its ARN (as DescribeKey gave it), else its id.
fn key_name(target: &TargetKey) -> &str {
    if target.arn.is_empty() {
        &target.key_id
    } else {
        &target.arn
    }
}

/// [`PROBES`] blobs under the target, then one Decrypt pinned to it: an error here (no
/// GenerateDataKey or Decrypt permission on the target, say) is a configuration error.
async fn probe(target: &TargetKey, kms: &dyn KmsClient) -> Result<Vec<Vec<u8>>, KmsError> {
    let context: Context = [PROBE_CONTEXT]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let key = key_name(target);
    let mut samples = Vec::with_capacity(PROBES);
    for _ in 0..PROBES {
        // The plaintext data key is dropped, and zeroized, here.
        let (_key, blob) = kms.generate_data_key(key, &context).await?;
        samples.push(blob);
    }
    kms.decrypt(Some(key), &samples[0], &context)
        .await
        .map_err(|e| {
            KmsError::new(
                e.kind,
                format!(
                    "the target key's own blob does not decrypt pinned to it ({e}): rekey and \
                     audit need kms:Decrypt on the target key to recognise objects under it"
                ),
            )
        })?;
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> TargetKey {
        TargetKey {
            aws_backed: false,
            key_id: "1234abcd-12ab-34cd-56ef-1234567890ab".into(),
            arn: "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
                .into(),
        }
    }

    /// An AWS-like blob: a fixed header, a per-backing-key id, then per-call random bytes.
    fn blob(hbk: u8, nonce: u8) -> Vec<u8> {
        let mut b = vec![1, 2, 2, 0, 0x78];
        b.extend_from_slice(&[hbk; 33]);
        b.extend((0..60u8).map(|i| i.wrapping_mul(31).wrapping_add(nonce)));
        b
    }

    #[test]
    fn shape_is_the_fixed_bytes() {
        let s = shape_of(&[blob(7, 1), blob(7, 2), blob(7, 3)]).expect("shape");
        assert_eq!(s.positions, (0..38).collect::<Vec<_>>());
        assert!(shape_of(&[blob(7, 1), blob(7, 1)[..50].to_vec()]).is_none());
        // Too few fixed bytes: no signature at all.
        let mut a = vec![0u8; 40];
        let mut b = a.clone();
        a[10..].fill(1);
        b[10..].fill(2);
        assert!(shape_of(&[a, b]).is_none());
    }

    #[test]
    fn samples_from_two_backing_keys_make_no_shape() {
        // The target rotated between the probes: the header common to all keys agrees, the
        // backing-key id splits two ways. Such a shape would match every key's blobs.
        let rotated = [blob(7, 1), blob(7, 2), blob(8, 3), blob(8, 4)];
        assert!(shape_of(&rotated).is_none());
        assert!(shape_of(&[blob(7, 1), blob(8, 2), blob(8, 3), blob(8, 4)]).is_none());
        let one = [blob(8, 1), blob(8, 2), blob(8, 3), blob(8, 4)];
        assert_eq!(shape_of(&one).expect("one key").positions.len(), 38);
    }

    #[test]
    fn signatures_answer_without_kms() {
        let o = KeyOwner::offline(target());
        let shape = o
            .seed(&[blob(7, 1), blob(7, 2), blob(7, 3)])
            .expect("shape");
        let v = |b: &[u8]| shape.values(b).expect("same length");
        assert_eq!(o.lookup(&v(&blob(7, 9))), Some(true));
        assert_eq!(
            o.lookup(&v(&blob(8, 9))),
            None,
            "another backing key is unknown"
        );
        o.learn(v(&blob(8, 1)), false);
        assert_eq!(o.lookup(&v(&blob(8, 200))), Some(false));
        assert_eq!(shape.values(&blob(7, 1)[1..]), None, "other length");
        for i in 0..(2 * MAX_SIGNATURES) {
            o.learn(vec![i as u8; 38], false);
        }
        let known = o.known.lock().expect("lock");
        assert_eq!(known.theirs.len(), MAX_SIGNATURES);
    }
}
