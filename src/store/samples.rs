//! Voice sample files for caller mappings: checked, hashed and copied into the
//! data directory (`<data>/samples/<caller-id>/<sha256>.<ext>`) so a mapping never
//! points at a file someone can move or edit underneath it.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

use super::records::Sample;

/// Largest sample accepted (ElevenLabs accepts files up to a few MB per sample).
pub const MAX_SAMPLE_BYTES: u64 = 50 * 1024 * 1024;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SampleError {
    #[error("{path}: cannot read: {error}")]
    Unreadable { path: String, error: std::io::Error },
    #[error("{path}: file is empty")]
    Empty { path: String },
    #[error("{path}: {size} bytes is larger than the {MAX_SAMPLE_BYTES}-byte limit")]
    TooLarge { path: String, size: u64 },
    #[error("{path}: not a WAV or MP3 file (by its content)")]
    NotAudio { path: String },
    #[error("cannot store sample under {dir}: {error}")]
    Store { dir: String, error: std::io::Error },
}

/// A checked sample, read into memory, not yet copied.
#[derive(Debug)]
pub struct CheckedSample {
    pub source: PathBuf,
    pub extension: &'static str,
    pub bytes: Vec<u8>,
    pub sha256: String,
}

/// Reads and checks one file: readable, non-empty, bounded, WAV or MP3 content.
pub fn check(path: &Path) -> Result<CheckedSample, SampleError> {
    let name = path.display().to_string();
    let unreadable = |error| SampleError::Unreadable { path: name.clone(), error };
    let meta = fs::metadata(path).map_err(unreadable)?;
    if meta.len() > MAX_SAMPLE_BYTES {
        return Err(SampleError::TooLarge {
            path: name,
            size: meta.len(),
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(unreadable)?;
    if bytes.is_empty() {
        return Err(SampleError::Empty { path: name });
    }
    let extension = sniff(&bytes).ok_or(SampleError::NotAudio { path: name })?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Ok(CheckedSample {
        source: path.to_path_buf(),
        extension,
        bytes,
        sha256,
    })
}

/// Audio type by magic bytes.
fn sniff(b: &[u8]) -> Option<&'static str> {
    if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WAVE" {
        Some("wav")
    } else if b.starts_with(b"ID3") || (b.len() >= 2 && b[0] == 0xFF && b[1] & 0xE0 == 0xE0) {
        Some("mp3")
    } else {
        None
    }
}

/// Copies checked samples into the data directory (write to a temporary name,
/// then rename, so a half-written file is never referenced).
pub fn store(data_dir: &Path, caller_id: &str, samples: &[CheckedSample]) -> Result<Vec<Sample>, SampleError> {
    let safe: String = caller_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '+' { c } else { '_' })
        .collect();
    let rel_dir = Path::new("samples").join(safe);
    let dir = data_dir.join(&rel_dir);
    let err = |error| SampleError::Store {
        dir: dir.display().to_string(),
        error,
    };
    fs::create_dir_all(&dir).map_err(err)?;
    let mut out = Vec::with_capacity(samples.len());
    for s in samples {
        let file = format!("{}.{}", s.sha256, s.extension);
        let tmp = dir.join(format!(".{file}.tmp"));
        fs::write(&tmp, &s.bytes).map_err(err)?;
        fs::rename(&tmp, dir.join(&file)).map_err(err)?;
        out.push(Sample {
            path: rel_dir.join(&file).to_string_lossy().into_owned(),
            size: s.bytes.len() as u64,
            sha256: s.sha256.clone(),
        });
    }
    Ok(out)
}

/// The hash a clone is keyed on: SHA-256 over the samples' hashes, in order.
pub fn combined_hash(samples: &[Sample]) -> String {
    let mut h = Sha256::new();
    for s in samples {
        h.update(s.sha256.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_copies_and_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let wav = dir.path().join("a.wav");
        fs::write(&wav, b"RIFF\x24\0\0\0WAVEfmt rest").unwrap();
        let mp3 = dir.path().join("b.mp3");
        fs::write(&mp3, b"ID3\x04\0\0\0\0\0\0audio").unwrap();
        let checked = vec![check(&wav).unwrap(), check(&mp3).unwrap()];
        assert_eq!(checked[0].extension, "wav");
        assert_eq!(checked[1].extension, "mp3");
        let data = dir.path().join("data");
        let stored = store(&data, "+15551234567", &checked).unwrap();
        assert_eq!(stored.len(), 2);
        assert!(data.join(&stored[0].path).is_file());
        assert!(stored[0].path.starts_with("samples/+15551234567/"));
        assert_eq!(stored[1].size, 15);
        assert_eq!(combined_hash(&stored).len(), 64);
        assert_ne!(combined_hash(&stored), combined_hash(&stored[..1]));
        assert_eq!(
            hex::encode(Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            check(&dir.path().join("missing.wav")),
            Err(SampleError::Unreadable { .. })
        ));
        let empty = dir.path().join("empty.wav");
        fs::write(&empty, b"").unwrap();
        assert!(matches!(check(&empty), Err(SampleError::Empty { .. })));
        let text = dir.path().join("notes.wav");
        fs::write(&text, b"hello, not audio").unwrap();
        let e = check(&text).unwrap_err();
        assert!(e.to_string().contains("not a WAV or MP3"), "{e}");
    }
}
