//! Tests of the HPACK codec: RFC 7541 Appendix C, differential runs against
//! `loona-hpack` (an independent implementation), what the `h2` client
//! really sends, hostile input, eviction and the encoding policy.

use super::*;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn fields(list: &[(&str, &str)]) -> Fields {
    list.iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

fn decode(decoder: &mut Decoder, block: &[u8]) -> Result<Fields, HpackError> {
    let mut out = Vec::new();
    decoder.decode(block, |n, v| out.push((n.to_vec(), v.to_vec())))?;
    Ok(out)
}

fn oracle_decode(oracle: &mut loona_hpack::Decoder<'_>, block: &[u8]) -> Fields {
    oracle
        .decode(block)
        .unwrap_or_else(|e| panic!("loona refused {block:02x?}: {e}"))
}

/// The dynamic table, newest first, as text.
fn dynamic(table: &Table) -> Vec<(String, String)> {
    table
        .entries
        .iter()
        .map(|e| {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (text(e.name()), text(e.value()))
        })
        .collect()
}

fn encode_block(encoder: &mut Encoder, list: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    encoder.begin_block(&mut out);
    for (name, value) in list {
        encoder.encode(name, value, &mut out);
    }
    out
}

/// A literal without indexing, literal name `x`, whose value is `coded`
/// with the H bit set.
fn huffman_literal(coded: &[u8]) -> Vec<u8> {
    let mut block = vec![0x00, 0x01, b'x'];
    put_integer(coded.len(), 7, 0x80, &mut block);
    block.extend_from_slice(coded);
    block
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize, alphabet: &[u8]) -> Vec<u8> {
        (0..len)
            .map(|_| match alphabet {
                [] => self.next() as u8,
                _ => alphabet[self.below(alphabet.len())],
            })
            .collect()
    }
}

const NAME_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_";

/// A header list mixing fields that repeat (static and custom), per-call and
/// sensitive fields, random names and bytes, and fields too big to index.
fn random_list(rng: &mut Rng) -> Fields {
    const COMMON: [(&str, &str); 9] = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/demo.v1.OrderService/GetOrder"),
        (":authority", "127.0.0.1:50051"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", "tonic/0.14"),
        (":status", "200"),
        ("accept-encoding", "gzip, deflate"),
    ];
    const NAMES: [&str; 8] = [
        "x-tenant",
        "x-request-id",
        "grpc-timeout",
        "authorization",
        "cookie",
        "traceparent",
        "grpc-accept-encoding",
        "content-length",
    ];
    let count = 1 + rng.below(12);
    (0..count)
        .map(|_| match rng.below(10) {
            0..=3 => {
                let (n, v) = COMMON[rng.below(COMMON.len())];
                (n.as_bytes().to_vec(), v.as_bytes().to_vec())
            }
            4..=5 => {
                let name = NAMES[rng.below(NAMES.len())].as_bytes().to_vec();
                let value = format!("v{}", rng.below(6)).into_bytes();
                (name, value)
            }
            6 => {
                let (name, _) = STATIC[rng.below(STATIC_LEN)];
                let len = rng.below(20);
                (name.to_vec(), rng.bytes(len, b""))
            }
            7..=8 => {
                let name_len = 1 + rng.below(20);
                let value_len = rng.below(60);
                (rng.bytes(name_len, NAME_CHARS), rng.bytes(value_len, b""))
            }
            _ => {
                let len = 300 + rng.below(2500);
                (format!("x-big-{}", rng.below(4)).into_bytes(), rng.bytes(len, b"abc"))
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// RFC 7541 Appendix C

#[test]
fn integer_representation_c1() {
    let cases: [(usize, u32, &str); 6] = [
        (10, 5, "0a"),
        (1337, 5, "1f9a0a"),
        (30, 5, "1e"),
        (31, 5, "1f00"),
        (127, 7, "7f00"),
        (MAX_INTEGER, 7, "7f81ffff07"),
    ];
    for (value, prefix, expected) in cases {
        let mut out = Vec::new();
        put_integer(value, prefix, 0, &mut out);
        assert_eq!(out, hex(expected), "{value} with {prefix} bits");
        let mut oracle = loona_hpack::encoder::encode_integer(value, prefix as u8);
        oracle[0] &= (1 << prefix) - 1;
        assert_eq!(out, oracle, "{value} against loona");
        let mut reader = Reader { rest: &out[1..] };
        assert_eq!(reader.integer(out[0], prefix), Ok(value));
        assert!(reader.rest.is_empty());
    }
    for value in [0, 14, 15, 16, 62, 63, 64, 200, 16_383, 16_384, 1 << 21, MAX_INTEGER] {
        for prefix in 4..=7 {
            let mut out = Vec::new();
            put_integer(value, prefix, 0, &mut out);
            let mut reader = Reader { rest: &out[1..] };
            assert_eq!(reader.integer(out[0], prefix), Ok(value), "{value} with {prefix} bits");
        }
    }
}

#[test]
fn field_representations_c2() {
    // C.2.1: literal with indexing.
    let mut decoder = Decoder::new(4096, 1 << 16);
    let block = hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
    assert_eq!(
        decode(&mut decoder, &block),
        Ok(fields(&[("custom-key", "custom-header")]))
    );
    assert_eq!(dynamic(&decoder.table), [("custom-key".into(), "custom-header".into())]);
    assert_eq!(decoder.table.size, 55);

    // C.2.2: literal without indexing.
    let mut decoder = Decoder::new(4096, 1 << 16);
    let block = hex("040c 2f73 616d 706c 652f 7061 7468");
    assert_eq!(decode(&mut decoder, &block), Ok(fields(&[(":path", "/sample/path")])));
    assert_eq!(decoder.table.size, 0);

    // C.2.3: literal never indexed.
    let block = hex("1008 7061 7373 776f 7264 0673 6563 7265 74");
    assert_eq!(decode(&mut decoder, &block), Ok(fields(&[("password", "secret")])));
    assert_eq!(decoder.table.size, 0);

    // C.2.4: indexed.
    assert_eq!(decode(&mut decoder, &hex("82")), Ok(fields(&[(":method", "GET")])));
    assert_eq!(decoder.table.size, 0);
}

/// A block of Appendix C (hex), its header list, then the table and its size.
type Step<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [(&'a str, &'a str)], usize);

/// Decodes `blocks` in order on one decoder (and on loona's), checking the
/// fields, the table and its size after each.
fn check_sequence(blocks: &[Step<'_>]) {
    let mut decoder = Decoder::new(4096, 1 << 16);
    let mut oracle = loona_hpack::Decoder::new();
    for (i, (block, list, table, size)) in blocks.iter().enumerate() {
        let block = hex(block);
        let expected = fields(list);
        assert_eq!(decode(&mut decoder, &block), Ok(expected.clone()), "block {i}");
        assert_eq!(oracle_decode(&mut oracle, &block), expected, "loona, block {i}");
        let table: Vec<(String, String)> = table.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        assert_eq!(dynamic(&decoder.table), table, "table after block {i}");
        assert_eq!(decoder.table.size, *size, "table size after block {i}");
    }
}

const C3_LIST_1: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "www.example.com"),
];
const C3_LIST_2: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "www.example.com"),
    ("cache-control", "no-cache"),
];
const C3_LIST_3: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "https"),
    (":path", "/index.html"),
    (":authority", "www.example.com"),
    ("custom-key", "custom-value"),
];
const C3_TABLE_1: &[(&str, &str)] = &[(":authority", "www.example.com")];
const C3_TABLE_2: &[(&str, &str)] = &[("cache-control", "no-cache"), (":authority", "www.example.com")];
const C3_TABLE_3: &[(&str, &str)] = &[
    ("custom-key", "custom-value"),
    ("cache-control", "no-cache"),
    (":authority", "www.example.com"),
];

