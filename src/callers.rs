//! Managing `caller_voice_mapping`: which voice samples belong to which caller.
//! Used by `precall callers …` (and later the admin API).

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::store::samples::{self, SampleError};
use crate::store::{CallerMapping, Store, StoreError, now_ms};

/// Samples per mapping: ElevenLabs Instant Voice Cloning takes up to 25 files.
pub const MAX_SAMPLES: usize = 25;
/// Longest display name, in characters.
pub const MAX_NAME: usize = 200;
/// Largest labels JSON, in bytes.
pub const MAX_LABELS: usize = 4096;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CallersError {
    #[error("{0:?} is not a caller id (expected a phone number such as +15551234567)")]
    CallerId(String),
    #[error("at least one voice sample file is needed")]
    NoSamples,
    #[error("at most {MAX_SAMPLES} voice samples per caller (ElevenLabs takes 25), got {0}")]
    TooManySamples(usize),
    #[error("the display name is longer than {MAX_NAME} characters")]
    NameTooLong,
    #[error("labels are longer than {MAX_LABELS} bytes")]
    LabelsTooLong,
    #[error(transparent)]
    Sample(#[from] SampleError),
    #[error("--labels must be a JSON object of strings, e.g. '{{\"accent\":\"british\"}}': {0}")]
    Labels(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Adds (or replaces) the mapping for `caller`. Every file is checked before
/// anything is copied or written, so a bad file leaves no trace.
pub async fn add(
    store: &Store,
    data_dir: &Path,
    caller: &str,
    files: &[PathBuf],
    name: Option<String>,
    labels: Option<&str>,
) -> Result<CallerMapping, CallersError> {
    let caller_id = crate::caller_id::normalize(caller).ok_or_else(|| CallersError::CallerId(caller.to_owned()))?;
    if files.is_empty() {
        return Err(CallersError::NoSamples);
    }
    if files.len() > MAX_SAMPLES {
        return Err(CallersError::TooManySamples(files.len()));
    }
    if name.as_ref().is_some_and(|n| n.chars().count() > MAX_NAME) {
        return Err(CallersError::NameTooLong);
    }
    if labels.is_some_and(|l| l.len() > MAX_LABELS) {
        return Err(CallersError::LabelsTooLong);
    }
    let labels = match labels {
        Some(text) => {
            let value: serde_json::Value = serde_json::from_str(text).map_err(|e| CallersError::Labels(e.to_string()))?;
            let all_strings = value.as_object().is_some_and(|o| o.values().all(serde_json::Value::is_string));
            if !all_strings {
                return Err(CallersError::Labels("not an object of strings".into()));
            }
            value
        }
        None => serde_json::json!({}),
    };
    let checked = files.iter().map(|f| samples::check(f)).collect::<Result<Vec<_>, _>>()?;
    let stored = samples::store(data_dir, &caller_id, &checked)?;
    let now = now_ms();
    let created_at = store.mapping(&caller_id).await?.map_or(now, |m| m.created_at);
    let mapping = CallerMapping {
        caller_id,
        display_name: name,
        sample_hash: samples::combined_hash(&stored),
        samples: stored,
        labels,
        enabled: true,
        created_at,
        updated_at: now,
    };
    store.upsert_mapping(&mapping).await?;
    Ok(mapping)
}

/// Removes the mapping (the sample files stay until cleaned up by hand).
pub async fn remove(store: &Store, caller: &str) -> Result<bool, CallersError> {
    let caller_id = crate::caller_id::normalize(caller).ok_or_else(|| CallersError::CallerId(caller.to_owned()))?;
    Ok(store.remove_mapping(&caller_id).await?)
}
