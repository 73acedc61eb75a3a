//! The floor relay's HPACK (RFC 7541): just enough to re-encode every header
//! block for the connection it leaves on.
//!
//! - [`Decoder`]: indexed and literal fields, the dynamic table (up to the
//!   default 4096 bytes, with size updates), Huffman-coded strings (a
//!   canonical-code walk, bit by bit: slow, but after a connection's first
//!   calls almost every field arrives indexed).
//! - [`Encoder`]: a full match in the static table, else in its own dynamic
//!   table, is sent as an index; anything else as a literal that is added to
//!   the table (never Huffman-coded). It assumes the peer's table is the
//!   default 4096 bytes (SETTINGS_HEADER_TABLE_SIZE is not read).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// What went wrong in a header block; the connection it came on is closed.
pub type Error = &'static str;

/// The dynamic table size both ways: HTTP/2's default.
const TABLE_SIZE: usize = 4096;
/// What RFC 7541 §4.1 adds to each entry's name and value length.
const ENTRY_OVERHEAD: usize = 32;
/// Larger fields are sent without indexing, so one does not flush the table.
const MAX_INDEXED_ENTRY: usize = 512;

/// Code length in bits of each symbol (256 is EOS), RFC 7541 Appendix B.
const HUFFMAN_LENS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12,
    10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6,
    5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22,
    22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20,
    22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28,
    27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28,
    27, 27, 27, 27, 27, 26, 30,
];

/// RFC 7541 Appendix A; index `i` here is HPACK index `i + 1`.
static STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// The decoded fields of one header block, names and values back to back in
/// one reused buffer (the relay decodes a whole block before it encodes any
/// of it, so a bad block leaves the outgoing encoder untouched).
#[derive(Default)]
pub struct Fields {
    bytes: Vec<u8>,
    /// Per field: where its name starts, where its value starts, where it ends.
    spans: Vec<(usize, usize, usize)>,
}

impl Fields {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans
            .iter()
            .map(|&(name, value, end)| (&self.bytes[name..value], &self.bytes[value..end]))
    }

    /// At least as many bytes as [`Encoder::encode`] writes for these fields
    /// (a literal name and value, each with a length of up to 3 bytes).
    pub fn encoded_len_bound(&self) -> usize {
        self.bytes.len() + 8 * self.spans.len()
    }
}

/// Canonical Huffman decoding tables: per code length, the first code, where
/// its symbols start in `symbols`, and how many there are.
struct Huffman {
    first: [u32; 31],
    offset: [u16; 31],
    count: [u16; 31],
    symbols: Vec<u16>,
}

impl Huffman {
    fn new() -> Self {
        let mut symbols: Vec<u16> = (0..257).collect();
        symbols.sort_by_key(|&s| (HUFFMAN_LENS[usize::from(s)], s));
        let mut h = Huffman {
            first: [0; 31],
            offset: [0; 31],
            count: [0; 31],
            symbols,
        };
        let mut code = 0u32;
        let mut prev_len = 0u8;
        for i in 0..h.symbols.len() {
            let len = HUFFMAN_LENS[usize::from(h.symbols[i])];
            if i > 0 {
                code = (code + 1) << (len - prev_len);
            }
            let l = usize::from(len);
            if h.count[l] == 0 {
                h.first[l] = code;
                h.offset[l] = i as u16;
            }
            h.count[l] += 1;
            prev_len = len;
        }
        h
    }

    fn decode(&self, src: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let mut code = 0u32;
        let mut len = 0usize;
        for &byte in src {
            for bit in (0..8).rev() {
                code = (code << 1) | u32::from((byte >> bit) & 1);
                len += 1;
                if len > 30 {
                    return Err("bad Huffman code");
                }
                let first = self.first[len];
                let count = u32::from(self.count[len]);
                if code >= first && code - first < count {
                    let symbol = self.symbols[usize::from(self.offset[len]) + (code - first) as usize];
                    if symbol == 256 {
                        return Err("EOS in a Huffman string");
                    }
                    out.push(symbol as u8);
                    code = 0;
                    len = 0;
                }
            }
        }
        // Padding: fewer than 8 bits, all ones (a prefix of EOS).
        if len > 7 || code != (1 << len) - 1 {
            return Err("bad Huffman padding");
        }
        Ok(())
    }
}

/// An HPACK integer with a `prefix`-bit prefix, at `*pos`.
fn integer(buf: &[u8], pos: &mut usize, prefix: u8) -> Result<usize, Error> {
    const TRUNCATED: Error = "truncated header block";
    let mask = (1usize << prefix) - 1;
    let first = usize::from(*buf.get(*pos).ok_or(TRUNCATED)?) & mask;
    *pos += 1;
    if first < mask {
        return Ok(first);
    }
    let mut value = mask;
    let mut shift = 0;
    loop {
        let b = *buf.get(*pos).ok_or(TRUNCATED)?;
        *pos += 1;
        value += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 28 {
            return Err("HPACK integer too large");
        }
    }
}

pub struct Decoder {
    /// Newest first.
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max: usize,
    huffman: Huffman,
}

