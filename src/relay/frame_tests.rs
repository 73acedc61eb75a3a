use bytes::BytesMut;
use h2::Reason;

use super::*;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_head(&mut out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
    out
}

/// Cuts and parses one frame, expecting exactly one in `bytes`.
fn one(bytes: &[u8]) -> Result<(Head, Vec<u8>), FrameError> {
    let mut buf = BytesMut::from(bytes);
    let (head, payload) = next_frame(&mut buf, DEFAULT_MAX_FRAME_SIZE)?.expect("a whole frame");
    assert!(buf.is_empty());
    Ok((head, payload.to_vec()))
}

fn parsed(bytes: &[u8]) -> Result<String, FrameError> {
    let (head, payload) = one(bytes)?;
    parse(&head, &payload).map(|frame| format!("{frame:?}"))
}

fn error(bytes: &[u8]) -> (Reason, Option<u32>) {
    let error = parsed(bytes).expect_err("a frame error");
    (error.reason, error.stream)
}

#[test]
fn frames_are_cut_only_when_whole() {
    let mut wire = frame(kind::DATA, flag::END_STREAM, 1, b"hello");
    wire.extend(frame(kind::PING, 0, 0, &[7; 8]));
    for split in 0..wire.len() {
        let mut buf = BytesMut::from(&wire[..split]);
        let mut seen = Vec::new();
        while let Some((head, payload)) = next_frame(&mut buf, DEFAULT_MAX_FRAME_SIZE).unwrap() {
            seen.push((head.kind, payload.to_vec()));
        }
        buf.extend_from_slice(&wire[split..]);
        while let Some((head, payload)) = next_frame(&mut buf, DEFAULT_MAX_FRAME_SIZE).unwrap() {
            seen.push((head.kind, payload.to_vec()));
        }
        assert_eq!(
            seen,
            vec![(kind::DATA, b"hello".to_vec()), (kind::PING, vec![7; 8])],
            "split at {split}"
        );
        assert!(buf.is_empty());
    }
}

#[test]
fn an_oversized_frame_is_refused_from_its_header_alone() {
    let mut head = Vec::new();
    write_head(&mut head, DEFAULT_MAX_FRAME_SIZE as usize + 1, kind::DATA, 0, 1);
    let mut buf = BytesMut::from(&head[..]);
    let error = next_frame(&mut buf, DEFAULT_MAX_FRAME_SIZE).unwrap_err();
    assert_eq!((error.reason, error.stream), (Reason::FRAME_SIZE_ERROR, None));
    // At the limit is fine.
    let wire = frame(kind::DATA, 0, 1, &vec![0; DEFAULT_MAX_FRAME_SIZE as usize]);
    assert!(one(&wire).is_ok());
}

#[test]
fn the_reserved_bit_of_the_stream_id_is_ignored() {
    let mut wire = frame(kind::DATA, 0, 3, b"x");
    wire[5] |= 0x80;
    assert_eq!(one(&wire).unwrap().0.stream, 3);
}

#[test]
fn data_padding_is_removed_but_counts_against_flow_control() {
    let payload = [&[3u8][..], b"abc", &[0, 0, 0]].concat();
    let (head, bytes) = one(&frame(kind::DATA, flag::PADDED | flag::END_STREAM, 5, &payload)).unwrap();
    assert_eq!(
        parse(&head, &bytes).unwrap(),
        Frame::Data {
            stream: 5,
            end_stream: true,
            data: b"abc",
            flow_len: 7
        }
    );
    // Padding that fills the payload exactly leaves no data; one more byte is too many.
    let (head, bytes) = one(&frame(kind::DATA, flag::PADDED, 5, &[2, 0, 0])).unwrap();
    assert!(matches!(parse(&head, &bytes).unwrap(), Frame::Data { data: b"", .. }));
    assert_eq!(
        error(&frame(kind::DATA, flag::PADDED, 5, &[3, 0, 0])),
        (Reason::PROTOCOL_ERROR, None)
    );
    assert_eq!(
        error(&frame(kind::DATA, flag::PADDED, 5, &[])),
        (Reason::FRAME_SIZE_ERROR, None)
    );
    assert_eq!(error(&frame(kind::DATA, 0, 0, b"x")), (Reason::PROTOCOL_ERROR, None));
}

