//! Downloading the official dataset files, with checksum verification and atomic renames.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::Md5;
use sha2::{Digest, Sha256};

use crate::dataset::DatasetName;
use crate::error::DataError;

/// The expected digest of a file, as lowercase hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// SHA-256.
    Sha256(&'static str),
    /// MD5 (only where the publisher gives nothing stronger).
    Md5(&'static str),
}

impl Checksum {
    /// The expected digest, lowercase hex.
    pub fn hex(&self) -> &'static str {
        match *self {
            Checksum::Sha256(h) | Checksum::Md5(h) => h,
        }
    }

    /// The digest of `path` with this checksum's algorithm, lowercase hex.
    pub fn compute(&self, path: &Path) -> Result<String, DataError> {
        match self {
            Checksum::Sha256(_) => sha256_file(path),
            Checksum::Md5(_) => md5_file(path),
        }
    }

    fn hasher(&self) -> Hasher {
        match self {
            Checksum::Sha256(_) => Hasher::Sha256(Sha256::new()),
            Checksum::Md5(_) => Hasher::Md5(Md5::new()),
        }
    }
}

enum Hasher {
    Sha256(Sha256),
    Md5(Md5),
}

impl Hasher {
    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Md5(h) => h.update(data),
        }
    }

    fn finish_hex(self) -> String {
        match self {
            Hasher::Sha256(h) => hex(&h.finalize()),
            Hasher::Md5(h) => hex(&h.finalize()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One file of an official dataset distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    /// Where the publisher serves it.
    pub url: &'static str,
    /// The file name in the dataset directory.
    pub file_name: &'static str,
    /// Its expected digest.
    pub checksum: Checksum,
    /// Its size in bytes, where known (only used for progress display).
    pub size: Option<u64>,
}

static MNIST_FILES: [RemoteFile; 4] = [
    RemoteFile {
        url: "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
        file_name: "train-images-idx3-ubyte.gz",
        checksum: Checksum::Sha256(
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        ),
        size: Some(9_912_422),
    },
    RemoteFile {
        url: "https://ossci-datasets.s3.amazonaws.com/mnist/train-labels-idx1-ubyte.gz",
        file_name: "train-labels-idx1-ubyte.gz",
        checksum: Checksum::Sha256(
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        ),
        size: Some(28_881),
    },
    RemoteFile {
        url: "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz",
        file_name: "t10k-images-idx3-ubyte.gz",
        checksum: Checksum::Sha256(
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        ),
        size: Some(1_648_877),
    },
    RemoteFile {
        url: "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz",
        file_name: "t10k-labels-idx1-ubyte.gz",
        checksum: Checksum::Sha256(
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ),
        size: Some(4_542),
    },
];

static FASHION_FILES: [RemoteFile; 4] = [
    RemoteFile {
        url:
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz",
        file_name: "train-images-idx3-ubyte.gz",
        checksum: Checksum::Sha256(
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        ),
        size: Some(26_421_880),
    },
    RemoteFile {
        url:
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-labels-idx1-ubyte.gz",
        file_name: "train-labels-idx1-ubyte.gz",
        checksum: Checksum::Sha256(
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        ),
        size: Some(29_515),
    },
    RemoteFile {
        url: "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-images-idx3-ubyte.gz",
        file_name: "t10k-images-idx3-ubyte.gz",
        checksum: Checksum::Sha256(
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        ),
        size: Some(4_422_102),
    },
    RemoteFile {
        url: "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-labels-idx1-ubyte.gz",
        file_name: "t10k-labels-idx1-ubyte.gz",
        checksum: Checksum::Sha256(
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        ),
        size: Some(5_148),
    },
];

static CIFAR10_FILES: [RemoteFile; 1] = [RemoteFile {
    url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    file_name: "cifar-10-binary.tar.gz",
    checksum: Checksum::Md5("c32a1d4ab5d03f1284b67883e8d87530"),
    size: None,
}];

static CIFAR100_FILES: [RemoteFile; 1] = [RemoteFile {
    url: "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    file_name: "cifar-100-binary.tar.gz",
    checksum: Checksum::Md5("03b5dce01913d631647c71ecec9e9cb8"),
    size: None,
}];

/// The files of the official distribution of `name`, as [`load`](crate::load) reads them.
///
/// MNIST comes from the PyTorch mirror of the original files, Fashion-MNIST from Zalando's
/// bucket, CIFAR-10/100 as the binary tarballs from the University of Toronto (which publishes
/// only MD5 digests for them).
pub fn official_files(name: DatasetName) -> &'static [RemoteFile] {
    match name {
        DatasetName::Mnist => &MNIST_FILES,
        DatasetName::FashionMnist => &FASHION_FILES,
        DatasetName::Cifar10 => &CIFAR10_FILES,
        DatasetName::Cifar100 => &CIFAR100_FILES,
    }
}

/// How [`fetch`] downloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchOptions {
    /// Replace a present file whose checksum is wrong (else that is an error). Default `false`.
    pub overwrite: bool,
    /// Fetch `<base>/<file_name>` instead of each file's official URL, e.g. a mirror or a
    /// `file:///local/dir` source. Default `None`.
    pub base_url_override: Option<String>,
    /// Show a progress bar on stderr. Default `true`.
    pub progress: bool,
    /// Connect and read timeout for HTTP, in seconds. Default 60.
    pub timeout_s: u64,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            overwrite: false,
            base_url_override: None,
            progress: true,
            timeout_s: 60,
        }
    }
}

