//! HPACK (RFC 7541), the header compression of HTTP/2, for the frame relay.
//! This module owns the compression state of one direction of one
//! connection: a [`Decoder`] for the header blocks a peer sends us, an
//! [`Encoder`] for those we send, the static table (Appendix A) and the
//! Huffman code (Appendix B). Reassembling a block from HEADERS and
//! CONTINUATION frames, and what the fields mean (pseudo-headers, lowercase
//! names, connection-specific fields; RFC 9113 §8.2), are the caller's: here
//! names and values are opaque bytes.
//!
//! Decoding assumes a hostile peer: every length and index is checked before
//! it is used, integers above 2^24 are refused, and a block whose header
//! list exceeds the limit is still decoded to its end, so that the dynamic
//! table stays in step with the peer's and only that one stream fails
//! ([`HpackError::ListTooLarge`]). Every other error is a connection error
//! (COMPRESSION_ERROR, RFC 9113 §4.3).
//!
//! Encoding policy, in order:
//!
//! - `authorization`, `proxy-authorization`, `cookie` and `set-cookie` go as
//!   "never indexed" literals (§7.1.3), so no hop tables a credential.
//! - A field found whole in the static or the dynamic table goes as its
//!   index.
//! - Fields whose value changes on every call (`grpc-timeout`, and the
//!   `traceparent` the gateway rewrites with a fresh span per call), and any
//!   field larger than a quarter of the table (name + value + 32), go as
//!   "without indexing" literals: indexing them would only evict the fields
//!   that do repeat.
//! - Everything else goes as a literal "with incremental indexing", so from
//!   its second use on it is an index (one byte for the newest 65 entries).
//!
//! A literal names its field by index when the name is in the static table
//! (or else in the dynamic table). Strings go raw, not Huffman-coded: the
//! fields that repeat are indexed after their first use, so Huffman coding
//! would save a few bytes once per connection for CPU on every call.
//! [`huffman_encode`] exists for tests and the fuzz target. The encoder's
//! table is at most 4096 octets even when the peer allows more: enough for
//! a gRPC call's headers, and it bounds the memory of each connection.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// SETTINGS_HEADER_TABLE_SIZE at the start of every HTTP/2 connection, and
/// the most the encoder uses.
pub(crate) const DEFAULT_TABLE_SIZE: usize = 4096;

/// What a field costs beyond its name and value, in the table (§4.1) and in
/// the header list size (RFC 9113 §6.5.2).
const ENTRY_OVERHEAD: usize = 32;

/// The largest integer the decoder takes. Far above any length or index a
/// valid block can hold, and far below where arithmetic on it could
/// overflow, even on 32-bit targets.
const MAX_INTEGER: usize = 1 << 24;

const STATIC_LEN: usize = 61;

/// The first dynamic table index; the newest entry has it.
const FIRST_DYNAMIC: usize = STATIC_LEN + 1;

/// Why a header block was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HpackError {
    #[error("header block truncated")]
    Truncated,
    #[error("integer in the header block exceeds 2^24")]
    IntegerTooLarge,
    #[error("index 0 is not a table index")]
    IndexZero,
    #[error("index {index} is not in the table (61 static + {dynamic} dynamic)")]
    IndexOutOfRange { index: usize, dynamic: usize },
    #[error("string of {len} bytes runs past the end of the header block ({left} bytes left)")]
    StringPastEnd { len: usize, left: usize },
    #[error("Huffman string contains the EOS symbol")]
    HuffmanEos,
    #[error("Huffman string ends in more than 7 bits of padding")]
    HuffmanPaddingTooLong,
    #[error("Huffman string ends in padding that is not all ones")]
    HuffmanPaddingNotOnes,
    #[error("dynamic table size update to {size} exceeds the advertised {max}")]
    TableSizeTooLarge { size: usize, max: usize },
    #[error("dynamic table size update after a field (it may only start a header block)")]
    TableSizeUpdateAfterField,
    #[error("header list exceeds SETTINGS_MAX_HEADER_LIST_SIZE")]
    ListTooLarge,
}

