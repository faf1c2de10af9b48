//! Datasets stored as a folder of PNG images, one sub-folder per class.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::dataset::Dataset;
use crate::error::{Container, DataError};
use crate::transform::resize_bilinear;

/// The channel layout images of a folder are decoded to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ColorMode {
    /// Grey (1 channel) when every image is grey or grey+alpha, RGB (3 channels) otherwise.
    #[default]
    Auto,
    /// Always 1 channel; colour images become luma `(299 R + 587 G + 114 B) / 1000`.
    Grey,
    /// Always 3 channels; grey images are replicated.
    Rgb,
}

/// How [`load_image_folder`] decodes images.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageFolderOptions {
    /// Resize every image to `(h, w)` pixels with bilinear interpolation. Default `None`:
    /// all images must have the size of the first one, else an error names the odd file.
    pub resize_to: Option<(usize, usize)>,
    /// Channel layout of the result. Default [`ColorMode::Auto`].
    pub color: ColorMode,
}

/// One decoded image, alpha dropped.
struct Decoded {
    path: PathBuf,
    /// 1 (grey) or 3 (RGB).
    c: usize,
    h: usize,
    w: usize,
    /// Interleaved HWC.
    pixels: Vec<u8>,
}

/// Loads `root/<class_name>/*.png` as a dataset.
///
/// Classes are the sub-directories of `root`, sorted by name (label `i` = `i`-th name);
/// files are read in name order and only those ending in `.png` (any case) are used; hidden
/// entries (starting with `.`) are skipped. 8-bit grey, grey+alpha, RGB, RGBA and palette
/// PNGs are supported (alpha is dropped, not composited); 16-bit PNGs are an error.
///
/// ```no_run
/// use shears_data::{load_image_folder, ImageFolderOptions};
/// let opts = ImageFolderOptions { resize_to: Some((32, 32)), ..Default::default() };
/// let ds = load_image_folder("my-images".as_ref(), &opts)?;
/// println!("{} images of {} classes", ds.len(), ds.n_classes());
/// # Ok::<(), shears_data::DataError>(())
/// ```
pub fn load_image_folder(root: &Path, opts: &ImageFolderOptions) -> Result<Dataset, DataError> {
    if let Some((h, w)) = opts.resize_to {
        if h == 0 || w == 0 {
            return Err(DataError::invalid(format!(
                "image folder resize_to {h}x{w}"
            )));
        }
    }
    let mut class_dirs: Vec<(String, PathBuf)> = Vec::new();
    for entry in read_dir_sorted(root)? {
        if entry.is_dir() {
            if let Some(name) = visible_name(&entry) {
                class_dirs.push((name, entry));
            }
        }
    }
    if class_dirs.len() > 256 {
        return Err(DataError::invalid(format!(
            "image folder {}: {} classes, at most 256 are supported",
            root.display(),
            class_dirs.len()
        )));
    }
    let mut decoded = Vec::new();
    let mut labels = Vec::new();
    for (label, (_, dir)) in class_dirs.iter().enumerate() {
        for file in read_dir_sorted(dir)? {
            let is_png = file
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("png"));
            if is_png && file.is_file() && visible_name(&file).is_some() {
                decoded.push(decode_png(&file)?);
                labels.push(label as u8);
            }
        }
    }
    let Some(first) = decoded.first() else {
        return Err(DataError::invalid(format!(
            "image folder {}: no png images in class sub-directories",
            root.display()
        )));
    };
    let c = match opts.color {
        ColorMode::Grey => 1,
        ColorMode::Rgb => 3,
        ColorMode::Auto => decoded.iter().map(|d| d.c).max().unwrap_or(1),
    };
    let (h, w) = opts.resize_to.unwrap_or((first.h, first.w));
    let mut images = Vec::with_capacity(decoded.len() * c * h * w);
    for d in &decoded {
        if opts.resize_to.is_none() && (d.h, d.w) != (h, w) {
            return Err(DataError::ImageShape {
                path: d.path.clone(),
                expected_h: h,
                expected_w: w,
                found_h: d.h,
                found_w: d.w,
            });
        }
        let planar = to_planar(d, c);
        if (d.h, d.w) == (h, w) {
            images.extend_from_slice(&planar);
        } else {
            let src: Vec<f32> = planar.iter().map(|&p| p as f32).collect();
            let mut dst = vec![0.0; c * h * w];
            resize_bilinear(&src, &mut dst, (c, d.h, d.w), h, w);
            images.extend(dst.iter().map(|v| v.round().clamp(0.0, 255.0) as u8));
        }
    }
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image-folder".to_string());
    Ok(Dataset {
        name,
        n: labels.len(),
        images,
        labels,
        c,
        h,
        w,
        classes: class_dirs.into_iter().map(|(n, _)| n).collect(),
    })
}

