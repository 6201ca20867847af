//! The file adapter: ordered maps in memory, made durable by one append-only write-ahead file.
//!
//! Every `write` (and `delete_range`) writes one frame after the last with a single `pwrite` call, then applies it
//! to the maps; `flush` is one `fdatasync`, which is what makes this engine cheaper than sled for the Raft log. On
//! `open` the file is replayed into the maps. The data must fit in memory, which holds for the Raft log (bounded by
//! snapshots and purges) and its few metadata records (snapshots themselves are files of their own, see
//! `raft::state_store`).
//!
//! The file is kept zero-filled (written and synced) `PREALLOC_BYTES` ahead of its data. Frames overwrite blocks the
//! filesystem has already allocated and recorded, so an `fdatasync` writes data only: a file that grows makes every
//! sync commit the size change to the filesystem's journal too, which on ext4 costs about 100 µs alone and more when
//! the three members of a cell on one machine sync at once (445 µs against 300 µs measured here).
//!
//! The file, `titan.wal`:
//!
//! ```text
//! header  MAGIC (7 bytes) VERSION (1 byte)
//! frame   body length (u32 LE) | CRC32 of the body (u32 LE) | body
//! body    tree (u8) | op*                      the ops of one call, applied in order
//! op      1 | key | value                      put
//!         2 | key                              delete
//!         3 | bound | bound                    delete every key in the range
//! key     length (u32 LE) | bytes              a value is written the same way
//! bound   0 (unbounded) | 1 key (included) | 2 key (excluded)
//! ```
//!
//! A frame is all or nothing. On replay, zeros where a frame header should be are the preallocated space: the data
//! ends there. A damaged frame that is the last thing in the file (cut short, or followed only by zeros) is a write
//! that never completed: it is dropped and the file truncated to the last good frame. A damaged frame with data
//! after it is reported as corruption rather than skipped, since what follows may be writes that were made durable.
//!
//! When the file grows past `COMPACT_MIN_BYTES` and `COMPACT_RATIO` times the live data, it is rewritten: the live
//! contents go to `titan.wal.compact`, which is synced and renamed over the file, then the directory is synced. A
//! crash at any step leaves either the old file or the new one whole; a leftover temporary file is removed on open.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::{Engine, Op, Pair, StoreError, Tree};

/// The write-ahead file's name inside the engine's directory.
pub const FILE_NAME: &str = "titan.wal";
/// Where compaction writes the new file before renaming it over `FILE_NAME`.
const COMPACT_NAME: &str = "titan.wal.compact";
const MAGIC: &[u8; 7] = b"TITANWL";
/// The format version, the header's last byte; a file of another version is refused, never guessed at.
const VERSION: u8 = 1;
const HEADER_LEN: u64 = 8;
/// Frame header: body length and CRC32.
const FRAME_HEADER: usize = 8;
/// Compaction waits until the file is at least this big...
pub const COMPACT_MIN_BYTES: u64 = 64 * 1024 * 1024;
/// ...and this many times the live data.
pub const COMPACT_RATIO: u64 = 4;
/// How far ahead of its data the file is kept zero-filled. Extending it costs one write of this many zeros and one
/// sync, every few thousand writes.
pub const PREALLOC_BYTES: u64 = 4 * 1024 * 1024;
/// Compaction writes live pairs in frames of about this size.
const COMPACT_FRAME_BYTES: usize = 1024 * 1024;

const PUT: u8 = 1;
const DELETE: u8 = 2;
const DELETE_RANGE: u8 = 3;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

fn tree_code(tree: Tree) -> u8 {
    match tree {
        Tree::Log => 0,
        Tree::Meta => 1,
        Tree::Snapshot => 2,
    }
}

fn tree_of(code: u8) -> Option<Tree> {
    Tree::ALL.into_iter().find(|t| tree_code(*t) == code)
}

fn io_error(what: &str, path: &Path, e: io::Error) -> StoreError {
    StoreError(format!("{what} {}: {e}", path.display()))
}

/// Makes a create, remove or rename inside `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `BTreeMap::range` panics on an inverted or empty-excluded range; such a range simply holds nothing.
fn is_empty_range(from: &Bound<Vec<u8>>, to: &Bound<Vec<u8>>) -> bool {
    match (from, to) {
        (Bound::Included(a), Bound::Included(b)) => a > b,
        (Bound::Included(a), Bound::Excluded(b))
        | (Bound::Excluded(a), Bound::Included(b))
        | (Bound::Excluded(a), Bound::Excluded(b)) => a >= b,
        _ => false,
    }
}

/// One change as it is stored in a frame.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    DeleteRange(Bound<Vec<u8>>, Bound<Vec<u8>>),
}

impl From<Op> for Change {
    fn from(op: Op) -> Change {
        match op {
            Op::Put(k, v) => Change::Put(k, v),
            Op::Delete(k) => Change::Delete(k),
        }
    }
}

/// Builds one frame: the header is filled in by `finish`.
struct FrameWriter {
    buf: Vec<u8>,
}