impl HpackError {
    /// Whether the connection must end with COMPRESSION_ERROR. All errors
    /// but [`HpackError::ListTooLarge`] leave the decoder out of step with
    /// the peer; that one fails only its stream.
    pub(crate) fn is_connection_error(&self) -> bool {
        !matches!(self, HpackError::ListTooLarge)
    }
}

// ---------------------------------------------------------------------------
// Decoder

/// Decodes the header blocks one peer sends on one connection, in order.
/// After a connection error its state is unspecified: the connection must
/// close.
pub(crate) struct Decoder {
    table: Table,
    max_table_size: usize,
    max_list_size: usize,
    /// Huffman-decoded strings of the current field, kept to reuse the
    /// allocation.
    scratch: Vec<u8>,
}

impl Decoder {
    /// `max_table_size`: the SETTINGS_HEADER_TABLE_SIZE we advertise (4096
    /// by default); `max_list_size`: the SETTINGS_MAX_HEADER_LIST_SIZE we
    /// enforce (RFC 9113 size: name + value + 32 per field).
    ///
    /// The table starts at 4096 octets whatever we advertise: a peer may
    /// use that much until it has our SETTINGS, and must then announce any
    /// other size with a size update, which may be up to `max_table_size`.
    pub(crate) fn new(max_table_size: usize, max_list_size: usize) -> Self {
        Decoder {
            table: Table::new(DEFAULT_TABLE_SIZE),
            max_table_size,
            max_list_size,
            scratch: Vec::new(),
        }
    }

    /// Decodes one complete header block, calling `field(name, value)` for
    /// each field in order.
    ///
    /// With [`HpackError::ListTooLarge`], `field` has seen the fields
    /// before the one that crossed the limit, and the table is in step.
    pub(crate) fn decode(&mut self, block: &[u8], mut field: impl FnMut(&[u8], &[u8])) -> Result<(), HpackError> {
        let mut reader = Reader { rest: block };
        let mut list = ListSize {
            used: 0,
            max: self.max_list_size,
        };
        let mut at_start = true;
        while !reader.rest.is_empty() {
            let first = reader.byte()?;
            match first {
                0x80..=0xff => {
                    let index = reader.integer(first, 7)?;
                    let (name, value) = self.table.field(index)?;
                    if list.admit(name, value) {
                        field(name, value);
                    }
                }
                0x20..=0x3f => {
                    if !at_start {
                        return Err(HpackError::TableSizeUpdateAfterField);
                    }
                    let size = reader.integer(first, 5)?;
                    if size > self.max_table_size {
                        return Err(HpackError::TableSizeTooLarge {
                            size,
                            max: self.max_table_size,
                        });
                    }
                    self.table.set_max_size(size, |_, _| {});
                    // Several updates may start a block (§4.2: the smallest, then the final size).
                    continue;
                }
                _ => {
                    let indexing = first >= 0x40;
                    let index = reader.integer(first, if indexing { 6 } else { 4 })?;
                    self.scratch.clear();
                    let literal_name = match index {
                        0 => Some(reader.string(&mut self.scratch)?),
                        _ => None,
                    };
                    let value = reader.string(&mut self.scratch)?;
                    let name = match literal_name {
                        Some(name) => name.resolve(&self.scratch),
                        None => self.table.field(index)?.0,
                    };
                    let value = value.resolve(&self.scratch);
                    if list.admit(name, value) {
                        field(name, value);
                    }
                    if indexing {
                        // Copied before anything is evicted: the name may be
                        // that of the entry this insertion evicts (§4.4).
                        if name.len() + value.len() + ENTRY_OVERHEAD <= self.table.max_size {
                            let entry = Entry::new(name, value);
                            self.table.insert(entry, |_, _| {});
                        } else {
                            self.table.evict_to(0, |_, _| {});
                        }
                    }
                }
            }
            at_start = false;
        }
        if list.used > list.max {
            return Err(HpackError::ListTooLarge);
        }
        Ok(())
    }
}

/// The header list size so far (RFC 9113 §6.5.2).
struct ListSize {
    used: usize,
    max: usize,
}