#[test]
fn requests_without_huffman_c3() {
    check_sequence(&[
        (
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            C3_LIST_1,
            C3_TABLE_1,
            57,
        ),
        ("8286 84be 5808 6e6f 2d63 6163 6865", C3_LIST_2, C3_TABLE_2, 110),
        (
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            C3_LIST_3,
            C3_TABLE_3,
            164,
        ),
    ]);
}

#[test]
fn requests_with_huffman_c4() {
    check_sequence(&[
        ("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", C3_LIST_1, C3_TABLE_1, 57),
        ("8286 84be 5886 a8eb 1064 9cbf", C3_LIST_2, C3_TABLE_2, 110),
        (
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            C3_LIST_3,
            C3_TABLE_3,
            164,
        ),
    ]);
}

const DATE_21: &str = "Mon, 21 Oct 2013 20:13:21 GMT";
const DATE_22: &str = "Mon, 21 Oct 2013 20:13:22 GMT";
const LOCATION: &str = "https://www.example.com";
const COOKIE: &str = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";

/// C.5 and C.6 assume a 256-octet table. Over HTTP/2 a peer announces that
/// with a size update at the start of its first block (`3fe101`): the
/// table starts at 4096.
#[test]
fn responses_with_eviction_c5_c6() {
    let list_1 = [
        (":status", "302"),
        ("cache-control", "private"),
        ("date", DATE_21),
        ("location", LOCATION),
    ];
    let table_1 = [
        ("location", LOCATION),
        ("date", DATE_21),
        ("cache-control", "private"),
        (":status", "302"),
    ];
    let list_2 = [
        (":status", "307"),
        ("cache-control", "private"),
        ("date", DATE_21),
        ("location", LOCATION),
    ];
    let table_2 = [
        (":status", "307"),
        ("location", LOCATION),
        ("date", DATE_21),
        ("cache-control", "private"),
    ];
    let list_3 = [
        (":status", "200"),
        ("cache-control", "private"),
        ("date", DATE_22),
        ("location", LOCATION),
        ("content-encoding", "gzip"),
        ("set-cookie", COOKIE),
    ];
    let table_3 = [("set-cookie", COOKIE), ("content-encoding", "gzip"), ("date", DATE_22)];
    check_sequence(&[
        (
            "3fe101 4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65
             2e63 6f6d",
            &list_1,
            &table_1,
            222,
        ),
        ("4803 3330 37c1 c0bf", &list_2, &table_2, 222),
        (
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0
             5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851
             5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
            &list_3,
            &table_3,
            215,
        ),
    ]);
    check_sequence(&[
        (
            "3fe101 4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            &list_1,
            &table_1,
            222,
        ),
        ("4883 640e ffc1 c0bf", &list_2, &table_2, 222),
        (
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad
             94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160
             65c0 03ed 4ee5 b106 3d50 07",
            &list_3,
            &table_3,
            215,
        ),
    ]);
}