impl FrameWriter {
    fn new(tree: Tree, capacity: usize) -> FrameWriter {
        let mut buf = Vec::with_capacity(FRAME_HEADER + 1 + capacity);
        buf.extend_from_slice(&[0; FRAME_HEADER]);
        buf.push(tree_code(tree));
        FrameWriter { buf }
    }

    fn bytes(&mut self, b: &[u8]) -> Result<(), StoreError> {
        let len = u32::try_from(b.len())
            .map_err(|_| StoreError(format!("a key or value of {} bytes is over the 4 GiB a frame holds", b.len())))?;
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(b);
        Ok(())
    }

    fn bound(&mut self, b: &Bound<Vec<u8>>) -> Result<(), StoreError> {
        match b {
            Bound::Unbounded => self.buf.push(0),
            Bound::Included(k) => {
                self.buf.push(1);
                self.bytes(k)?;
            }
            Bound::Excluded(k) => {
                self.buf.push(2);
                self.bytes(k)?;
            }
        }
        Ok(())
    }

    fn put(&mut self, k: &[u8], v: &[u8]) -> Result<(), StoreError> {
        self.buf.push(PUT);
        self.bytes(k)?;
        self.bytes(v)
    }

    fn change(&mut self, c: &Change) -> Result<(), StoreError> {
        match c {
            Change::Put(k, v) => self.put(k, v),
            Change::Delete(k) => {
                self.buf.push(DELETE);
                self.bytes(k)
            }
            Change::DeleteRange(from, to) => {
                self.buf.push(DELETE_RANGE);
                self.bound(from)?;
                self.bound(to)
            }
        }
    }

    fn body_len(&self) -> usize {
        self.buf.len() - FRAME_HEADER
    }

    fn finish(mut self) -> Result<Vec<u8>, StoreError> {
        let body = &self.buf[FRAME_HEADER..];
        let len = u32::try_from(body.len())
            .map_err(|_| StoreError(format!("a write of {} bytes is over the 4 GiB a frame holds", body.len())))?;
        let crc = crc32fast::hash(body);
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        self.buf[4..FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
        Ok(self.buf)
    }
}

fn encode(tree: Tree, changes: &[Change]) -> Result<Vec<u8>, StoreError> {
    let size = changes
        .iter()
        .map(|c| match c {
            Change::Put(k, v) => 9 + k.len() + v.len(),
            Change::Delete(k) => 5 + k.len(),
            Change::DeleteRange(..) => 64,
        })
        .sum();
    let mut frame = FrameWriter::new(tree, size);
    for c in changes {
        frame.change(c)?;
    }
    frame.finish()
}

/// Reads a frame body back; `None` means the body does not follow the format.
struct FrameReader<'a> {
    body: &'a [u8],
}

impl<'a> FrameReader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.body.len() < n {
            return None;
        }
        let (head, rest) = self.body.split_at(n);
        self.body = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?);
        self.take(usize::try_from(len).ok()?).map(<[u8]>::to_vec)
    }

    fn bound(&mut self) -> Option<Bound<Vec<u8>>> {
        match self.u8()? {
            0 => Some(Bound::Unbounded),
            1 => self.bytes().map(Bound::Included),
            2 => self.bytes().map(Bound::Excluded),
            _ => None,
        }
    }

    fn decode(body: &'a [u8]) -> Option<(Tree, Vec<Change>)> {
        let mut r = FrameReader { body };
        let tree = tree_of(r.u8()?)?;
        let mut changes = Vec::new();
        while !r.body.is_empty() {
            let change = match r.u8()? {
                PUT => Change::Put(r.bytes()?, r.bytes()?),
                DELETE => Change::Delete(r.bytes()?),
                DELETE_RANGE => Change::DeleteRange(r.bound()?, r.bound()?),
                _ => return None,
            };
            changes.push(change);
        }
        Some((tree, changes))
    }
}

/// What a pair costs in the file, for the live-data estimate compaction compares the file with.
fn pair_cost(key_len: usize, value_len: usize) -> u64 {
    (9 + key_len + value_len) as u64
}

/// The contents, one map per tree, with the bytes they would take in a freshly written file.
#[derive(Default)]
struct Maps {
    trees: [Map; Tree::ALL.len()],
    live: u64,
}

impl Maps {
    fn tree(&self, tree: Tree) -> &Map {
        &self.trees[usize::from(tree_code(tree))]
    }

    fn apply(&mut self, tree: Tree, change: Change) {
        let map = &mut self.trees[usize::from(tree_code(tree))];
        match change {
            Change::Put(k, v) => {
                let (key_len, value_len) = (k.len(), v.len());
                if let Some(old) = map.insert(k, v) {
                    self.live -= pair_cost(key_len, old.len());
                }
                self.live += pair_cost(key_len, value_len);
            }
            Change::Delete(k) => {
                if let Some(old) = map.remove(&k) {
                    self.live -= pair_cost(k.len(), old.len());
                }
            }
            Change::DeleteRange(from, to) => {
                if is_empty_range(&from, &to) {
                    return;
                }
                let keys: Vec<Vec<u8>> = map.range((from, to)).map(|(k, _)| k.clone()).collect();
                for k in keys {
                    if let Some(old) = map.remove(&k) {
                        self.live -= pair_cost(k.len(), old.len());
                    }
                }
            }
        }
    }
}