impl ListSize {
    /// Counts a field; whether the list is still within the limit.
    fn admit(&mut self, name: &[u8], value: &[u8]) -> bool {
        self.used = self.used.saturating_add(name.len() + value.len() + ENTRY_OVERHEAD);
        self.used <= self.max
    }
}

/// The unread part of a header block.
struct Reader<'a> {
    rest: &'a [u8],
}

/// A decoded string: raw in the block, or Huffman-decoded into the scratch
/// buffer (a range, so that the buffer can grow while it is pending).
#[derive(Clone, Copy)]
enum Str<'a> {
    Block(&'a [u8]),
    Scratch(usize, usize),
}

impl<'a> Str<'a> {
    fn resolve<'s>(self, scratch: &'s [u8]) -> &'s [u8]
    where
        'a: 's,
    {
        match self {
            Str::Block(bytes) => bytes,
            Str::Scratch(start, end) => scratch.get(start..end).unwrap_or_default(),
        }
    }
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, HpackError> {
        let (&first, rest) = self.rest.split_first().ok_or(HpackError::Truncated)?;
        self.rest = rest;
        Ok(first)
    }

    /// An integer (§5.1) with an N-bit prefix in `first`, already read.
    fn integer(&mut self, first: u8, prefix_bits: u32) -> Result<usize, HpackError> {
        let all_ones = (1u8 << prefix_bits) - 1;
        let prefix = first & all_ones;
        if prefix < all_ones {
            return Ok(usize::from(prefix));
        }
        let mut value = usize::from(all_ones);
        // Four continuation octets carry 28 bits, past MAX_INTEGER; a fifth
        // could only add overflow (or zero padding, which no encoder sends).
        for shift in [0, 7, 14, 21] {
            let octet = self.byte()?;
            value += usize::from(octet & 0x7f) << shift;
            if octet & 0x80 == 0 {
                return match value {
                    ..=MAX_INTEGER => Ok(value),
                    _ => Err(HpackError::IntegerTooLarge),
                };
            }
        }
        Err(HpackError::IntegerTooLarge)
    }

    /// A string literal (§5.2). Its length is checked against the block
    /// before anything is allocated for it.
    fn string(&mut self, scratch: &mut Vec<u8>) -> Result<Str<'a>, HpackError> {
        let first = self.byte()?;
        let len = self.integer(first, 7)?;
        let left = self.rest.len();
        let (raw, rest) = self
            .rest
            .split_at_checked(len)
            .ok_or(HpackError::StringPastEnd { len, left })?;
        self.rest = rest;
        if first & 0x80 == 0 {
            return Ok(Str::Block(raw));
        }
        let start = scratch.len();
        huffman_decode(raw, scratch)?;
        Ok(Str::Scratch(start, scratch.len()))
    }
}

// ---------------------------------------------------------------------------
// Encoder

/// Encodes the header blocks we send on one connection, in order.
pub(crate) struct Encoder {
    table: Table,
    /// Hash of (name, value) → the entry's insertion sequence number; a hit
    /// is checked against the entry, so a collision costs only a miss.
    fields: SeqMap,
    /// Hash of a name → the newest entry with that name.
    names: SeqMap,
    /// The smallest table size since the last block, when the size changed:
    /// the next block must announce it before the final size (§4.2).
    pending_update: Option<usize>,
}

type SeqMap = HashMap<u64, u64, BuildHasherDefault<PreHashed>>;