#[test]
fn huffman_strings_of_appendix_c() {
    let cases = [
        ("www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff"),
        ("no-cache", "a8eb 1064 9cbf"),
        ("custom-key", "25a8 49e9 5ba9 7d7f"),
        ("custom-value", "25a8 49e9 5bb8 e8b4 bf"),
        ("302", "6402"),
        ("private", "aec3 771a 4b"),
        (DATE_21, "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff"),
        (LOCATION, "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3"),
    ];
    for (text, coded) in cases {
        let mut out = Vec::new();
        huffman_encode(text.as_bytes(), &mut out);
        assert_eq!(out, hex(coded), "{text}");
        let mut decoded = Vec::new();
        assert_eq!(huffman_decode(&out, &mut decoded), Ok(()));
        assert_eq!(decoded, text.as_bytes());
    }
}

// ---------------------------------------------------------------------------
// Against the oracle

#[test]
fn static_table_agrees_with_the_oracle() {
    let mut decoder = Decoder::new(4096, 1 << 16);
    let mut oracle = loona_hpack::Decoder::new();
    for index in 1..=STATIC_LEN {
        let block = [0x80 | index as u8];
        let ours = decode(&mut decoder, &block).unwrap();
        assert_eq!(ours, oracle_decode(&mut oracle, &block), "index {index}");
        let (name, value) = STATIC[index - 1];
        let first = STATIC.iter().position(|(n, _)| *n == name).unwrap() + 1;
        assert_eq!(
            static_name_index(name),
            Some(first),
            "{:?}",
            String::from_utf8_lossy(name)
        );
        assert_eq!(static_field(first, value), Some(index));
        // `static_field` looks no further than the entries with the name.
        if let Some(&(next_name, next_value)) = STATIC.get(index) {
            let shared = STATIC.iter().any(|&(n, v)| n == name && v == next_value);
            if next_name != name && !shared {
                assert_eq!(static_field(first, next_value), None, "index {index}");
            }
        }
    }
    let sensitive: Vec<&[u8]> = SENSITIVE.iter().map(|&i| STATIC[i - 1].0).collect();
    assert_eq!(
        sensitive,
        [&b"authorization"[..], b"cookie", b"proxy-authorization", b"set-cookie"]
    );
    for name in [&b"grpc-timeout"[..], b"traceparent"] {
        assert!(is_per_call(name) && static_name_index(name).is_none());
    }
    assert_eq!(static_field(2, b"PUT"), None);
}

#[test]
fn huffman_code_agrees_with_the_oracle() {
    let mut oracle = loona_hpack::Decoder::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let singles = (0..=255u8).map(|b| vec![b]);
    let random = (0..2000).map(|_| {
        let len = rng.below(80);
        let alphabet: &[u8] = if rng.below(2) == 0 { b"" } else { NAME_CHARS };
        rng.bytes(len, alphabet)
    });
    for text in singles.chain(random).collect::<Vec<_>>() {
        let mut coded = Vec::new();
        huffman_encode(&text, &mut coded);
        let bits: usize = text.iter().map(|&b| usize::from(CODE_LENGTHS[usize::from(b)])).sum();
        assert_eq!(coded.len(), bits.div_ceil(8), "{text:02x?}");
        let block = huffman_literal(&coded);
        assert_eq!(oracle_decode(&mut oracle, &block), [(b"x".to_vec(), text.clone())]);
        let mut decoder = Decoder::new(4096, 1 << 16);
        assert_eq!(decode(&mut decoder, &block), Ok(vec![(b"x".to_vec(), text.clone())]));
    }
}

/// Our encoder to loona's decoder (and ours), many blocks on one
/// connection, with table size changes along the way.
#[test]
fn our_encoder_to_the_oracle_decoder() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut encoder = Encoder::new();
    let mut oracle = loona_hpack::Decoder::new();
    let mut decoder = Decoder::new(4096, usize::MAX);
    for block_number in 0..3000 {
        if rng.below(40) == 0 {
            encoder.set_max_table_size([0, 64, 100, 1024, 4096, 8192][rng.below(6)]);
        }
        let list = random_list(&mut rng);
        let block = encode_block(&mut encoder, &list);
        assert_eq!(oracle_decode(&mut oracle, &block), list, "block {block_number}");
        assert_eq!(decode(&mut decoder, &block), Ok(list), "block {block_number}");
        assert_eq!(dynamic(&decoder.table), dynamic(&encoder.table), "block {block_number}");
        assert_eq!(decoder.table.size, encoder.table.size);
    }
}