/// The open file and what is known about it. Its lock orders appends: the file holds frames in the order the maps
/// saw them.
struct Wal {
    file: Arc<File>,
    /// The end of the last frame: where the next one goes.
    len: u64,
    /// The file's length: zeros from `len` to here.
    allocated: u64,
    /// Set when the file may no longer match the maps (a failed append could not be taken back, or a sync failed
    /// and the kernel may have dropped the dirty pages): every later write and flush fails.
    broken: Option<String>,
    /// The file size at which compaction is next considered.
    compact_at: u64,
}

/// When to compact; tests lower the floor to exercise it.
#[derive(Clone, Copy)]
struct Compaction {
    min_bytes: u64,
    ratio: u64,
}

/// How the engine keeps its file; tests vary it.
#[derive(Clone, Copy)]
struct Settings {
    compaction: Compaction,
    /// Zeros kept ahead of the data (0: the file grows with every write).
    prealloc: u64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            compaction: Compaction { min_bytes: COMPACT_MIN_BYTES, ratio: COMPACT_RATIO },
            prealloc: PREALLOC_BYTES,
        }
    }
}

pub struct FileEngine {
    dir: PathBuf,
    maps: RwLock<Maps>,
    wal: Mutex<Wal>,
    /// The file's size, readable without waiting for an append or a compaction.
    size: AtomicU64,
    settings: Settings,
}

/// What replay found in the file.
struct Replayed {
    maps: Maps,
    /// The end of the last good frame.
    good_len: u64,
}

/// True when nothing but zero bytes is left to read: space the filesystem allocated for a write that never landed.
fn rest_is_zero(r: &mut impl Read) -> io::Result<bool> {
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
}

fn replay(file: &File, path: &Path, file_len: u64) -> Result<Replayed, StoreError> {
    let read_err = |e| io_error("reading", path, e);
    let mut r = BufReader::with_capacity(1024 * 1024, file);
    let mut header = [0u8; HEADER_LEN as usize];
    r.read_exact(&mut header).map_err(read_err)?;
    if &header[..MAGIC.len()] != MAGIC {
        return Err(StoreError(format!("{} is not a Titan write-ahead log (bad magic)", path.display())));
    }
    if header[MAGIC.len()] != VERSION {
        return Err(StoreError(format!(
            "{} has format version {}; this build reads version {VERSION}",
            path.display(),
            header[MAGIC.len()]
        )));
    }
    let mut maps = Maps::default();
    let mut pos = HEADER_LEN;
    let mut body = Vec::new();
    loop {
        if file_len - pos < FRAME_HEADER as u64 {
            return Ok(Replayed { maps, good_len: pos });
        }
        let mut head = [0u8; FRAME_HEADER];
        r.read_exact(&mut head).map_err(read_err)?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let end = pos + FRAME_HEADER as u64 + u64::from(len);
        if end > file_len {
            return Ok(Replayed { maps, good_len: pos });
        }
        body.resize(len as usize, 0);
        r.read_exact(&mut body).map_err(read_err)?;
        // A zero-length frame is never written (a body holds at least its tree); zeros are unwritten space.
        if len == 0 || crc32fast::hash(&body) != crc {
            if end == file_len || rest_is_zero(&mut r).map_err(read_err)? {
                return Ok(Replayed { maps, good_len: pos });
            }
            return Err(StoreError(format!(
                "{} is corrupt: the frame at byte {pos} fails its checksum and {} bytes follow it",
                path.display(),
                file_len - end
            )));
        }
        let (tree, changes) = FrameReader::decode(&body).ok_or_else(|| {
            StoreError(format!(
                "{} is corrupt: the frame at byte {pos} passes its checksum but does not decode",
                path.display()
            ))
        })?;
        for c in changes {
            maps.apply(tree, c);
        }
        pos = end;
    }
}

/// Whether everything in `file` from `pos` on is zero: preallocated space, as opposed to a write cut short.
fn zeros_from(file: &File, pos: u64) -> io::Result<bool> {
    let mut r = BufReader::with_capacity(1024 * 1024, file);
    r.seek(SeekFrom::Start(pos))?;
    rest_is_zero(&mut r)
}