#[test]
fn headers_lose_padding_and_priority() {
    let payload = [&[2u8][..], &[0, 0, 0, 1], &[16], b"block", &[0, 0]].concat();
    let (head, bytes) = one(&frame(
        kind::HEADERS,
        flag::PADDED | flag::PRIORITY | flag::END_HEADERS,
        3,
        &payload,
    ))
    .unwrap();
    assert_eq!(
        parse(&head, &bytes).unwrap(),
        Frame::Headers {
            stream: 3,
            end_stream: false,
            end_headers: true,
            fragment: b"block"
        }
    );
    // Depending on itself resets just that stream.
    let selfish = [&[0u8, 0, 0, 3][..], &[16], b"block"].concat();
    assert_eq!(
        error(&frame(kind::HEADERS, flag::PRIORITY | flag::END_HEADERS, 3, &selfish)),
        (Reason::PROTOCOL_ERROR, Some(3))
    );
    assert_eq!(
        error(&frame(kind::HEADERS, flag::PRIORITY, 3, &[0, 0, 1])),
        (Reason::FRAME_SIZE_ERROR, None)
    );
    assert_eq!(
        error(&frame(kind::HEADERS, flag::END_HEADERS, 0, b"x")),
        (Reason::PROTOCOL_ERROR, None)
    );
}

#[test]
fn control_frames_have_exact_shapes() {
    assert_eq!(
        error(&frame(kind::PRIORITY, 0, 1, &[0; 4])),
        (Reason::FRAME_SIZE_ERROR, Some(1))
    );
    assert_eq!(
        error(&frame(kind::PRIORITY, 0, 1, &[0, 0, 0, 1, 0])),
        (Reason::PROTOCOL_ERROR, Some(1))
    );
    assert_eq!(
        parsed(&frame(kind::PRIORITY, 0, 1, &[0, 0, 0, 3, 0])).unwrap(),
        "Priority"
    );
    assert_eq!(
        error(&frame(kind::RST_STREAM, 0, 1, &[0; 3])),
        (Reason::FRAME_SIZE_ERROR, None)
    );
    assert_eq!(
        error(&frame(kind::RST_STREAM, 0, 0, &[0; 4])),
        (Reason::PROTOCOL_ERROR, None)
    );
    assert_eq!(
        error(&frame(kind::PING, 0, 0, &[0; 7])),
        (Reason::FRAME_SIZE_ERROR, None)
    );
    assert_eq!(error(&frame(kind::PING, 0, 1, &[0; 8])), (Reason::PROTOCOL_ERROR, None));
    assert_eq!(
        error(&frame(kind::GOAWAY, 0, 0, &[0; 7])),
        (Reason::FRAME_SIZE_ERROR, None)
    );
    assert_eq!(
        error(&frame(kind::GOAWAY, 0, 1, &[0; 8])),
        (Reason::PROTOCOL_ERROR, None)
    );
    assert_eq!(
        error(&frame(kind::WINDOW_UPDATE, 0, 0, &[0; 5])),
        (Reason::FRAME_SIZE_ERROR, None)
    );
    assert_eq!(
        error(&frame(kind::WINDOW_UPDATE, 0, 0, &[0; 4])),
        (Reason::PROTOCOL_ERROR, None)
    );
    assert_eq!(
        error(&frame(kind::WINDOW_UPDATE, 0, 7, &[0; 4])),
        (Reason::PROTOCOL_ERROR, Some(7))
    );
    assert_eq!(
        error(&frame(kind::CONTINUATION, 0, 0, b"x")),
        (Reason::PROTOCOL_ERROR, None)
    );
    assert_eq!(
        error(&frame(kind::PUSH_PROMISE, 0, 0, &[0; 4])),
        (Reason::PROTOCOL_ERROR, None)
    );
    // Unknown types are ignored, whatever they carry.
    assert_eq!(parsed(&frame(0xfa, 0xff, 9, b"anything")).unwrap(), "Unknown");
}