impl Decoder {
    pub fn new() -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: TABLE_SIZE,
            huffman: Huffman::new(),
        }
    }

    /// Decodes `block` into `fields` (appending).
    pub fn decode(&mut self, block: &[u8], fields: &mut Fields) -> Result<(), Error> {
        let mut pos = 0;
        while let Some(&b) = block.get(pos) {
            let start = fields.bytes.len();
            if b & 0x80 != 0 {
                // Indexed field.
                let (name, value) = self.entry(integer(block, &mut pos, 7)?)?;
                fields.bytes.extend_from_slice(name);
                fields.bytes.extend_from_slice(value);
                fields.spans.push((start, start + name.len(), fields.bytes.len()));
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update.
                let max = integer(block, &mut pos, 5)?;
                if max > TABLE_SIZE {
                    return Err("table size update above SETTINGS_HEADER_TABLE_SIZE");
                }
                self.max = max;
                self.evict(0);
            } else {
                // Literal, with incremental indexing (01) or without (0000, 0001).
                let indexing = b & 0x40 != 0;
                let index = integer(block, &mut pos, if indexing { 6 } else { 4 })?;
                if index == 0 {
                    self.string(block, &mut pos, &mut fields.bytes)?;
                } else {
                    fields.bytes.extend_from_slice(self.entry(index)?.0);
                }
                let value = fields.bytes.len();
                self.string(block, &mut pos, &mut fields.bytes)?;
                fields.spans.push((start, value, fields.bytes.len()));
                if indexing {
                    let entry = (fields.bytes[start..value].to_vec(), fields.bytes[value..].to_vec());
                    self.insert(entry);
                }
            }
        }
        Ok(())
    }

    fn string(&self, block: &[u8], pos: &mut usize, out: &mut Vec<u8>) -> Result<(), Error> {
        let huffman = block.get(*pos).is_some_and(|b| b & 0x80 != 0);
        let len = integer(block, pos, 7)?;
        let raw = block.get(*pos..*pos + len).ok_or("string beyond the header block")?;
        *pos += len;
        if huffman {
            self.huffman.decode(raw, out)
        } else {
            out.extend_from_slice(raw);
            Ok(())
        }
    }

    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), Error> {
        match index {
            0 => Err("index 0"),
            1..=61 => Ok(STATIC[index - 1]),
            _ => {
                let (name, value) = self.table.get(index - 62).ok_or("index beyond the dynamic table")?;
                Ok((name, value))
            }
        }
    }

    fn insert(&mut self, entry: (Vec<u8>, Vec<u8>)) {
        let size = entry.0.len() + entry.1.len() + ENTRY_OVERHEAD;
        self.evict(size);
        // An entry larger than the table empties it and is not added.
        if size <= self.max {
            self.size += size;
            self.table.push_front(entry);
        }
    }

    /// Drops the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            let Some((name, value)) = self.table.pop_back() else {
                break;
            };
            self.size -= name.len() + value.len() + ENTRY_OVERHEAD;
        }
    }
}

/// FxHash: the encoder hashes a field per field sent; SipHash costs more.
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
}

pub struct Encoder {
    /// Each field in the dynamic table, as a key (see `key`), → its insertion number.
    known: HashMap<Vec<u8>, u64, BuildHasherDefault<Fx>>,
    /// The dynamic table, oldest first: insertion number, size, key.
    entries: VecDeque<(u64, usize, Vec<u8>)>,
    inserted: u64,
    size: usize,
    /// The key of the field being encoded, so a lookup allocates nothing.
    key: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Encoder {
            known: HashMap::default(),
            entries: VecDeque::new(),
            inserted: 0,
            size: 0,
            key: Vec::new(),
        }
    }

    pub fn encode(&mut self, name: &[u8], value: &[u8], out: &mut Vec<u8>) {
        if let Some(i) = STATIC.iter().position(|&(n, v)| n == name && v == value) {
            put_int(out, 0x80, 7, i + 1);
            return;
        }
        // The key: the name's length, the name, the value.
        self.key.clear();
        self.key.extend_from_slice(&(name.len() as u32).to_le_bytes());
        self.key.extend_from_slice(name);
        self.key.extend_from_slice(value);
        if let Some(&seq) = self.known.get(self.key.as_slice()) {
            // The newest entry is index 62.
            put_int(out, 0x80, 7, 62 + (self.inserted - 1 - seq) as usize);
            return;
        }
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > MAX_INDEXED_ENTRY {
            // Literal without indexing, literal name.
            out.push(0);
            put_str(out, name);
            put_str(out, value);
            return;
        }
        match STATIC.iter().position(|&(n, _)| n == name) {
            Some(i) => put_int(out, 0x40, 6, i + 1),
            None => {
                out.push(0x40);
                put_str(out, name);
            }
        }
        put_str(out, value);
        // The same eviction as the peer's decoder does on inserting it.
        while self.size + size > TABLE_SIZE {
            let Some((seq, evicted, key)) = self.entries.pop_front() else {
                break;
            };
            self.size -= evicted;
            if self.known.get(&key) == Some(&seq) {
                self.known.remove(&key);
            }
        }
        self.known.insert(self.key.clone(), self.inserted);
        self.entries.push_back((self.inserted, size, self.key.clone()));
        self.inserted += 1;
        self.size += size;
    }
}

fn put_int(out: &mut Vec<u8>, flags: u8, prefix: u8, mut value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A string literal, not Huffman-coded.
fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}
