//! Reading whole files into memory, decompressing gzip / xz by extension, and pulling members
//! out of `.tar.gz` archives without extracting them to disk.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use crate::error::{Container, DataError};

/// How a file on disk is compressed, from its extension.
fn container_of(path: &Path) -> Option<Container> {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("gz") => Some(Container::Gzip),
        Some(e) if e.eq_ignore_ascii_case("xz") => Some(Container::Xz),
        _ => None,
    }
}

/// Reads a whole file, decompressing it when its name ends in `.gz` or `.xz`.
///
/// `size_hint` is the expected decompressed size; it only pre-sizes the buffer.
pub(crate) fn read_maybe_compressed(path: &Path, size_hint: usize) -> Result<Vec<u8>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let on_disk = file.metadata().map(|m| m.len()).unwrap_or(0) as usize;
    let reader = BufReader::with_capacity(1 << 16, file);
    match container_of(path) {
        None => {
            let mut buf = Vec::with_capacity(on_disk);
            let mut reader = reader;
            reader
                .read_to_end(&mut buf)
                .map_err(|e| DataError::io(path, e))?;
            Ok(buf)
        }
        Some(format) => {
            // The hint is trusted only up to a sane bound relative to the compressed size.
            let cap = size_hint.min(on_disk.saturating_mul(64));
            let mut buf = Vec::with_capacity(cap);
            let res = match format {
                Container::Gzip => GzDecoder::new(reader).read_to_end(&mut buf),
                _ => xz2::read::XzDecoder::new(reader).read_to_end(&mut buf),
            };
            res.map_err(|source| classify(path, format, source))?;
            Ok(buf)
        }
    }
}

/// Decoder errors become [`DataError::Corrupt`]; genuine I/O failures stay [`DataError::Io`].
fn classify(path: &Path, format: Container, source: std::io::Error) -> DataError {
    use std::io::ErrorKind::*;
    match source.kind() {
        InvalidData | InvalidInput | UnexpectedEof | Other => DataError::Corrupt {
            path: path.to_path_buf(),
            format,
            source,
        },
        _ => DataError::io(path, source),
    }
}

/// One regular file read out of an archive.
pub(crate) struct Member {
    /// `archive/member/path`, used to name the member in errors.
    pub path: PathBuf,
    /// The member's bytes.
    pub data: Vec<u8>,
}

/// Streams a `.tar.gz` archive and returns the regular-file members whose file name (last
/// path component) is in `wanted`, in the order of `wanted` (`None` where absent).
///
/// Stops reading as soon as every wanted member has been found.
pub(crate) fn read_tar_gz_members(
    archive: &Path,
    wanted: &[&str],
) -> Result<Vec<Option<Member>>, DataError> {
    let corrupt = |source: std::io::Error| DataError::Corrupt {
        path: archive.to_path_buf(),
        format: Container::TarGz,
        source,
    };
    let file = File::open(archive).map_err(|e| DataError::io(archive, e))?;
    let gz = GzDecoder::new(BufReader::with_capacity(1 << 16, file));
    let mut tar = tar::Archive::new(gz);
    let mut found: Vec<Option<Member>> = wanted.iter().map(|_| None).collect();
    let mut n_found = 0;
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let member_path = entry.path().map_err(corrupt)?.into_owned();
        let Some(fname) = member_path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        let Some(slot) = wanted.iter().position(|w| *w == fname) else {
            continue;
        };
        if found[slot].is_some() {
            continue;
        }
        let declared = entry.size();
        let full = archive.join(&member_path);
        let mut data = Vec::with_capacity(declared.min(1 << 30) as usize);
        entry.read_to_end(&mut data).map_err(corrupt)?;
        if (data.len() as u64) < declared {
            return Err(DataError::Truncated {
                path: full,
                expected: declared,
                found: data.len() as u64,
            });
        }
        found[slot] = Some(Member { path: full, data });
        n_found += 1;
        if n_found == wanted.len() {
            break;
        }
    }
    Ok(found)
}