#[test]
fn writers_and_parser_agree() {
    let mut out = Vec::new();
    write_ping(&mut out, true, *b"12345678");
    write_window_update(&mut out, 5, 1000);
    write_window_update(&mut out, 0, MAX_WINDOW);
    write_rst_stream(&mut out, 9, Reason::CANCEL);
    write_goaway(&mut out, 11, Reason::ENHANCE_YOUR_CALM, b"too many resets");
    write_data(&mut out, 13, true, b"payload");
    write_settings_ack(&mut out);
    let start = start_frame(&mut out, kind::HEADERS, flag::END_HEADERS, 15);
    out.extend_from_slice(b"fragment");
    finish_frame(&mut out, start);
    let mut buf = BytesMut::from(&out[..]);
    let mut frames = Vec::new();
    while let Some((head, payload)) = next_frame(&mut buf, DEFAULT_MAX_FRAME_SIZE).unwrap() {
        frames.push(format!("{:?}", parse(&head, &payload).unwrap()));
    }
    assert_eq!(
        frames,
        [
            format!(
                "{:?}",
                Frame::Ping {
                    ack: true,
                    payload: *b"12345678"
                }
            ),
            format!(
                "{:?}",
                Frame::WindowUpdate {
                    stream: 5,
                    increment: 1000
                }
            ),
            format!(
                "{:?}",
                Frame::WindowUpdate {
                    stream: 0,
                    increment: MAX_WINDOW
                }
            ),
            format!(
                "{:?}",
                Frame::RstStream {
                    stream: 9,
                    reason: Reason::CANCEL
                }
            ),
            format!(
                "{:?}",
                Frame::GoAway {
                    last_stream: 11,
                    reason: Reason::ENHANCE_YOUR_CALM,
                    debug: b"too many resets"
                }
            ),
            format!(
                "{:?}",
                Frame::Data {
                    stream: 13,
                    end_stream: true,
                    data: b"payload",
                    flow_len: 7
                }
            ),
            format!("{:?}", Frame::SettingsAck),
            format!(
                "{:?}",
                Frame::Headers {
                    stream: 15,
                    end_stream: false,
                    end_headers: true,
                    fragment: b"fragment"
                }
            ),
        ]
    );
}

#[test]
fn settings_round_trip_and_reject_bad_values() {
    let settings = Settings {
        header_table_size: Some(0),
        enable_push: Some(false),
        max_concurrent_streams: Some(100),
        initial_window_size: Some(MAX_WINDOW),
        max_frame_size: Some(MAX_MAX_FRAME_SIZE),
        max_header_list_size: Some(16 << 10),
    };
    let mut out = Vec::new();
    settings.write(&mut out);
    let (head, payload) = one(&out).unwrap();
    assert_eq!(parse(&head, &payload).unwrap(), Frame::Settings(settings));
    // Parameters it does not know are skipped.
    let unknown = [&[0u8, 0x7f, 0, 0, 0, 1][..], &[0, 3, 0, 0, 0, 5]].concat();
    assert_eq!(
        parsed(&frame(kind::SETTINGS, 0, 0, &unknown)).unwrap(),
        format!(
            "{:?}",
            Frame::Settings(Settings {
                max_concurrent_streams: Some(5),
                ..Settings::default()
            })
        )
    );
    let bad = |id: u16, value: u32| {
        let payload = [&id.to_be_bytes()[..], &value.to_be_bytes()].concat();
        error(&frame(kind::SETTINGS, 0, 0, &payload))
    };
    assert_eq!(bad(setting::ENABLE_PUSH, 2), (Reason::PROTOCOL_ERROR, None));
    assert_eq!(
        bad(setting::INITIAL_WINDOW_SIZE, MAX_WINDOW + 1),
        (Reason::FLOW_CONTROL_ERROR, None)
    );
    assert_eq!(
        bad(setting::MAX_FRAME_SIZE, DEFAULT_MAX_FRAME_SIZE - 1),
        (Reason::PROTOCOL_ERROR, None)
    );
    assert_eq!(
        bad(setting::MAX_FRAME_SIZE, MAX_MAX_FRAME_SIZE + 1),
        (Reason::PROTOCOL_ERROR, None)
    );
    assert_eq!(
        error(&frame(kind::SETTINGS, 0, 0, &[0; 5])),
        (Reason::FRAME_SIZE_ERROR, None)
    );
    assert_eq!(
        error(&frame(kind::SETTINGS, flag::ACK, 0, &[0; 6])),
        (Reason::FRAME_SIZE_ERROR, None)
    );
    assert_eq!(error(&frame(kind::SETTINGS, 0, 1, &[])), (Reason::PROTOCOL_ERROR, None));
}