/// Writes zeros over `[from, to)`.
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    const CHUNK: usize = 256 * 1024;
    let zeros = vec![0u8; CHUNK];
    let mut at = from;
    while at < to {
        let n = (to - at).min(CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Creates the file with just its header, durably (file and directory entry).
fn create(dir: &Path, path: &Path) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io_error("creating", path, e))?;
    // A file shorter than its header is a creation cut short: start it again.
    file.set_len(0).map_err(|e| io_error("truncating", path, e))?;
    let mut header = MAGIC.to_vec();
    header.push(VERSION);
    (&file).write_all(&header).map_err(|e| io_error("writing", path, e))?;
    file.sync_all().map_err(|e| io_error("syncing", path, e))?;
    sync_dir(dir).map_err(|e| io_error("syncing", dir, e))?;
    Ok(file)
}

impl FileEngine {
    pub fn open(dir: &Path) -> Result<FileEngine, StoreError> {
        FileEngine::open_with(dir, Settings::default())
    }

    fn open_with(dir: &Path, settings: Settings) -> Result<FileEngine, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, e))?;
        // A compaction that did not reach its rename: the file it was replacing is still whole.
        let tmp = dir.join(COMPACT_NAME);
        match std::fs::remove_file(&tmp) {
            Ok(()) => sync_dir(dir).map_err(|e| io_error("syncing", dir, e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("removing", &tmp, e)),
        }
        let path = dir.join(FILE_NAME);
        let existing = match std::fs::metadata(&path) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error("reading", &path, e)),
        };
        let (file, maps, len, allocated) = match existing {
            Some(file_len) if file_len >= HEADER_LEN => {
                let file =
                    OpenOptions::new().read(true).write(true).open(&path).map_err(|e| io_error("opening", &path, e))?;
                let Replayed { maps, good_len } = replay(&file, &path, file_len)?;
                let preallocated = zeros_from(&file, good_len).map_err(|e| io_error("reading", &path, e))?;
                if preallocated {
                    (file, maps, good_len, file_len)
                } else {
                    tracing::warn!(
                        file = %path.display(),
                        dropped_bytes = file_len - good_len,
                        "dropping an incomplete write at the end of the write-ahead log"
                    );
                    file.set_len(good_len).map_err(|e| io_error("truncating", &path, e))?;
                    file.sync_all().map_err(|e| io_error("syncing", &path, e))?;
                    (file, maps, good_len, good_len)
                }
            }
            _ => (create(dir, &path)?, Maps::default(), HEADER_LEN, HEADER_LEN),
        };
        let compact_at = settings.compaction.min_bytes.max(len.saturating_add(1));
        Ok(FileEngine {
            dir: dir.to_path_buf(),
            maps: RwLock::new(maps),
            wal: Mutex::new(Wal { file: Arc::new(file), len, allocated, broken: None, compact_at }),
            size: AtomicU64::new(len),
            settings,
        })
    }

    /// Zero-fills the file `prealloc` bytes past `end` and syncs it, so the frames written there overwrite
    /// allocated blocks. Zeros are what replay takes for the end of the data, so a crash part-way leaves a good file.
    fn extend(&self, wal: &mut Wal, end: u64) -> Result<(), StoreError> {
        let path = self.dir.join(FILE_NAME);
        let to = end.saturating_add(self.settings.prealloc);
        write_zeros(&wal.file, wal.allocated, to).map_err(|e| io_error("preallocating", &path, e))?;
        wal.file.sync_data().map_err(|e| io_error("syncing", &path, e))?;
        wal.allocated = to;
        Ok(())
    }

    fn wal(&self) -> MutexGuard<'_, Wal> {
        // The file state changes only after each step succeeds; a panic elsewhere cannot leave it half-changed.
        self.wal.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_maps(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        // Map changes are applied whole under the write lock from already-validated changes and do not panic.
        self.maps.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one frame, then applies its changes: the caller holds the file lock throughout, so frames and map
    /// changes happen in the same order.
    fn commit(&self, tree: Tree, changes: Vec<Change>) -> Result<(), StoreError> {
        let frame = encode(tree, &changes)?;
        let mut wal = self.wal();
        if let Some(why) = &wal.broken {
            return Err(StoreError(format!("the write-ahead log failed earlier and takes no more writes: {why}")));
        }
        let end = wal.len + frame.len() as u64;
        if end > wal.allocated && self.settings.prealloc > 0 {
            self.extend(&mut wal, end)?;
        }
        if let Err(e) = wal.file.write_all_at(&frame, wal.len) {
            // Take back whatever part of the frame reached the file, so the next frame follows a whole one: zeros
            // over it in allocated space, a shorter file past it.
            let (len, allocated) = (wal.len, wal.allocated);
            let undone = if end <= allocated { write_zeros(&wal.file, len, end) } else { wal.file.set_len(len) };
            if let Err(e2) = undone {
                wal.broken = Some(format!("an append failed ({e}) and could not be taken back ({e2})"));
            }
            return Err(io_error("appending to", &self.dir.join(FILE_NAME), e));
        }
        wal.len = end;
        wal.allocated = wal.allocated.max(end);
        self.size.store(wal.len, Ordering::Relaxed);
        {
            let mut maps = self.maps.write().unwrap_or_else(|p| p.into_inner());
            for c in changes {
                maps.apply(tree, c);
            }
        }
        self.maybe_compact(&mut wal);
        Ok(())
    }

    /// Compacts when the file is big and mostly dead. This runs inside a write, holding the file lock: writes
    /// pause for as long as it takes to write the live data once (readers do not), which with the floor and ratio
    /// above happens at most once per `COMPACT_RATIO - 1` times the live data appended.
    fn maybe_compact(&self, wal: &mut Wal) {
        if wal.len < wal.compact_at {
            return;
        }
        let live = self.read_maps().live;
        if wal.len < live.saturating_mul(self.settings.compaction.ratio) {
            wal.compact_at =
                self.settings.compaction.min_bytes.max(live.saturating_mul(self.settings.compaction.ratio));
            return;
        }
        let before = wal.len;
        match self.compact(wal) {
            Ok(()) => {
                tracing::info!(before_bytes = before, after_bytes = wal.len, "compacted the write-ahead log");
            }
            Err(e) => {
                // The old file is untouched and still complete; try again once it has grown some more.
                tracing::warn!(error = %e, "write-ahead log compaction failed");
                wal.compact_at = wal.len.saturating_add(self.settings.compaction.min_bytes);
                let _ = std::fs::remove_file(self.dir.join(COMPACT_NAME));
            }
        }
    }

    /// Rewrites the file with only the live contents. The caller holds the file lock, so no write is in between.
    fn compact(&self, wal: &mut Wal) -> Result<(), StoreError> {
        let tmp = self.dir.join(COMPACT_NAME);
        let path = self.dir.join(FILE_NAME);
        let write_err = |e| io_error("writing", &tmp, e);
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("removing", &tmp, e)),
        }
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&tmp).map_err(write_err)?;
        let mut out = BufWriter::with_capacity(COMPACT_FRAME_BYTES, &file);
        let mut len = HEADER_LEN;
        out.write_all(MAGIC).map_err(write_err)?;
        out.write_all(&[VERSION]).map_err(write_err)?;
        {
            let maps = self.read_maps();
            for tree in Tree::ALL {
                let mut frame = FrameWriter::new(tree, COMPACT_FRAME_BYTES);
                let mut pairs = maps.tree(tree).iter().peekable();
                while let Some((k, v)) = pairs.next() {
                    frame.put(k, v)?;
                    if frame.body_len() >= COMPACT_FRAME_BYTES || pairs.peek().is_none() {
                        let done = std::mem::replace(&mut frame, FrameWriter::new(tree, COMPACT_FRAME_BYTES));
                        let bytes = done.finish()?;
                        out.write_all(&bytes).map_err(write_err)?;
                        len += bytes.len() as u64;
                    }
                }
            }
        }
        out.flush().map_err(write_err)?;
        drop(out);
        file.sync_data().map_err(|e| io_error("syncing", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_error("renaming", &tmp, e))?;
        // Until the directory is synced a crash may bring back the old file, which is still whole; only after it
        // does the new file stand in for the old one's unsynced writes.
        if let Err(e) = sync_dir(&self.dir) {
            // The rename happened, so the old handle now points at an unlinked file; appending there would lose
            // writes. Nothing consistent is left to write to.
            wal.broken = Some(format!("syncing {} after compaction: {e}", self.dir.display()));
            return Err(io_error("syncing", &self.dir, e));
        }
        wal.file = Arc::new(file);
        wal.len = len;
        wal.allocated = len;
        wal.compact_at = self.settings.compaction.min_bytes.max(len.saturating_mul(self.settings.compaction.ratio));
        self.size.store(len, Ordering::Relaxed);
        Ok(())
    }
}

