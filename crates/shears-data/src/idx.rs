//! The IDX format of MNIST and Fashion-MNIST.
//!
//! Big-endian. Images: magic 2051, count, rows, cols, then `count * rows * cols` bytes.
//! Labels: magic 2049, count, then `count` bytes.

use std::path::Path;

use crate::error::DataError;

/// Magic number of an IDX file of `u8` images (`00 00 08 03`).
pub const IDX_IMAGES_MAGIC: u32 = 2051;
/// Magic number of an IDX file of `u8` labels (`00 00 08 01`).
pub const IDX_LABELS_MAGIC: u32 = 2049;

/// Images parsed from an IDX file.
pub(crate) struct IdxImages {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub pixels: Vec<u8>,
}

fn be_u32(path: &Path, bytes: &[u8], at: usize, header_len: usize) -> Result<u32, DataError> {
    match bytes.get(at..at + 4) {
        Some(b) => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header_len as u64,
            found: bytes.len() as u64,
        }),
    }
}

/// The total length an IDX file declares in its header (`head`: its first bytes, at least 8
/// for labels and 16 for images), or `None` for a wrong magic number or a short header.
pub(crate) fn declared_len(head: &[u8]) -> Option<u64> {
    let word = |at: usize| {
        head.get(at..at + 4)
            .map(|b| u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
    };
    match u32::try_from(word(0)?).ok()? {
        IDX_IMAGES_MAGIC => {
            let pixels = u128::from(word(4)?) * u128::from(word(8)?) * u128::from(word(12)?);
            Some(u64::try_from(16 + pixels).unwrap_or(u64::MAX))
        }
        IDX_LABELS_MAGIC => Some(8 + word(4)?),
        _ => None,
    }
}

/// Checks that the file is exactly `expected` bytes long.
fn check_len(path: &Path, expected: u128, found: usize) -> Result<(), DataError> {
    let found128 = found as u128;
    let expected64 = u64::try_from(expected).unwrap_or(u64::MAX);
    if found128 < expected {
        Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: expected64,
            found: found as u64,
        })
    } else if found128 > expected {
        Err(DataError::TrailingData {
            path: path.to_path_buf(),
            expected: expected64,
            found: found as u64,
        })
    } else {
        Ok(())
    }
}

/// Parses a decompressed IDX image file; `path` is only used in errors.
pub(crate) fn parse_images(path: &Path, mut bytes: Vec<u8>) -> Result<IdxImages, DataError> {
    const HEADER: usize = 16;
    let magic = be_u32(path, &bytes, 0, HEADER)?;
    if magic != IDX_IMAGES_MAGIC {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            expected: IDX_IMAGES_MAGIC,
            found: magic,
        });
    }
    let n = be_u32(path, &bytes, 4, HEADER)? as usize;
    let h = be_u32(path, &bytes, 8, HEADER)? as usize;
    let w = be_u32(path, &bytes, 12, HEADER)? as usize;
    let expected = HEADER as u128 + n as u128 * h as u128 * w as u128;
    check_len(path, expected, bytes.len())?;
    bytes.drain(..HEADER);
    Ok(IdxImages {
        n,
        h,
        w,
        pixels: bytes,
    })
}

/// Parses a decompressed IDX label file and checks every label is `< n_classes`.
pub(crate) fn parse_labels(
    path: &Path,
    mut bytes: Vec<u8>,
    n_classes: usize,
) -> Result<Vec<u8>, DataError> {
    const HEADER: usize = 8;
    let magic = be_u32(path, &bytes, 0, HEADER)?;
    if magic != IDX_LABELS_MAGIC {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            expected: IDX_LABELS_MAGIC,
            found: magic,
        });
    }
    let n = be_u32(path, &bytes, 4, HEADER)? as usize;
    check_len(path, HEADER as u128 + n as u128, bytes.len())?;
    bytes.drain(..HEADER);
    check_labels(path, &bytes, n_classes)?;
    Ok(bytes)
}

/// Every label must be a valid class index.
pub(crate) fn check_labels(path: &Path, labels: &[u8], n_classes: usize) -> Result<(), DataError> {
    match labels.iter().position(|&l| l as usize >= n_classes) {
        Some(idx) => Err(DataError::LabelOutOfRange {
            path: path.to_path_buf(),
            idx,
            label: labels[idx],
            n_classes,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(n: u32, h: u32, w: u32, extra: isize) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&IDX_IMAGES_MAGIC.to_be_bytes());
        for x in [n, h, w] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        let body = (n as isize) * (h as isize) * (w as isize) + extra;
        v.extend(std::iter::repeat_n(7u8, body.max(0) as usize));
        v
    }

    #[test]
    fn parses_exact_file() {
        let p = Path::new("x");
        let im = parse_images(p, images(3, 2, 2, 0)).unwrap();
        assert_eq!((im.n, im.h, im.w, im.pixels.len()), (3, 2, 2, 12));
    }

    #[test]
    fn rejects_bad_lengths() {
        let p = Path::new("x");
        assert!(matches!(
            parse_images(p, images(3, 2, 2, -1)),
            Err(DataError::Truncated {
                expected: 28,
                found: 27,
                ..
            })
        ));
        assert!(matches!(
            parse_images(p, images(3, 2, 2, 1)),
            Err(DataError::TrailingData { .. })
        ));
        assert!(matches!(
            parse_images(p, vec![0, 0, 8]),
            Err(DataError::Truncated { expected: 16, .. })
        ));
        // A huge declared count must not allocate or overflow.
        assert!(matches!(
            parse_images(p, {
                let mut v = images(1, 1, 1, 0);
                v[4..16].fill(0xff);
                v
            }),
            Err(DataError::Truncated { .. })
        ));
    }

    #[test]
    fn rejects_bad_magic_and_labels() {
        let p = Path::new("x");
        let mut lab = IDX_LABELS_MAGIC.to_be_bytes().to_vec();
        lab.extend_from_slice(&2u32.to_be_bytes());
        lab.extend_from_slice(&[1, 10]);
        assert!(matches!(
            parse_images(p, lab.clone()),
            Err(DataError::BadMagic {
                expected: 2051,
                found: 2049,
                ..
            })
        ));
        assert!(matches!(
            parse_labels(p, lab.clone(), 10),
            Err(DataError::LabelOutOfRange {
                idx: 1,
                label: 10,
                ..
            })
        ));
        assert_eq!(parse_labels(p, lab, 11).unwrap(), vec![1, 10]);
    }
}