fn frames_of(wire: &[u8]) -> Vec<(Head, Vec<u8>)> {
    let mut buf = BytesMut::from(wire);
    let mut frames = Vec::new();
    while let Some((head, payload)) = next_frame(&mut buf, DEFAULT_MAX_FRAME_SIZE).unwrap() {
        frames.push((head, payload.to_vec()));
    }
    frames
}

/// Feeds frames through the assembler as the relay does; returns each
/// completed block, or the first error.
fn assemble(wire: &[u8], max_block: usize) -> Result<Vec<(u32, bool, Vec<u8>)>, FrameError> {
    let mut assembler = BlockAssembler::default();
    let mut blocks = Vec::new();
    for (head, payload) in frames_of(wire) {
        let frame = parse(&head, &payload)?;
        assembler.check_order(&frame)?;
        let block = match frame {
            Frame::Headers {
                stream,
                end_stream,
                end_headers,
                fragment,
            } => assembler.headers(stream, end_stream, end_headers, fragment, max_block)?,
            Frame::Continuation {
                end_headers, fragment, ..
            } => assembler.continuation(end_headers, fragment, max_block)?,
            _ => None,
        };
        if let Some(block) = block {
            blocks.push((block.stream, block.end_stream, block.block.to_vec()));
        }
    }
    Ok(blocks)
}

#[test]
fn header_blocks_are_gathered_over_continuations() {
    let mut wire = frame(kind::HEADERS, flag::END_STREAM, 1, b"ab");
    wire.extend(frame(kind::CONTINUATION, 0, 1, b"cd"));
    wire.extend(frame(kind::CONTINUATION, flag::END_HEADERS, 1, b"ef"));
    wire.extend(frame(kind::HEADERS, flag::END_HEADERS, 3, b"gh"));
    assert_eq!(
        assemble(&wire, 64).unwrap(),
        vec![(1, true, b"abcdef".to_vec()), (3, false, b"gh".to_vec())]
    );
}

#[test]
fn header_blocks_may_not_be_interleaved_or_endless() {
    let open = frame(kind::HEADERS, 0, 1, b"ab");
    let interleaved = [open.clone(), frame(kind::DATA, 0, 1, b"x")].concat();
    assert_eq!(assemble(&interleaved, 64).unwrap_err().reason, Reason::PROTOCOL_ERROR);
    let other_stream = [open.clone(), frame(kind::CONTINUATION, flag::END_HEADERS, 3, b"x")].concat();
    assert_eq!(assemble(&other_stream, 64).unwrap_err().reason, Reason::PROTOCOL_ERROR);
    let ping = [open.clone(), frame(kind::PING, 0, 0, &[0; 8])].concat();
    assert_eq!(assemble(&ping, 64).unwrap_err().reason, Reason::PROTOCOL_ERROR);
    let stray = frame(kind::CONTINUATION, flag::END_HEADERS, 1, b"x");
    assert_eq!(assemble(&stray, 64).unwrap_err().reason, Reason::PROTOCOL_ERROR);
    // A CONTINUATION flood stops at the bound, before it is all buffered.
    let mut flood = open;
    for _ in 0..100 {
        flood.extend(frame(kind::CONTINUATION, 0, 1, &[0; 100]));
    }
    let error = assemble(&flood, 1000).unwrap_err();
    assert_eq!((error.reason, error.stream), (Reason::ENHANCE_YOUR_CALM, None));
}