/// What [`fetch`] did with one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchAction {
    /// The file was already present with the right checksum; nothing was downloaded.
    AlreadyPresent,
    /// The file was missing and has been downloaded (`bytes` long) and verified.
    Downloaded {
        /// Size in bytes.
        bytes: u64,
    },
    /// A file with a wrong checksum was replaced by a verified download (`bytes` long).
    Replaced {
        /// Size in bytes.
        bytes: u64,
    },
}

/// The outcome of [`fetch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchReport {
    /// The directory the files are in (`<dir>/<subdir>`).
    pub dir: PathBuf,
    /// One entry per official file, by file name.
    pub files: Vec<(String, FetchAction)>,
}

/// The state of one official file in a data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileStatus {
    /// Present with the expected checksum.
    Ok,
    /// Not present.
    Missing,
    /// Present with another checksum.
    Mismatch {
        /// Expected digest (lowercase hex).
        expected: String,
        /// Digest of the file on disk (lowercase hex).
        found: String,
    },
}

fn hash_file(path: &Path, mut hasher: Hasher) -> Result<String, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish_hex())
}

/// The SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, DataError> {
    hash_file(path, Hasher::Sha256(Sha256::new()))
}

/// The MD5 of a file, lowercase hex.
pub fn md5_file(path: &Path) -> Result<String, DataError> {
    hash_file(path, Hasher::Md5(Md5::new()))
}

/// Checks every official file of `name` in `<dir>/<subdir>`, without any network access.
///
/// ```no_run
/// use shears_data::{verify_files, DatasetName, FileStatus};
/// for (file, status) in verify_files("data".as_ref(), DatasetName::Mnist)? {
///     assert_eq!(status, FileStatus::Ok, "{file}");
/// }
/// # Ok::<(), shears_data::DataError>(())
/// ```
pub fn verify_files(dir: &Path, name: DatasetName) -> Result<Vec<(String, FileStatus)>, DataError> {
    let sub = dir.join(name.subdir());
    official_files(name)
        .iter()
        .map(|f| {
            Ok((
                f.file_name.to_string(),
                file_status(&sub.join(f.file_name), f)?,
            ))
        })
        .collect()
}

fn file_status(path: &Path, f: &RemoteFile) -> Result<FileStatus, DataError> {
    if !path.is_file() {
        return Ok(FileStatus::Missing);
    }
    let found = f.checksum.compute(path)?;
    Ok(if found.eq_ignore_ascii_case(f.checksum.hex()) {
        FileStatus::Ok
    } else {
        FileStatus::Mismatch {
            expected: f.checksum.hex().to_string(),
            found,
        }
    })
}