/// Loona's encoder (which indexes every new name) to our decoder, with
/// table size updates it is told to make.
#[test]
fn oracle_encoder_to_our_decoder() {
    let mut rng = Rng(0xfeed_face_cafe_beef);
    let mut oracle = loona_hpack::Encoder::new();
    let mut decoder = Decoder::new(4096, usize::MAX);
    for block_number in 0..3000 {
        let mut block = Vec::new();
        if rng.below(40) == 0 {
            let size = [0, 64, 256, 4096][rng.below(4)];
            oracle.set_max_table_size(size);
            put_integer(size, 5, 0x20, &mut block);
        }
        let list = random_list(&mut rng);
        block.extend(oracle.encode(list.iter().map(|(n, v)| (&n[..], &v[..]))));
        assert_eq!(decode(&mut decoder, &block), Ok(list), "block {block_number}");
    }
}

// ---------------------------------------------------------------------------
// Real traffic

/// What the `h2` client sends (Huffman-coded literals, its own dynamic
/// table, a block split over CONTINUATION frames) decodes to what it was
/// given.
#[tokio::test]
async fn decodes_what_the_h2_client_sends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let common = [
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", "tonic/0.14"),
    ];
    let mut requests: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut push = |path: &str, extra: &[(&str, &str)]| {
        let headers = common.iter().chain(extra).map(|(n, v)| (n.to_string(), v.to_string()));
        requests.push((path.to_string(), headers.collect()));
    };
    push(
        "/demo.v1.OrderService/GetOrder",
        &[("grpc-timeout", "100m"), ("x-request-id", "a1"), ("x-tenant", "acme")],
    );
    push(
        "/demo.v1.OrderService/GetOrder",
        &[("grpc-timeout", "99m"), ("x-request-id", "a2"), ("x-tenant", "acme")],
    );
    let big = "v".repeat(20_000);
    push(
        "/demo.v1.OrderService/ListOrders",
        &[("x-big", &big), ("authorization", "Bearer abc"), ("x-tenant", "globex")],
    );
    push(
        "/demo.v1.OrderService/GetOrder",
        &[("grpc-timeout", "100m"), ("x-request-id", "a1"), ("x-tenant", "acme")],
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = requests.clone();
    let client = tokio::spawn(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, connection) = h2::client::handshake(tcp).await.unwrap();
        let driver = tokio::spawn(connection);
        let mut streams = Vec::new();
        for (path, headers) in sent {
            let mut request = http::Request::post(format!("http://127.0.0.1:50051{path}"));
            for (name, value) in headers {
                request = request.header(name, value);
            }
            send = send.ready().await.unwrap();
            streams.push(send.send_request(request.body(()).unwrap(), true).unwrap());
        }
        // Held until the server side has read everything.
        (send, streams, driver)
    });

    let (mut socket, _) = listener.accept().await.unwrap();
    socket.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut received = Vec::new();
    let mut blocks = Vec::new();
    let mut block = Vec::new();
    let mut at = 24;
    while blocks.len() < requests.len() {
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), socket.read_buf(&mut received));
        assert!(read.await.unwrap().unwrap() > 0, "the client closed the connection");
        assert!(received.len() < 24 || received.starts_with(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        while let Some(header) = received.get(at..at + 9) {
            let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let (kind, flags) = (header[3], header[4]);
            let Some(payload) = received.get(at + 9..at + 9 + len) else {
                break;
            };
            match kind {
                // HEADERS: strip the pad length, the priority fields and the
                // padding (RFC 9113 §6.2).
                0x1 => {
                    let mut fragment = payload;
                    let mut pad = 0;
                    if flags & 0x8 != 0 {
                        pad = usize::from(fragment[0]);
                        fragment = &fragment[1..];
                    }
                    if flags & 0x20 != 0 {
                        fragment = &fragment[5..];
                    }
                    block.extend_from_slice(&fragment[..fragment.len() - pad]);
                }
                0x9 => block.extend_from_slice(payload),
                0x4 if flags & 0x1 == 0 => socket.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await.unwrap(),
                _ => {}
            }
            if matches!(kind, 0x1 | 0x9) && flags & 0x4 != 0 {
                blocks.push(std::mem::take(&mut block));
            }
            at += 9 + len;
        }
    }
    client.await.unwrap().2.abort();

    // Huffman-coded (the path is not there in ASCII), and the dynamic table
    // in use (the repeated request is a fraction of the first).
    assert!(!blocks[0].windows(12).any(|w| w == b"OrderService"));
    assert!(
        blocks[3].len() * 3 < blocks[0].len(),
        "{} vs {}",
        blocks[3].len(),
        blocks[0].len()
    );

    let mut decoder = Decoder::new(4096, 1 << 20);
    for (block, (path, headers)) in blocks.iter().zip(&requests) {
        let decoded = decode(&mut decoder, block).unwrap();
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        let decoded: Vec<(String, String)> = decoded.iter().map(|(n, v)| (text(n), text(v))).collect();
        let mut pseudo: Vec<_> = decoded[..4].to_vec();
        pseudo.sort();
        let mut expected_pseudo = vec![
            (":authority".to_string(), "127.0.0.1:50051".to_string()),
            (":method".to_string(), "POST".to_string()),
            (":path".to_string(), path.clone()),
            (":scheme".to_string(), "http".to_string()),
        ];
        expected_pseudo.sort();
        assert_eq!(pseudo, expected_pseudo);
        assert_eq!(&decoded[4..], &headers[..]);
    }
}