fn visible_name(p: &Path) -> Option<String> {
    let name = p.file_name()?.to_string_lossy().into_owned();
    (!name.starts_with('.')).then_some(name)
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        out.push(entry.map_err(|e| DataError::io(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

/// HWC with 1 or 3 channels -> CHW with `c` channels (1 or 3).
fn to_planar(d: &Decoded, c: usize) -> Vec<u8> {
    let plane = d.h * d.w;
    let mut out = vec![0u8; c * plane];
    match (d.c, c) {
        (1, 1) => out.copy_from_slice(&d.pixels),
        (1, _) => {
            for ch in 0..c {
                out[ch * plane..(ch + 1) * plane].copy_from_slice(&d.pixels);
            }
        }
        (_, 1) => {
            for (o, px) in out.iter_mut().zip(d.pixels.chunks_exact(3)) {
                let (r, g, b) = (px[0] as u32, px[1] as u32, px[2] as u32);
                *o = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8;
            }
        }
        _ => {
            for (i, px) in d.pixels.chunks_exact(3).enumerate() {
                for ch in 0..3 {
                    out[ch * plane + i] = px[ch];
                }
            }
        }
    }
    out
}

fn decode_png(path: &Path) -> Result<Decoded, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let corrupt = |e: png::DecodingError| match e {
        png::DecodingError::IoError(source)
            if source.kind() != std::io::ErrorKind::UnexpectedEof =>
        {
            DataError::io(path, source)
        }
        other => DataError::Corrupt {
            path: path.to_path_buf(),
            format: Container::Png,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
        },
    };
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(corrupt)?;
    if reader.info().bit_depth == png::BitDepth::Sixteen {
        return Err(DataError::Unsupported {
            path: path.to_path_buf(),
            what: "16-bit png (only 8-bit is supported)".to_string(),
        });
    }
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(corrupt)?;
    let (h, w) = (info.height as usize, info.width as usize);
    if h == 0 || w == 0 {
        return Err(DataError::Unsupported {
            path: path.to_path_buf(),
            what: format!("empty {w}x{h} png"),
        });
    }
    let src_c = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(DataError::Unsupported {
                path: path.to_path_buf(),
                what: "unexpanded palette png".to_string(),
            })
        }
    };
    if info.bit_depth != png::BitDepth::Eight || info.line_size != w * src_c {
        return Err(DataError::Unsupported {
            path: path.to_path_buf(),
            what: format!("png with bit depth {:?}", info.bit_depth),
        });
    }
    let data = buf
        .get(..h * w * src_c)
        .ok_or_else(|| DataError::Truncated {
            path: path.to_path_buf(),
            expected: (h * w * src_c) as u64,
            found: buf.len() as u64,
        })?;
    let c = if src_c <= 2 { 1 } else { 3 };
    let pixels = if src_c == c {
        data.to_vec()
    } else {
        data.chunks_exact(src_c)
            .flat_map(|px| px[..c].iter().copied())
            .collect()
    };
    Ok(Decoded {
        path: path.to_path_buf(),
        c,
        h,
        w,
        pixels,
    })
}