impl Encoder {
    pub(crate) fn new() -> Self {
        Encoder {
            table: Table::new(DEFAULT_TABLE_SIZE),
            fields: SeqMap::default(),
            names: SeqMap::default(),
            pending_update: None,
        }
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE changed: shrink (evicting) and
    /// announce a size update at the start of the next block.
    pub(crate) fn set_max_table_size(&mut self, size: usize) {
        let size = size.min(DEFAULT_TABLE_SIZE);
        if size == self.table.max_size {
            return;
        }
        self.pending_update = Some(self.pending_update.map_or(size, |smallest| smallest.min(size)));
        let Encoder {
            table, fields, names, ..
        } = self;
        table.set_max_size(size, |seq, entry| forget(fields, names, seq, entry));
    }

    /// Starts a header block: announces a table size change, if any.
    pub(crate) fn begin_block(&mut self, out: &mut Vec<u8>) {
        if let Some(smallest) = self.pending_update.take() {
            if smallest < self.table.max_size {
                put_integer(smallest, 5, 0x20, out);
            }
            put_integer(self.table.max_size, 5, 0x20, out);
        }
    }

    /// Appends one field's representation to `out`. Call
    /// [`Encoder::begin_block`] first for each block.
    pub(crate) fn encode(&mut self, name: &[u8], value: &[u8], out: &mut Vec<u8>) {
        let static_name = static_name_index(name);
        match static_name {
            Some(first) if SENSITIVE.contains(&first) => {
                put_literal(first, 4, 0x10, name, value, out);
                return;
            }
            Some(first) => {
                if let Some(index) = static_field(first, value) {
                    put_integer(index, 7, 0x80, out);
                    return;
                }
            }
            // Never indexed, so neither the field nor its name can be in the table.
            None if is_per_call(name) => {
                put_literal(0, 4, 0x00, name, value, out);
                return;
            }
            None => {}
        }
        let name_key = name_key(name);
        let field_key = field_key(name_key, value);
        if let Some(index) = self.dynamic_field(field_key, name, value) {
            put_integer(index, 7, 0x80, out);
            return;
        }
        let name_index = match static_name {
            Some(index) => index,
            None => self.dynamic_name(name_key, name).unwrap_or(0),
        };
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.table.max_size / 4 {
            put_literal(name_index, 4, 0x00, name, value, out);
            return;
        }
        put_literal(name_index, 6, 0x40, name, value, out);
        let Encoder {
            table, fields, names, ..
        } = self;
        if table.insert(Entry::new(name, value), |seq, entry| forget(fields, names, seq, entry)) {
            let seq = table.inserted - 1;
            fields.insert(field_key, seq);
            names.insert(name_key, seq);
        }
    }

    fn dynamic_field(&self, key: u64, name: &[u8], value: &[u8]) -> Option<usize> {
        let position = self.table.position(*self.fields.get(&key)?)?;
        let entry = self.table.entries.get(position)?;
        (entry.name() == name && entry.value() == value).then_some(FIRST_DYNAMIC + position)
    }

    fn dynamic_name(&self, key: u64, name: &[u8]) -> Option<usize> {
        let position = self.table.position(*self.names.get(&key)?)?;
        let entry = self.table.entries.get(position)?;
        (entry.name() == name).then_some(FIRST_DYNAMIC + position)
    }
}

/// Drops an evicted entry from the encoder's maps, unless they already
/// point at a newer entry with the same key.
fn forget(fields: &mut SeqMap, names: &mut SeqMap, seq: u64, entry: &Entry) {
    let name_key = name_key(entry.name());
    let field_key = field_key(name_key, entry.value());
    if fields.get(&field_key) == Some(&seq) {
        fields.remove(&field_key);
    }
    if names.get(&name_key) == Some(&seq) {
        names.remove(&name_key);
    }
}

/// The static indices of `authorization`, `cookie`, `proxy-authorization`
/// and `set-cookie`: the names that are never indexed.
const SENSITIVE: [usize; 4] = [23, 32, 49, 55];

/// Names whose values change on every call. None is in the static table.
fn is_per_call(name: &[u8]) -> bool {
    matches!(name, b"grpc-timeout" | b"traceparent")
}

/// An integer (§5.1) with an N-bit prefix, the rest of the first octet
/// being `flags`.
fn put_integer(value: usize, prefix_bits: u32, flags: u8, out: &mut Vec<u8>) {
    let all_ones = (1u8 << prefix_bits) - 1;
    if value < usize::from(all_ones) {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | all_ones);
    let mut rest = value - usize::from(all_ones);
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// A literal field (§6.2) with a raw name (index 0) or an indexed one, and a
/// raw value.
fn put_literal(name_index: usize, prefix_bits: u32, flags: u8, name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    put_integer(name_index, prefix_bits, flags, out);
    if name_index == 0 {
        put_integer(name.len(), 7, 0, out);
        out.extend_from_slice(name);
    }
    put_integer(value.len(), 7, 0, out);
    out.extend_from_slice(value);
}

// The keys of the encoder's maps. Entries are few (at most 128 in 4096
// octets) and every hit is verified, so the hash needs speed and a fair
// spread, not resistance to chosen collisions.

fn name_key(name: &[u8]) -> u64 {
    hash_bytes(0x243f_6a88_85a3_08d3, name)
}

fn field_key(name_key: u64, value: &[u8]) -> u64 {
    hash_bytes(name_key, value)
}

fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    const K: u64 = 0xf135_7aea_2e62_a9c5;
    let (words, tail) = bytes.as_chunks::<8>();
    let mut hash = seed ^ bytes.len() as u64;
    for word in words {
        hash = (hash ^ u64::from_le_bytes(*word)).wrapping_mul(K).rotate_left(26);
    }
    let last = tail.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    (hash ^ last).wrapping_mul(K).rotate_left(26)
}

/// A `Hasher` for keys that are hashes already.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash_bytes(self.0, bytes);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

// ---------------------------------------------------------------------------
// Tables

/// A dynamic table entry: name and value in one allocation.
struct Entry {
    bytes: Box<[u8]>,
    name_len: usize,
}

impl Entry {
    fn new(name: &[u8], value: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(name.len() + value.len());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(value);
        Entry {
            bytes: bytes.into_boxed_slice(),
            name_len: name.len(),
        }
    }

