//! Task logs on disk: one file per stream (stdout, stderr) per task, rotated by size so a chatty task cannot fill
//! the disk, and read back from the end (`tail`) across the rotated files.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Default size a log file reaches before it is rotated.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Default number of rotated files kept besides the current one.
pub const DEFAULT_KEEP: usize = 3;

/// An append-only log that rotates `name` to `name.1`, `name.1` to `name.2`, ... when it grows past `max_bytes`
/// (at the next line end), dropping what falls past `keep`.
pub struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: File,
    size: u64,
    /// Rotation waits for a line to end, so no line is split across files.
    at_line_start: bool,
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

impl RotatingLog {
    pub fn open(path: impl Into<PathBuf>, max_bytes: u64, keep: usize) -> io::Result<RotatingLog> {
        let path = path.into();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog { path, max_bytes: max_bytes.max(1), keep, file, size, at_line_start: true })
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.keep == 0 {
            self.file = File::create(&self.path)?;
        } else {
            let _ = std::fs::remove_file(rotated(&self.path, self.keep));
            for n in (1..self.keep).rev() {
                let from = rotated(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
            self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }

    /// Every file of this log, oldest first.
    pub fn files(path: &Path, keep: usize) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = (1..=keep).rev().map(|n| rotated(path, n)).filter(|p| p.exists()).collect();
        if path.exists() {
            out.push(path.to_path_buf());
        }
        out
    }
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.at_line_start && self.size > 0 && self.size + buf.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.size += n as u64;
        if n > 0 {
            self.at_line_start = buf[n - 1] == b'\n';
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The last `lines` lines of a log, across its rotated files, oldest first.
pub fn tail(path: &Path, keep: usize, lines: usize) -> io::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    // Newest file first, reading each from its end, until enough lines are gathered.
    for file in RotatingLog::files(path, keep).into_iter().rev() {
        if out.len() >= lines {
            break;
        }
        let mut f = File::open(&file)?;
        let len = f.seek(SeekFrom::End(0))?;
        // A file is at most `max_bytes`; reading it whole keeps this simple and bounded.
        f.seek(SeekFrom::Start(0))?;
        let mut text = String::with_capacity(len as usize);
        f.read_to_string(&mut text)?;
        let mut these: Vec<String> = text.lines().map(String::from).collect();
        let take = lines - out.len();
        if these.len() > take {
            these.drain(..these.len() - take);
        }
        these.append(&mut out);
        out = these;
    }
    Ok(out)
}

/// Follows a log as it grows, from its current end: each call returns what was appended since the last one
/// (whole lines only), coping with rotation (the file shrinks or is replaced: what follows is read from the new
/// file's start).
pub struct Follower {
    path: PathBuf,
    pos: u64,
    id: Option<(u64, u64)>,
    partial: Vec<u8>,
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Follower {
    pub fn from_end(path: &Path) -> Follower {
        let pos = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Follower { path: path.to_path_buf(), pos, id: identity(path), partial: Vec::new() }
    }

    /// Whole lines appended since the last call (with their newlines).
    pub fn poll(&mut self) -> io::Result<Vec<u8>> {
        let now = identity(&self.path);
        let len = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if now != self.id || len < self.pos {
            // Rotated: the rest of the old file is in `name.1`, which the writer closed after its last line.
            if let Some(rest) = self.read_from(&rotated(&self.path, 1), self.pos).ok().filter(|_| now != self.id) {
                self.partial.extend_from_slice(&rest);
            }
            self.pos = 0;
            self.id = now;
        }
        let fresh = self.read_from(&self.path, self.pos)?;
        self.pos += fresh.len() as u64;
        self.partial.extend_from_slice(&fresh);
        let cut = self.partial.iter().rposition(|b| *b == b'\n').map(|i| i + 1).unwrap_or(0);
        Ok(self.partial.drain(..cut).collect())
    }

    fn read_from(&self, path: &Path, pos: u64) -> io::Result<Vec<u8>> {
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        f.seek(SeekFrom::Start(pos))?;
        let mut out = Vec::new();
        // At most a file's worth per poll; the rest comes next time.
        f.take(DEFAULT_MAX_BYTES).read_to_end(&mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_by_size_keep_a_bounded_history_and_tail_across_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("task-1").join("stdout.log");
        let mut log = RotatingLog::open(&path, 100, 2).expect("open");
        for i in 0..40 {
            writeln!(log, "line {i:02} of the task's output").expect("write");
        }
        log.flush().expect("flush");
        let files = RotatingLog::files(&path, 2);
        assert_eq!(files.len(), 3, "the current file and two rotated ones: {files:?}");
        for f in &files {
            assert!(std::fs::metadata(f).expect("exists").len() <= 100 + 40, "{f:?} stays near the limit");
        }
        assert!(!rotated(&path, 3).exists(), "older files are dropped");
        let last = tail(&path, 2, 5).expect("tail");
        assert_eq!(last.len(), 5);
        assert_eq!(last.last().map(String::as_str), Some("line 39 of the task's output"));
        assert_eq!(last.first().map(String::as_str), Some("line 35 of the task's output"));
        // Lines spread over several files come back in order.
        let more = tail(&path, 2, 8).expect("tail");
        let numbers: Vec<&str> = more.iter().map(|l| &l[5..7]).collect();
        assert_eq!(numbers, vec!["32", "33", "34", "35", "36", "37", "38", "39"]);
        // Reopening appends to the current file.
        let mut again = RotatingLog::open(&path, 100, 2).expect("reopen");
        writeln!(again, "after restart").expect("write");
        again.flush().expect("flush");
        assert_eq!(tail(&path, 2, 1).expect("tail"), vec!["after restart".to_string()]);
    }

    #[test]
    fn a_follower_sees_whole_new_lines_across_a_rotation() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("stdout.log");
        let mut log = RotatingLog::open(&path, 60, 2).expect("open");
        writeln!(log, "before").expect("write");
        log.flush().expect("flush");
        let mut f = Follower::from_end(&path);
        assert!(f.poll().expect("poll").is_empty(), "starts at the end");
        write!(log, "half").expect("write");
        log.flush().expect("flush");
        assert!(f.poll().expect("poll").is_empty(), "no partial line");
        writeln!(log, " a line").expect("write");
        log.flush().expect("flush");
        assert_eq!(f.poll().expect("poll"), b"half a line\n");
        for i in 0..6 {
            writeln!(log, "line {i} makes the file rotate").expect("write");
            log.flush().expect("flush");
        }
        let text = String::from_utf8(f.poll().expect("poll")).expect("utf8");
        assert!(text.ends_with("line 5 makes the file rotate\n"), "{text:?}");
        assert!(text.contains("line 4"), "{text:?}");
    }
}