// ---------------------------------------------------------------------------
// Hostile input

fn refused(block: &[u8]) -> HpackError {
    let mut decoder = Decoder::new(4096, 1 << 16);
    decode(&mut decoder, block).unwrap_err()
}

#[test]
fn hostile_blocks_are_refused_with_the_right_error() {
    use HpackError::*;
    // Integers: cut short, too long, too large.
    assert_eq!(refused(&[0xff]), Truncated);
    assert_eq!(refused(&[0xff, 0x80]), Truncated);
    assert_eq!(refused(&[0x82, 0x00]), Truncated);
    assert_eq!(refused(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]), IntegerTooLarge);
    assert_eq!(refused(&[0xff, 0xff, 0xff, 0xff, 0x7f]), IntegerTooLarge);
    assert_eq!(refused(&[0xff, 0x80, 0x80, 0x80, 0x80, 0x00]), IntegerTooLarge);
    let mut huge_string = vec![0x00];
    put_integer(MAX_INTEGER + 1, 7, 0, &mut huge_string);
    assert_eq!(refused(&huge_string), IntegerTooLarge);
    // The largest accepted length still has to fit in the block.
    let mut past_end = vec![0x00];
    put_integer(MAX_INTEGER, 7, 0, &mut past_end);
    assert_eq!(
        refused(&past_end),
        StringPastEnd {
            len: MAX_INTEGER,
            left: 0
        }
    );

    // Indices.
    assert_eq!(refused(&[0x80]), IndexZero);
    assert_eq!(refused(&[0xbe]), IndexOutOfRange { index: 62, dynamic: 0 });
    assert_eq!(refused(&[0x7e, 0x00]), IndexOutOfRange { index: 62, dynamic: 0 });
    let mut decoder = Decoder::new(4096, 1 << 16);
    for name in ["a", "b", "c"] {
        let block = [0x40, 0x01, name.as_bytes()[0], 0x00];
        decode(&mut decoder, &block).unwrap();
    }
    let error = decode(&mut decoder, &[0x80 | 70]).unwrap_err();
    assert_eq!(error, IndexOutOfRange { index: 70, dynamic: 3 });
    assert_eq!(
        error.to_string(),
        "index 70 is not in the table (61 static + 3 dynamic)"
    );
    assert_eq!(decode(&mut decoder, &[0x80 | 64]), Ok(fields(&[("a", "")])));

    // Strings.
    assert_eq!(refused(&[0x00, 0x05, b'a', b'b']), StringPastEnd { len: 5, left: 2 });
    assert_eq!(
        refused(&[0x00, 0x01, b'a', 0x03, b'b']),
        StringPastEnd { len: 3, left: 1 }
    );
    assert_eq!(refused(&[0x00, 0x01]), StringPastEnd { len: 1, left: 0 });
    assert_eq!(refused(&[0x00, 0x01, b'a']), Truncated);

    // Huffman: EOS, padding that is not ones ('a' is 00011), a code cut
    // short (the first 16 of the 19 bits of the code of `\`), padding of 8 or more bits.
    assert_eq!(refused(&huffman_literal(&[0xff, 0xff, 0xff, 0xff])), HuffmanEos);
    assert_eq!(refused(&huffman_literal(&[0x1f, 0xff, 0xff, 0xff, 0xff])), HuffmanEos);
    assert_eq!(refused(&huffman_literal(&[0x18])), HuffmanPaddingNotOnes);
    assert_eq!(refused(&huffman_literal(&[0x1e])), HuffmanPaddingNotOnes);
    assert_eq!(refused(&huffman_literal(&[0xff, 0xfe])), HuffmanPaddingNotOnes);
    assert_eq!(refused(&huffman_literal(&[0xff])), HuffmanPaddingTooLong);
    assert_eq!(refused(&huffman_literal(&[0x1f, 0xff])), HuffmanPaddingTooLong);
    assert_eq!(
        HuffmanPaddingNotOnes.to_string(),
        "Huffman string ends in padding that is not all ones"
    );
    let mut decoder = Decoder::new(4096, 1 << 16);
    assert_eq!(
        decode(&mut decoder, &huffman_literal(&[0x1f])),
        Ok(fields(&[("x", "a")]))
    );
    assert_eq!(decode(&mut decoder, &huffman_literal(&[])), Ok(fields(&[("x", "")])));

    // Size updates: above what we advertise, or after a field.
    assert_eq!(
        refused(&[0x3f, 0xe2, 0x1f]),
        TableSizeTooLarge { size: 4097, max: 4096 }
    );
    let mut small = Decoder::new(100, 1 << 16);
    assert_eq!(
        decode(&mut small, &[0x3f, 0x46]),
        Err(TableSizeTooLarge { size: 101, max: 100 })
    );
    assert_eq!(refused(&[0x82, 0x20]), TableSizeUpdateAfterField);
    assert_eq!(refused(&[0x20, 0x82, 0x3f, 0xe1, 0x1f]), TableSizeUpdateAfterField);
    let mut decoder = Decoder::new(4096, 1 << 16);
    assert_eq!(
        decode(&mut decoder, &[0x20, 0x3f, 0xe1, 0x1f, 0x82]),
        Ok(fields(&[(":method", "GET")]))
    );
    assert_eq!(decode(&mut decoder, &[]), Ok(vec![]));

    assert!(Truncated.is_connection_error());
    assert!(!ListTooLarge.is_connection_error());
    assert_eq!(Truncated.to_string(), "header block truncated");
}