impl Engine for FileEngine {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read_maps().tree(tree).get(key).cloned())
    }

    fn write(&self, tree: Tree, ops: Vec<Op>) -> Result<(), StoreError> {
        self.commit(tree, ops.into_iter().map(Change::from).collect())
    }

    fn range(
        &self,
        tree: Tree,
        from: Bound<Vec<u8>>,
        to: Bound<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<Pair>, StoreError> {
        if is_empty_range(&from, &to) {
            return Ok(Vec::new());
        }
        let maps = self.read_maps();
        Ok(maps.tree(tree).range((from, to)).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn last(&self, tree: Tree) -> Result<Option<Pair>, StoreError> {
        Ok(self.read_maps().tree(tree).last_key_value().map(|(k, v)| (k.clone(), v.clone())))
    }

    fn delete_range(&self, tree: Tree, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Result<(), StoreError> {
        self.commit(tree, vec![Change::DeleteRange(from, to)])
    }

    /// Syncs without holding either lock, so reads and writes go on meanwhile. Every write that returned before
    /// this call is in the page cache of the file taken here (or, if a compaction replaced that file since, already
    /// synced in its replacement), so one `fdatasync` of it covers them all.
    fn flush(&self) -> Result<(), StoreError> {
        let file = {
            let wal = self.wal();
            if let Some(why) = &wal.broken {
                return Err(StoreError(format!("the write-ahead log failed earlier: {why}")));
            }
            wal.file.clone()
        };
        if let Err(e) = file.sync_data() {
            // After a failed sync the kernel may have dropped the dirty pages, so a later sync could succeed without
            // them: refuse to claim durability from here on.
            self.wal().broken = Some(format!("fdatasync failed: {e}"));
            return Err(io_error("syncing", &self.dir.join(FILE_NAME), e));
        }
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u64) -> Vec<u8> {
        i.to_be_bytes().to_vec()
    }

    fn all(engine: &FileEngine, tree: Tree) -> Vec<Pair> {
        engine.range(tree, Bound::Unbounded, Bound::Unbounded, usize::MAX).expect("range")
    }

    /// Every tree's contents, to compare an engine with itself after a reopen.
    fn contents(engine: &FileEngine) -> Vec<Vec<Pair>> {
        Tree::ALL.iter().map(|t| all(engine, *t)).collect()
    }

    fn wal_len(dir: &Path) -> u64 {
        std::fs::metadata(dir.join(FILE_NAME)).expect("wal exists").len()
    }

    fn append_raw(dir: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new().append(true).open(dir.join(FILE_NAME)).expect("open wal");
        f.write_all(bytes).expect("append");
    }

    /// A file that grows with every write and holds nothing past its data, for tests that cut and append to it.
    fn open_growing(dir: &Path) -> FileEngine {
        FileEngine::open_with(dir, Settings { prealloc: 0, ..Settings::default() }).expect("open")
    }

    #[test]
    fn passes_the_engine_suite_and_keeps_data_across_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (before, data) = {
            let engine = FileEngine::open(dir.path()).expect("open");
            super::super::conformance::check(&engine);
            assert!(wal_len(dir.path()) >= engine.size_on_disk() + PREALLOC_BYTES / 2, "zeros are kept ahead");
            (contents(&engine), engine.size_on_disk())
        };
        let allocated = wal_len(dir.path());
        let engine = FileEngine::open(dir.path()).expect("reopen");
        assert_eq!(engine.get(Tree::Log, &k(4)).expect("get"), Some(b"again".to_vec()));
        assert_eq!(engine.get(Tree::Meta, b"vote").expect("get"), Some(b"x".to_vec()));
        assert_eq!(contents(&engine), before);
        assert_eq!(engine.size_on_disk(), data, "the data ends where the zeros begin");
        assert_eq!(wal_len(dir.path()), allocated, "preallocated space is kept, not taken for a torn write");
        // New frames go right after the data, and the next reopen finds them.
        engine.write(Tree::Log, vec![Op::Put(k(100), b"after".to_vec())]).expect("write");
        engine.flush().expect("flush");
        drop(engine);
        let engine = FileEngine::open(dir.path()).expect("reopen");
        assert_eq!(engine.get(Tree::Log, &k(100)).expect("get"), Some(b"after".to_vec()));
        assert_eq!(engine.get(Tree::Log, &k(4)).expect("get"), Some(b"again".to_vec()));
    }

    #[test]
    fn the_file_is_extended_ahead_of_the_data_as_it_fills() {
        let dir = tempfile::tempdir().expect("temp dir");
        let small = Settings { prealloc: 4096, ..Settings::default() };
        let engine = FileEngine::open_with(dir.path(), small).expect("open");
        for i in 0..100u64 {
            engine.write(Tree::Log, vec![Op::Put(k(i), vec![i as u8; 300])]).expect("write");
            let (data, file) = (engine.size_on_disk(), wal_len(dir.path()));
            assert!(file >= data && file <= data + 4096 + 400, "data {data} bytes, file {file} bytes");
        }
        engine.flush().expect("flush");
        drop(engine);
        let engine = FileEngine::open_with(dir.path(), small).expect("reopen");
        assert_eq!(all(&engine, Tree::Log).len(), 100);
        assert_eq!(engine.get(Tree::Log, &k(99)).expect("get"), Some(vec![99; 300]));
    }

    #[test]
    fn a_torn_frame_in_preallocated_space_is_dropped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = {
            let engine = FileEngine::open(dir.path()).expect("open");
            engine.write(Tree::Log, vec![Op::Put(k(1), b"one".to_vec())]).expect("write");
            engine.flush().expect("flush");
            engine.size_on_disk()
        };
        // The start of a frame whose body never landed: a header claiming 50 bytes, then 10 of them, then zeros.
        let file = OpenOptions::new().write(true).open(dir.path().join(FILE_NAME)).expect("open wal");
        let mut torn = 50u32.to_le_bytes().to_vec();
        torn.extend_from_slice(&[0xab; 14]);
        file.write_all_at(&torn, data).expect("write");
        drop(file);
        let engine = FileEngine::open(dir.path()).expect("reopen after a torn frame");
        assert_eq!(all(&engine, Tree::Log), vec![(k(1), b"one".to_vec())]);
        assert_eq!(wal_len(dir.path()), data, "cut back to the last whole frame");
        engine.write(Tree::Log, vec![Op::Put(k(2), b"two".to_vec())]).expect("write");
        engine.flush().expect("flush");
        drop(engine);
        let engine = FileEngine::open(dir.path()).expect("reopen");
        assert_eq!(all(&engine, Tree::Log).len(), 2);
    }

    #[test]
    fn delete_range_and_key_order_survive_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let engine = FileEngine::open(dir.path()).expect("open");
            // Written out of order, in several calls, in two trees.
            for i in [7u64, 3, 9, 1, 5, 2, 8, 4, 6, 10] {
                engine.write(Tree::Log, vec![Op::Put(k(i), vec![i as u8; 3])]).expect("write");
                engine.write(Tree::Snapshot, vec![Op::Put(k(i), vec![0xff])]).expect("write");
            }
            engine.delete_range(Tree::Log, Bound::Excluded(k(2)), Bound::Excluded(k(5))).expect("delete");
            engine.delete_range(Tree::Log, Bound::Included(k(9)), Bound::Unbounded).expect("delete");
            // An inverted range deletes nothing rather than failing.
            engine.delete_range(Tree::Log, Bound::Included(k(8)), Bound::Excluded(k(6))).expect("delete");
            engine.flush().expect("flush");
        }
        let engine = FileEngine::open(dir.path()).expect("reopen");
        let keys: Vec<Vec<u8>> = all(&engine, Tree::Log).into_iter().map(|(key, _)| key).collect();
        assert_eq!(keys, [1, 2, 5, 6, 7, 8].map(k).to_vec(), "(2, 5) and [9, ..) are gone, the rest in order");
        assert_eq!(engine.last(Tree::Log).expect("last"), Some((k(8), vec![8; 3])));
        assert_eq!(all(&engine, Tree::Snapshot).len(), 10, "a delete_range touches only its tree");
    }

    #[test]
    fn a_torn_last_frame_is_dropped_and_the_earlier_frames_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let good = {
            let engine = open_growing(dir.path());
            engine.write(Tree::Log, vec![Op::Put(k(1), b"one".to_vec())]).expect("write");
            engine.write(Tree::Meta, vec![Op::Put(b"vote".to_vec(), b"v".to_vec())]).expect("write");
            engine.flush().expect("flush");
            let good = wal_len(dir.path());
            engine
                .write(Tree::Log, vec![Op::Put(k(2), b"two".to_vec()), Op::Put(k(3), b"three".to_vec())])
                .expect("write");
            engine.flush().expect("flush");
            good
        };
        // The last frame cut short by a few bytes, as a crash in the middle of its write leaves it.
        let file = OpenOptions::new().write(true).open(dir.path().join(FILE_NAME)).expect("open wal");
        file.set_len(wal_len(dir.path()) - 3).expect("truncate");
        drop(file);
        {
            let engine = open_growing(dir.path());
            assert_eq!(wal_len(dir.path()), good, "truncated back to the last whole frame");
            assert_eq!(all(&engine, Tree::Log), vec![(k(1), b"one".to_vec())], "the torn frame is all or nothing");
            assert_eq!(engine.get(Tree::Meta, b"vote").expect("get"), Some(b"v".to_vec()));
            // New writes follow the good frames and survive the next reopen.
            engine.write(Tree::Log, vec![Op::Put(k(4), b"four".to_vec())]).expect("write");
            engine.flush().expect("flush");
        }
        // Garbage whose length field reaches past the end of the file, and then a bad frame followed by zeros.
        append_raw(dir.path(), &[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7]);
        let engine = open_growing(dir.path());
        assert_eq!(all(&engine, Tree::Log).len(), 2);
        drop(engine);
        let mut bad = vec![5, 0, 0, 0, 1, 2, 3, 4, 0, 9, 9, 9, 9];
        bad.extend_from_slice(&[0; 100]);
        append_raw(dir.path(), &bad);
        let engine = open_growing(dir.path());
        assert_eq!(all(&engine, Tree::Log).iter().map(|(key, _)| key.clone()).collect::<Vec<_>>(), vec![k(1), k(4)]);
    }

    #[test]
    fn a_corrupt_frame_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first_end = {
            let engine = FileEngine::open(dir.path()).expect("open");
            engine.write(Tree::Log, vec![Op::Put(k(1), b"one".to_vec())]).expect("write");
            let first_end = engine.size_on_disk();
            engine.write(Tree::Log, vec![Op::Put(k(2), b"two".to_vec())]).expect("write");
            engine.flush().expect("flush");
            first_end
        };
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).expect("read wal");
        // Flip the last byte of the first frame's value.
        bytes[first_end as usize - 1] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write wal");
        let err = FileEngine::open(dir.path()).err().expect("a corrupt middle frame must not open");
        assert!(err.0.contains(&format!("frame at byte {HEADER_LEN}")), "{err}");
        assert_eq!(std::fs::read(&path).expect("read wal"), bytes, "nothing is truncated on a refused open");
    }

    #[test]
    fn another_format_version_or_file_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        drop(FileEngine::open(dir.path()).expect("open"));
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).expect("read wal");
        bytes[MAGIC.len()] = VERSION + 1;
        std::fs::write(&path, &bytes).expect("write wal");
        let err = FileEngine::open(dir.path()).err().expect("another version must not open");
        assert!(err.0.contains("format version 2"), "{err}");
        std::fs::write(&path, b"something else entirely").expect("write wal");
        assert!(FileEngine::open(dir.path()).is_err());
    }

    #[test]
    fn compaction_keeps_everything_and_a_reopen_finds_the_same() {
        let dir = tempfile::tempdir().expect("temp dir");
        let small = Settings { compaction: Compaction { min_bytes: 16 * 1024, ratio: 4 }, prealloc: 1024 };
        let (before, shrinks) = {
            let engine = FileEngine::open_with(dir.path(), small).expect("open");
            // Compaction runs inside a write, so it shows as a write after which the file is smaller than before.
            let mut shrinks = 0;
            let mut write = |tree, ops| {
                let size = engine.size_on_disk();
                engine.write(tree, ops).expect("write");
                if engine.size_on_disk() < size {
                    shrinks += 1;
                }
            };
            // The same 20 keys overwritten many times: mostly dead data.
            for round in 0..200u64 {
                let ops = (0..20).map(|i| Op::Put(k(i), format!("round {round} key {i}").into_bytes())).collect();
                write(Tree::Log, ops);
                write(Tree::Meta, vec![Op::Put(b"committed".to_vec(), k(round))]);
            }
            write(Tree::Snapshot, vec![Op::Put(b"data".to_vec(), vec![7; 5000])]);
            // A purge of the low keys, applied after the last compaction, must survive the reopen too.
            engine.delete_range(Tree::Log, Bound::Unbounded, Bound::Excluded(k(2))).expect("delete");
            engine.flush().expect("flush");
            assert!(engine.size_on_disk() < small.compaction.min_bytes, "{} bytes left", engine.size_on_disk());
            assert!(wal_len(dir.path()) <= engine.size_on_disk() + 2048);
            assert_eq!(engine.get(Tree::Log, &k(5)).expect("get"), Some(b"round 199 key 5".to_vec()));
            assert_eq!(engine.get(Tree::Log, &k(1)).expect("get"), None);
            assert_eq!(engine.get(Tree::Meta, b"committed").expect("get"), Some(k(199)));
            assert_eq!(all(&engine, Tree::Log).len(), 18);
            (contents(&engine), shrinks)
        };
        // About 190 KiB were appended against a 16 KiB floor and under 1 KiB of live data.
        assert!(shrinks >= 5, "compacted {shrinks} times");
        assert!(!dir.path().join(COMPACT_NAME).exists(), "no temporary file is left behind");
        let engine = FileEngine::open_with(dir.path(), small).expect("reopen");
        assert_eq!(contents(&engine), before);
    }

    #[test]
    fn a_leftover_compaction_file_is_ignored_and_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let engine = FileEngine::open(dir.path()).expect("open");
            engine.write(Tree::Log, vec![Op::Put(k(1), b"one".to_vec())]).expect("write");
            engine.flush().expect("flush");
        }
        // A crash before the rename: a half-written replacement with other contents.
        std::fs::write(dir.path().join(COMPACT_NAME), b"TITANWL\x01partial").expect("write tmp");
        let engine = FileEngine::open(dir.path()).expect("reopen");
        assert_eq!(all(&engine, Tree::Log), vec![(k(1), b"one".to_vec())]);
        assert!(!dir.path().join(COMPACT_NAME).exists());
    }

    #[test]
    fn a_creation_cut_short_starts_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(FILE_NAME), &MAGIC[..3]).expect("write partial header");
        let engine = FileEngine::open(dir.path()).expect("open");
        assert_eq!(engine.size_on_disk(), HEADER_LEN);
        assert_eq!(wal_len(dir.path()), HEADER_LEN, "space is preallocated at the first write");
        assert_eq!(all(&engine, Tree::Log), vec![]);
    }

    #[test]
    fn frames_round_trip() {
        let changes = vec![
            Change::Put(b"k".to_vec(), b"v".to_vec()),
            Change::Put(Vec::new(), Vec::new()),
            Change::Delete(b"gone".to_vec()),
            Change::DeleteRange(Bound::Included(b"a".to_vec()), Bound::Excluded(b"b".to_vec())),
            Change::DeleteRange(Bound::Unbounded, Bound::Unbounded),
        ];
        let frame = encode(Tree::Snapshot, &changes).expect("encode");
        let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
        assert_eq!(len, frame.len() - FRAME_HEADER);
        assert_eq!(FrameReader::decode(&frame[FRAME_HEADER..]), Some((Tree::Snapshot, changes)));
        assert_eq!(FrameReader::decode(&frame[FRAME_HEADER..frame.len() - 1]), None, "a cut body does not decode");
    }
}