    fn name(&self) -> &[u8] {
        self.bytes.get(..self.name_len).unwrap_or_default()
    }

    fn value(&self) -> &[u8] {
        self.bytes.get(self.name_len..).unwrap_or_default()
    }

    fn size(&self) -> usize {
        self.bytes.len() + ENTRY_OVERHEAD
    }
}

/// The dynamic table (§2.3.2, §4), the same code on both sides so that
/// eviction is exactly what the peer does. Entries are numbered by
/// insertion; the one numbered `inserted - 1` is the newest.
struct Table {
    /// Newest first.
    entries: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    inserted: u64,
}

impl Table {
    fn new(max_size: usize) -> Self {
        Table {
            entries: VecDeque::new(),
            size: 0,
            max_size,
            inserted: 0,
        }
    }

    /// The field at a table index (§2.3.3): static, then dynamic.
    fn field(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        if index == 0 {
            return Err(HpackError::IndexZero);
        }
        if let Some(&field) = STATIC.get(index - 1) {
            return Ok(field);
        }
        let out_of_range = HpackError::IndexOutOfRange {
            index,
            dynamic: self.entries.len(),
        };
        let entry = self.entries.get(index - FIRST_DYNAMIC).ok_or(out_of_range)?;
        Ok((entry.name(), entry.value()))
    }

    /// Where the entry with sequence number `seq` is (0 = newest), if it
    /// has not been evicted.
    fn position(&self, seq: u64) -> Option<usize> {
        let back = self.inserted.checked_sub(1)?.checked_sub(seq)?;
        usize::try_from(back)
            .ok()
            .filter(|&position| position < self.entries.len())
    }

    fn set_max_size(&mut self, max_size: usize, evicted: impl FnMut(u64, &Entry)) {
        self.max_size = max_size;
        self.evict_to(max_size, evicted);
    }

    /// Adds an entry, evicting the oldest ones to make room; an entry
    /// larger than the table empties it instead (§4.4). Whether it was added.
    fn insert(&mut self, entry: Entry, mut evicted: impl FnMut(u64, &Entry)) -> bool {
        let size = entry.size();
        let Some(room) = self.max_size.checked_sub(size) else {
            self.evict_to(0, evicted);
            return false;
        };
        self.evict_to(room, &mut evicted);
        self.size += size;
        self.entries.push_front(entry);
        self.inserted += 1;
        true
    }

