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

/// Reads an IDX file (decompressing it when its name ends in `.gz` or `.xz`), never more than
/// its header declares: the first 16 bytes are read, the expected length is computed from the
/// magic number and dimensions ([`crate::idx`]), and decompression stops one byte past it. A
/// stream that inflates further (a gz bomb) is refused with [`DataError::Oversize`] having
/// held at most that many bytes (an uncompressed file that is too long is
/// [`DataError::TrailingData`], its length being known). A file too short for its header, or with a wrong magic number,
/// is returned as read, for the parser to report.
///
/// `size_hint` is the expected decompressed size; it only pre-sizes the buffer.
pub(crate) fn read_idx(path: &Path, size_hint: usize) -> Result<Vec<u8>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let on_disk = file.metadata().map(|m| m.len()).unwrap_or(0);
    let reader = BufReader::with_capacity(1 << 16, file);
    let format = container_of(path);
    let mut reader: Box<dyn Read> = match format {
        None => Box::new(reader),
        Some(Container::Gzip) => Box::new(GzDecoder::new(reader)),
        Some(_) => Box::new(xz2::read::XzDecoder::new(reader)),
    };
    let fail = |source: std::io::Error| match format {
        Some(f) => classify(path, f, source),
        None => DataError::io(path, source),
    };
    let mut head = Vec::with_capacity(16);
    (&mut reader)
        .take(16)
        .read_to_end(&mut head)
        .map_err(fail)?;
    let Some(expected) = crate::idx::declared_len(&head) else {
        // Not an IDX header: a damaged stream is reported as such rather than as a bad magic
        // number, reading at most 64 MiB more to find out.
        std::io::copy(&mut reader.take(64 << 20), &mut std::io::sink()).map_err(fail)?;
        return Ok(head);
    };
    // Pre-size to what the header declares, trusting it only as far as the hint and the
    // compressed size make plausible (gzip inflates at most about 1,032 to 1).
    let plausible = on_disk.saturating_mul(1100).max(size_hint as u64);
    let cap = expected.min(plausible).min(isize::MAX as u64) as usize;
    let mut buf = Vec::new();
    buf.try_reserve_exact(cap)
        .map_err(|_| DataError::io(path, std::io::ErrorKind::OutOfMemory.into()))?;
    buf.extend_from_slice(&head);
    let rest = expected.saturating_sub(head.len() as u64);
    reader
        .take(rest.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(fail)?;
    if buf.len() as u64 > expected {
        return Err(match format {
            // An uncompressed file's length is known without reading it.
            None => DataError::TrailingData {
                path: path.to_path_buf(),
                expected,
                found: on_disk,
            },
            Some(_) => DataError::Oversize {
                path: path.to_path_buf(),
                expected,
            },
        });
    }
    Ok(buf)
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// `bytes` gzip-compressed into `dir/name`.
    fn gz(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(bytes).unwrap();
        std::fs::write(&path, e.finish().unwrap()).unwrap();
        path
    }

    fn labels_header(n: u32) -> Vec<u8> {
        let mut v = crate::idx::IDX_LABELS_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&n.to_be_bytes());
        v
    }

    #[test]
    fn idx_reads_exactly_what_the_header_declares() {
        let dir = tempfile::tempdir().unwrap();
        let mut ok = labels_header(3);
        ok.extend_from_slice(&[1, 2, 3]);
        let p = gz(dir.path(), "ok.gz", &ok);
        assert_eq!(read_idx(&p, 0).unwrap(), ok);
        // Short files and wrong magic numbers come back as read, for the parser to report.
        let p = gz(dir.path(), "short.gz", &ok[..5]);
        assert_eq!(read_idx(&p, 0).unwrap(), &ok[..5]);
    }

    #[test]
    fn a_gz_bomb_stops_at_the_declared_length() {
        let dir = tempfile::tempdir().unwrap();
        // 4 labels declared, 8 MiB of zeros inflated from a few kB.
        let mut bomb = labels_header(4);
        bomb.resize(8 << 20, 0);
        let p = gz(dir.path(), "bomb-idx1-ubyte.gz", &bomb);
        assert!(std::fs::metadata(&p).unwrap().len() < 64 << 10);
        match read_idx(&p, 0) {
            Err(DataError::Oversize { path, expected }) => {
                assert_eq!(path, p);
                assert_eq!(expected, 12);
            }
            other => panic!("expected Oversize, got {other:?}"),
        }
    }
}