#[test]
fn a_list_over_the_limit_is_decoded_to_its_end_and_the_table_stays_in_step() {
    // a: 1 (34 octets) and b: 70 bytes (103 octets): 137, over 110.
    let mut block = vec![0x40, 0x01, b'a', 0x01, b'1', 0x40, 0x01, b'b', 70];
    block.extend([b'v'; 70]);
    block.push(0x82);
    let mut decoder = Decoder::new(4096, 110);
    let mut seen = Vec::new();
    let result = decoder.decode(&block, |n, v| seen.push((n.to_vec(), v.to_vec())));
    assert_eq!(result, Err(HpackError::ListTooLarge));
    assert_eq!(seen, fields(&[("a", "1")]));
    assert_eq!(decoder.table.entries.len(), 2);
    // The next block refers to both entries; b alone is within the limit.
    let b = (b"b".to_vec(), vec![b'v'; 70]);
    assert_eq!(decode(&mut decoder, &[0xbe]), Ok(vec![b.clone()]));
    assert_eq!(
        decode(&mut decoder, &[0xbf, 0x82]),
        Ok(fields(&[("a", "1"), (":method", "GET")]))
    );
    // Exactly at the limit is within it.
    let mut decoder = Decoder::new(4096, 103);
    assert_eq!(decode(&mut decoder, &block[5..block.len() - 1]), Ok(vec![b]));
}

#[test]
fn an_entry_larger_than_the_table_empties_it() {
    let mut decoder = Decoder::new(4096, 1 << 16);
    // The table set to 64 octets; a: 1 (34) fits; n: 40 bytes (73) does not.
    let mut block = vec![0x3f, 0x21, 0x40, 0x01, b'a', 0x01, b'1', 0x40, 0x01, b'n', 40];
    block.extend([b'w'; 40]);
    let big = (b"n".to_vec(), vec![b'w'; 40]);
    assert_eq!(
        decode(&mut decoder, &block),
        Ok(vec![(b"a".to_vec(), b"1".to_vec()), big])
    );
    assert_eq!(decoder.table.size, 0);
    assert!(decoder.table.entries.is_empty());
    assert_eq!(
        decode(&mut decoder, &[0xbe]),
        Err(HpackError::IndexOutOfRange { index: 62, dynamic: 0 })
    );

    // A new entry named by the entry its insertion evicts keeps the name (§4.4).
    let mut decoder = Decoder::new(4096, 1 << 16);
    let mut block = vec![0x3f, 0x31, 0x40, 0x01, b'k', 40];
    block.extend([b'v'; 40]);
    block.extend([0x7e, 40]);
    block.extend([b'w'; 40]);
    let list = decode(&mut decoder, &block).unwrap();
    assert_eq!(list[1], (b"k".to_vec(), vec![b'w'; 40]));
    assert_eq!(dynamic(&decoder.table), [("k".into(), "w".repeat(40))]);

    // The encoder side: a table too small for any field indexes nothing.
    let mut encoder = Encoder::new();
    encoder.set_max_table_size(100);
    let block = encode_block(&mut encoder, &fields(&[("a", "1")]));
    assert_eq!(block, hex("3f45 0001 6101 31"));
    assert!(encoder.table.entries.is_empty());
}

/// Any bytes at all, cut anywhere: an error or fields, never a panic.
#[test]
fn random_and_truncated_blocks_never_panic() {
    let mut rng = Rng(42);
    let mut encoder = Encoder::new();
    let mut valid = Vec::new();
    for _ in 0..50 {
        valid.push(encode_block(&mut encoder, &random_list(&mut rng)));
    }
    for block in &valid {
        for cut in 0..block.len() {
            let _ = Decoder::new(4096, 1 << 16).decode(&block[..cut], |_, _| {});
        }
    }
    for _ in 0..20_000 {
        let len = rng.below(40);
        let block = rng.bytes(len, b"");
        let _ = Decoder::new(4096, 1 << 16).decode(&block, |_, _| {});
        let _ = huffman_decode(&block, &mut Vec::new());
    }
}

// ---------------------------------------------------------------------------
// Eviction and table size