    fn evict_to(&mut self, limit: usize, mut evicted: impl FnMut(u64, &Entry)) {
        while self.size > limit {
            let seq = self.inserted - self.entries.len() as u64;
            let Some(entry) = self.entries.pop_back() else {
                break;
            };
            self.size = self.size.saturating_sub(entry.size());
            evicted(seq, &entry);
        }
    }
}

/// The static table (Appendix A); index `i` is `STATIC[i - 1]`.
const STATIC: [(&[u8], &[u8]); STATIC_LEN] = [
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

/// The first static index with this name.
fn static_name_index(name: &[u8]) -> Option<usize> {
    Some(match name {
        b":authority" => 1,
        b":method" => 2,
        b":path" => 4,
        b":scheme" => 6,
        b":status" => 8,
        b"accept-charset" => 15,
        b"accept-encoding" => 16,
        b"accept-language" => 17,
        b"accept-ranges" => 18,
        b"accept" => 19,
        b"access-control-allow-origin" => 20,
        b"age" => 21,
        b"allow" => 22,
        b"authorization" => 23,
        b"cache-control" => 24,
        b"content-disposition" => 25,
        b"content-encoding" => 26,
        b"content-language" => 27,
        b"content-length" => 28,
        b"content-location" => 29,
        b"content-range" => 30,
        b"content-type" => 31,
        b"cookie" => 32,
        b"date" => 33,
        b"etag" => 34,
        b"expect" => 35,
        b"expires" => 36,
        b"from" => 37,
        b"host" => 38,
        b"if-match" => 39,
        b"if-modified-since" => 40,
        b"if-none-match" => 41,
        b"if-range" => 42,
        b"if-unmodified-since" => 43,
        b"last-modified" => 44,
        b"link" => 45,
        b"location" => 46,
        b"max-forwards" => 47,
        b"proxy-authenticate" => 48,
        b"proxy-authorization" => 49,
        b"range" => 50,
        b"referer" => 51,
        b"refresh" => 52,
        b"retry-after" => 53,
        b"server" => 54,
        b"set-cookie" => 55,
        b"strict-transport-security" => 56,
        b"transfer-encoding" => 57,
        b"user-agent" => 58,
        b"vary" => 59,
        b"via" => 60,
        b"www-authenticate" => 61,
        _ => return None,
    })
}

/// The static index of (name, value), given the first index with the name.
fn static_field(first: usize, value: &[u8]) -> Option<usize> {
    let entries = match first {
        2 | 4 | 6 => 2,
        8 => 7,
        _ => 1,
    };
    let same_name = STATIC.get(first - 1..first - 1 + entries)?;
    same_name
        .iter()
        .zip(first..)
        .find_map(|(&(_, v), index)| (v == value).then_some(index))
}

// ---------------------------------------------------------------------------
// Huffman code (Appendix B)

/// Code lengths of symbols 0 to 255 and EOS (256). The code is canonical
/// (codes of one length are consecutive in symbol order, after all shorter
/// ones), so the lengths determine the codes; [`Huffman::build`] derives
/// them and the decoding tables at compile time.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 16
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 32: ' ' to '/'
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 48: '0' to '?'
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 64: '@' to 'O'
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 80: 'P' to '_'
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 96: '`' to 'o'
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 112: 'p' to 127
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 128
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 144
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 160
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 176
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 192
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 208
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 224
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 240
    30, // EOS
];

const EOS: u16 = 256;
const MAX_CODE_LEN: usize = 30;

struct Huffman {
    /// Each symbol's code, right-aligned.
    codes: [u32; 257],
    /// By the next 8 bits of input: `length << 8 | symbol` when a code of
    /// at most 8 bits starts them (most header text: letters, digits, most
    /// punctuation), else 0.
    fast: [u16; 256],
    /// By length L: one past the last L-bit code, left-aligned in 32 bits.
    limit: [u64; MAX_CODE_LEN + 1],
    /// By length L: the first L-bit code, right-aligned.
    first: [u32; MAX_CODE_LEN + 1],
    /// By length L: where the L-bit codes' symbols start in `sorted`.
    offset: [u16; MAX_CODE_LEN + 1],
    /// Symbols in code order.
    sorted: [u16; 257],
}

const HUFFMAN_TABLES: Huffman = Huffman::build();
static HUFFMAN: Huffman = HUFFMAN_TABLES;

// A complete prefix code: the last code is all ones.
const _: () = assert!(HUFFMAN_TABLES.limit[MAX_CODE_LEN] == 1 << 32);
const _: () = assert!(HUFFMAN_TABLES.codes[EOS as usize] == (1 << 30) - 1);

impl Huffman {
    const fn build() -> Huffman {
        let mut t = Huffman {
            codes: [0; 257],
            fast: [0; 256],
            limit: [0; MAX_CODE_LEN + 1],
            first: [0; MAX_CODE_LEN + 1],
            offset: [0; MAX_CODE_LEN + 1],
            sorted: [0; 257],
        };
        let mut code: u32 = 0;
        let mut next: usize = 0;
        let mut len = 1;
        while len <= MAX_CODE_LEN {
            t.first[len] = code;
            t.offset[len] = next as u16;
            let mut symbol = 0;
            while symbol < 257 {
                if CODE_LENGTHS[symbol] as usize == len {
                    t.codes[symbol] = code;
                    t.sorted[next] = symbol as u16;
                    if len <= 8 {
                        let spread = 1 << (8 - len);
                        let mut k = 0;
                        while k < spread {
                            t.fast[(code as usize) * spread + k] = ((len as u16) << 8) | symbol as u16;
                            k += 1;
                        }
                    }
                    code += 1;
                    next += 1;
                }
                symbol += 1;
            }
            t.limit[len] = (code as u64) << (32 - len);
            code <<= 1;
            len += 1;
        }
        t
    }