/// Downloads the missing official files of `name` into `<dir>/<subdir>/`.
///
/// A present file with the right checksum is skipped. A present file with a wrong checksum is
/// a [`DataError::ChecksumMismatch`] unless `opts.overwrite`. Each download goes to a
/// temporary file in the same directory, is verified, and only then renamed over the final
/// name, so an interrupted or corrupt download never leaves a file under the official name.
/// `http://`, `https://` and `file://` URLs are supported. Tarballs (CIFAR) are kept as they
/// are: [`load`](crate::load) reads them without extracting.
pub fn fetch(dir: &Path, name: DatasetName, opts: &FetchOptions) -> Result<FetchReport, DataError> {
    let sub = dir.join(name.subdir());
    std::fs::create_dir_all(&sub).map_err(|e| DataError::io(&sub, e))?;
    let mut files = Vec::new();
    for f in official_files(name) {
        let dest = sub.join(f.file_name);
        let replacing = match file_status(&dest, f)? {
            FileStatus::Ok => {
                files.push((f.file_name.to_string(), FetchAction::AlreadyPresent));
                continue;
            }
            FileStatus::Missing => false,
            FileStatus::Mismatch { expected, found } => {
                if !opts.overwrite {
                    return Err(DataError::ChecksumMismatch {
                        path: dest,
                        expected,
                        found,
                    });
                }
                true
            }
        };
        let url = match &opts.base_url_override {
            Some(base) => format!("{}/{}", base.trim_end_matches('/'), f.file_name),
            None => f.url.to_string(),
        };
        let bytes = download_verified(&url, &dest, f, opts)?;
        let action = if replacing {
            FetchAction::Replaced { bytes }
        } else {
            FetchAction::Downloaded { bytes }
        };
        files.push((f.file_name.to_string(), action));
    }
    Ok(FetchReport { dir: sub, files })
}

/// Opens a URL for reading, with its length when known.
fn open_url(url: &str, opts: &FetchOptions) -> Result<(Box<dyn Read>, Option<u64>), DataError> {
    if let Some(local) = url.strip_prefix("file://") {
        let path = Path::new(local);
        let file = File::open(path).map_err(|e| DataError::Download {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let len = file.metadata().ok().map(|m| m.len());
        return Ok((Box::new(BufReader::new(file)), len));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(DataError::Download {
            url: url.to_string(),
            reason: "unsupported url scheme (expected http, https or file)".to_string(),
        });
    }
    let timeout = Duration::from_secs(opts.timeout_s.max(1));
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(timeout)
        .timeout_read(timeout)
        .build();
    let resp = agent.get(url).call().map_err(|e| DataError::Download {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    let len = resp
        .header("Content-Length")
        .and_then(|v| v.trim().parse::<u64>().ok());
    Ok((Box::new(resp.into_reader()), len))
}

fn progress_bar(opts: &FetchOptions, len: Option<u64>, name: &str) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    if !opts.progress {
        return ProgressBar::hidden();
    }
    let pb = match len {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = if len.is_some() {
        "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})"
    } else {
        "{msg} {spinner} {bytes} ({bytes_per_sec})"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(name.to_string());
    pb
}

/// Streams `url` into a temporary file next to `dest`, hashing as it goes; renames it to
/// `dest` only if the checksum matches. Returns the number of bytes.
fn download_verified(
    url: &str,
    dest: &Path,
    f: &RemoteFile,
    opts: &FetchOptions,
) -> Result<u64, DataError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", f.file_name))
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(|e| DataError::io(dir, e))?;
    let (mut reader, len) = open_url(url, opts)?;
    let pb = progress_bar(opts, len.or(f.size), f.file_name);
    let mut hasher = f.checksum.hasher();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                pb.abandon();
                return Err(DataError::Download {
                    url: url.to_string(),
                    reason: e.to_string(),
                });
            }
        };
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .map_err(|e| DataError::io(tmp.path(), e))?;
        total += n as u64;
        pb.inc(n as u64);
    }
    pb.finish();
    tmp.as_file()
        .sync_all()
        .map_err(|e| DataError::io(tmp.path(), e))?;
    let found = hasher.finish_hex();
    if !found.eq_ignore_ascii_case(f.checksum.hex()) {
        // Dropping `tmp` deletes the partial file.
        return Err(DataError::ChecksumMismatch {
            path: dest.to_path_buf(),
            expected: f.checksum.hex().to_string(),
            found,
        });
    }
    // Temporary files are created owner-only; a dataset file should be readable like any other.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| DataError::io(tmp.path(), e))?;
    }
    tmp.persist(dest)
        .map_err(|e| DataError::io(dest, e.error))?;
    Ok(total)
}