/// Encodes `list` as one block and decodes it with ours and loona's,
/// checking both get `list` and our tables agree.
fn exchange(
    encoder: &mut Encoder,
    decoder: &mut Decoder,
    oracle: &mut loona_hpack::Decoder<'_>,
    list: &[(Vec<u8>, Vec<u8>)],
) -> Vec<u8> {
    let block = encode_block(encoder, list);
    assert_eq!(oracle_decode(oracle, &block), list);
    assert_eq!(decode(decoder, &block).as_deref(), Ok(list));
    assert_eq!(dynamic(&decoder.table), dynamic(&encoder.table));
    assert_eq!(decoder.table.size, encoder.table.size);
    block
}

#[test]
fn a_full_table_evicts_oldest_first_on_both_sides() {
    let (mut encoder, mut decoder) = (Encoder::new(), Decoder::new(4096, usize::MAX));
    let mut oracle = loona_hpack::Decoder::new();
    let mut exchange =
        |encoder: &mut Encoder, list: &[(Vec<u8>, Vec<u8>)]| exchange(encoder, &mut decoder, &mut oracle, list);
    // 60 fields of 100 octets: 40 fit in 4096.
    let entry = |i: usize| (format!("x-field-{i:02}").into_bytes(), format!("{i:0>58}").into_bytes());
    for i in 0..60 {
        let block = exchange(&mut encoder, &[entry(i)]);
        assert_eq!(block[0], 0x40, "field {i} is indexed");
    }
    let expected: Vec<(String, String)> = (20..60)
        .rev()
        .map(|i| {
            let (n, v) = entry(i);
            (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
        })
        .collect();
    assert_eq!(dynamic(&encoder.table), expected);
    assert_eq!(encoder.table.size, 4000);
    // The newest is index 62, the oldest kept 101.
    assert_eq!(exchange(&mut encoder, &[entry(59)]), [0x80 | 62]);
    assert_eq!(exchange(&mut encoder, &[entry(20)]), [0x80 | 101]);
    // An evicted field is sent again, and evicts the oldest, 20.
    assert_eq!(exchange(&mut encoder, &[entry(19)])[0], 0x40);
    assert_eq!(exchange(&mut encoder, &[entry(21), entry(59)]), [0x80 | 101, 0x80 | 63]);
    let block = exchange(&mut encoder, &[entry(20), entry(19)]);
    assert_eq!(block[0], 0x40);
    assert_eq!(block.last(), Some(&(0x80 | 63)));
    assert_eq!(dynamic(&encoder.table).last().unwrap().0, "x-field-22");
}

#[test]
fn table_size_changes_are_announced_at_the_start_of_the_next_block() {
    let list = fields(&[("x-tenant", "acme"), (":path", "/a")]);
    let (mut encoder, mut decoder) = (Encoder::new(), Decoder::new(4096, usize::MAX));
    let mut oracle = loona_hpack::Decoder::new();
    let mut exchange = |encoder: &mut Encoder| exchange(encoder, &mut decoder, &mut oracle, &list);
    exchange(&mut encoder);
    assert_eq!(exchange(&mut encoder), [0xbf, 0xbe]);

    encoder.set_max_table_size(0);
    assert!(encoder.table.entries.is_empty());
    let block = exchange(&mut encoder);
    assert_eq!(block[0], 0x20);
    assert_eq!(block[1], 0x00, "without indexing: nothing fits a 0-octet table");

    // Down and up again between two blocks: both sizes are announced.
    encoder.set_max_table_size(4096);
    assert_eq!(&exchange(&mut encoder)[..3], hex("3fe11f"));
    encoder.set_max_table_size(1024);
    encoder.set_max_table_size(4096);
    encoder.set_max_table_size(65536);
    assert_eq!(exchange(&mut encoder), hex("3fe107 3fe11f bfbe"));
    // Nothing changed: nothing announced.
    encoder.set_max_table_size(4096);
    assert_eq!(exchange(&mut encoder), [0xbf, 0xbe]);
    assert_eq!(decoder.table.max_size, 4096);
}

// ---------------------------------------------------------------------------
// Encoding policy

#[test]
fn the_encoder_follows_its_policy() {
    let mut encoder = Encoder::new();
    let mut out = Vec::new();
    let mut encode = |encoder: &mut Encoder, name: &str, value: &str| {
        out.clear();
        encoder.encode(name.as_bytes(), value.as_bytes(), &mut out);
        out.clone()
    };
    // Whole static fields: indexed.
    assert_eq!(encode(&mut encoder, ":method", "POST"), [0x83]);
    assert_eq!(encode(&mut encoder, ":scheme", "http"), [0x86]);
    assert_eq!(encode(&mut encoder, "content-type", ""), [0x80 | 31]);
    // Static name: incremental indexing with the name's index; then indexed.
    let path = encode(&mut encoder, ":path", "/demo.v1.OrderService/GetOrder");
    assert_eq!(&path[..2], [0x44, 30]);
    assert_eq!(encode(&mut encoder, ":path", "/demo.v1.OrderService/GetOrder"), [0xbe]);
    // New name: literal name, then indexed; a new value reuses the dynamic name.
    assert_eq!(
        encode(&mut encoder, "te", "trailers"),
        hex("4002 7465 0874 7261 696c 6572 73")
    );
    assert_eq!(encode(&mut encoder, "te", "trailers"), [0xbe]);
    assert_eq!(encode(&mut encoder, "te", "gzip"), hex("7e04 677a 6970"));
    assert_eq!(encode(&mut encoder, "te", "trailers"), [0xbf]);
    // Per-call values: without indexing, every time.
    let timeout = hex("000c 6772 7063 2d74 696d 656f 7574 0431 3030 6d");
    assert_eq!(encode(&mut encoder, "grpc-timeout", "100m"), timeout);
    assert_eq!(encode(&mut encoder, "grpc-timeout", "100m"), timeout);
    assert_eq!(encode(&mut encoder, "traceparent", "00-ab")[0], 0x00);
    // Sensitive: never indexed, by static name.
    assert_eq!(
        encode(&mut encoder, "authorization", "Bearer x"),
        hex("1f08 0842 6561 7265 7220 78")
    );
    assert_eq!(encode(&mut encoder, "cookie", "")[..2], [0x1f, 0x11]);
    assert_eq!(encode(&mut encoder, "set-cookie", "a=b")[..2], [0x1f, 0x28]);
    assert_eq!(encode(&mut encoder, "proxy-authorization", "p")[..2], [0x1f, 0x22]);
    // Over a quarter of the table: without indexing.
    let big = "b".repeat(1024 - 32 - 5 + 1);
    assert_eq!(encode(&mut encoder, "x-big", &big)[0], 0x00);
    assert_eq!(encode(&mut encoder, "x-big", &big[1..])[0], 0x40);
    assert_eq!(encode(&mut encoder, "x-big", &big[1..]), [0xbe]);
    assert_eq!(encoder.table.entries.len(), 4);
}

/// A stale or colliding map entry never produces a wrong index.
#[test]
fn hash_collisions_cost_a_miss_not_a_wrong_index() {
    let mut encoder = Encoder::new();
    let mut out = Vec::new();
    encoder.encode(b"x-a", b"1", &mut out);
    let seq = encoder.table.inserted - 1;
    encoder.fields.insert(field_key(name_key(b"x-b"), b"2"), seq);
    encoder.names.insert(name_key(b"x-b"), seq);
    out.clear();
    encoder.encode(b"x-b", b"2", &mut out);
    assert_eq!(out, hex("4003 782d 6201 32"));
    out.clear();
    encoder.encode(b"x-b", b"2", &mut out);
    assert_eq!(out, [0xbe]);
    out.clear();
    encoder.encode(b"x-a", b"1", &mut out);
    assert_eq!(out, [0xbf]);
    // A sequence number that was evicted (or never existed) is a miss.
    encoder.fields.insert(field_key(name_key(b"x-c"), b"3"), 1000);
    out.clear();
    encoder.encode(b"x-c", b"3", &mut out);
    assert_eq!(out[0], 0x40);
}

// ---------------------------------------------------------------------------
// Measurement

/// Decode + re-encode of a typical gRPC request's headers with warm tables:
/// `cargo test --release --lib relay::hpack -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, for --release"]
fn measure_decode_and_reencode() {
    let list = fields(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/demo.v1.OrderService/GetOrder"),
        (":authority", "127.0.0.1:50051"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", "tonic/0.14"),
        ("grpc-timeout", "100m"),
    ]);
    let mut client = Encoder::new();
    encode_block(&mut client, &list);
    // Warm, from our encoder: seven indexed fields and a raw literal.
    let ours = encode_block(&mut client, &list);
    // The same with the timeout's value Huffman-coded, as h2 clients send it.
    let mut huffman = ours[..ours.len() - 5].to_vec();
    let mut coded = Vec::new();
    huffman_encode(b"100m", &mut coded);
    put_integer(coded.len(), 7, 0x80, &mut huffman);
    huffman.extend(&coded);
    for (label, block) in [("raw literal", &ours), ("Huffman literal", &huffman)] {
        let mut decoder = Decoder::new(4096, 16 << 10);
        let mut upstream = Encoder::new();
        decoder
            .decode(&encode_block(&mut Encoder::new(), &list), |_, _| {})
            .unwrap();
        let mut out = Vec::with_capacity(256);
        upstream.begin_block(&mut out);
        for (n, v) in &list {
            upstream.encode(n, v, &mut out);
        }
        // 1,000,000 blocks in five runs; the fastest run is the least
        // disturbed by whatever else the machine does.
        let mut runs = [0.0; 5];
        for run in &mut runs {
            const ROUNDS: u32 = 200_000;
            let start = std::time::Instant::now();
            for _ in 0..ROUNDS {
                out.clear();
                upstream.begin_block(&mut out);
                decoder
                    .decode(std::hint::black_box(block), |n, v| upstream.encode(n, v, &mut out))
                    .unwrap();
                std::hint::black_box(&out);
            }
            *run = start.elapsed().as_nanos() as f64 / f64::from(ROUNDS);
        }
        runs.sort_by(f64::total_cmp);
        eprintln!(
            "{label}: {} bytes in, {} bytes out, {:.1} ns per block (median of five runs {:.1})",
            block.len(),
            out.len(),
            runs[0],
            runs[2]
        );
    }
}