    /// The symbol whose code starts `peek` (the next 32 bits, left-aligned),
    /// and the code's length.
    fn symbol(&self, peek: u32) -> (u16, u32) {
        let fast = self.fast[usize::from((peek >> 24) as u8)];
        if fast != 0 {
            return (fast & 0xff, u32::from(fast >> 8));
        }
        let mut len = 9;
        while len < MAX_CODE_LEN && u64::from(peek) >= self.limit[len] {
            len += 1;
        }
        let delta = (peek >> (32 - len)).wrapping_sub(self.first[len]) as usize;
        let symbol = self.sorted.get(usize::from(self.offset[len]) + delta);
        (symbol.copied().unwrap_or(EOS), len as u32)
    }
}

/// Appends the Huffman code of `src` (§5.2, without the length prefix),
/// padded with ones to a whole octet.
pub(crate) fn huffman_encode(src: &[u8], out: &mut Vec<u8>) {
    // Only the low `bits` bits of `acc` are pending; older bits shift out.
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    for &byte in src {
        let len = u32::from(CODE_LENGTHS[usize::from(byte)]);
        acc = (acc << len) | u64::from(HUFFMAN.codes[usize::from(byte)]);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
    }
}

/// Appends the decoding of the Huffman-coded `src` (§5.2). After an error,
/// `out` may hold part of it.
pub(crate) fn huffman_decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    // The shortest code is 5 bits.
    out.reserve(src.len() * 8 / 5);
    // The top `bits` bits of `acc` are the input not yet decoded.
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    let mut input = src.iter();
    loop {
        while bits < 32 {
            let Some(&byte) = input.next() else { break };
            acc |= u64::from(byte) << (56 - bits);
            bits += 8;
        }
        if bits == 0 {
            return Ok(());
        }
        // Past the end, read ones: a code cut short by the end then decodes
        // as a longer code (EOS at worst) than the bits left.
        let peek = ((acc | (u64::MAX >> bits)) >> 32) as u32;
        let (symbol, len) = HUFFMAN.symbol(peek);
        if len > bits {
            let all_ones = (1u64 << bits) - 1;
            return if acc >> (64 - bits) != all_ones {
                Err(HpackError::HuffmanPaddingNotOnes)
            } else if bits > 7 {
                Err(HpackError::HuffmanPaddingTooLong)
            } else {
                Ok(())
            };
        }
        if symbol == EOS {
            return Err(HpackError::HuffmanEos);
        }
        out.push(symbol as u8);
        acc <<= len;
        bits -= len;
    }
}

#[cfg(test)]
#[path = "hpack_tests.rs"]
mod tests;
