use super::*;

const LIMITS: Limits = Limits { max_request_size: 1024, max_args: 8 };

fn parse_one(input: &[u8]) -> Result<Option<Parsed>, FrameError> {
    RequestParser::new(LIMITS).parse(input)
}

fn args_of(bytes: &[u8], argc: usize) -> Vec<Vec<u8>> {
    CommandView::new(bytes, argc).args().map(<[u8]>::to_vec).collect()
}

#[test]
fn multibulk_command_and_its_arguments() {
    let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n*1\r\n";
    let Some(Parsed::Command { len, argc }) = parse_one(input).unwrap() else { panic!() };
    assert_eq!((len, argc), (26, 3));
    assert_eq!(args_of(&input[..len], argc), vec![b"SET".to_vec(), b"k".to_vec(), vec![]]);
}

#[test]
fn binary_payloads_with_crlf_inside() {
    let input = b"*2\r\n$3\r\nGET\r\n$4\r\n\r\n\0\xff\r\n";
    let Some(Parsed::Command { len, argc }) = parse_one(input).unwrap() else { panic!() };
    assert_eq!(len, input.len());
    assert_eq!(CommandView::new(input, argc).arg(1).unwrap(), b"\r\n\0\xff");
}

#[test]
fn trickled_bytes_resume_without_rescanning() {
    let input = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n";
    let mut parser = RequestParser::new(LIMITS);
    for end in 0..input.len() {
        assert!(parser.parse(&input[..end]).unwrap().is_none(), "complete at {end}");
    }
    assert!(matches!(parser.parse(input).unwrap(), Some(Parsed::Command { len: 33, argc: 3 })));
    // The parser is ready for the next frame.
    assert!(matches!(parser.parse(b"*1\r\n$4\r\nPING\r\n").unwrap(), Some(Parsed::Command { .. })));
}

#[test]
fn empty_and_null_multibulk_are_skipped() {
    assert!(matches!(parse_one(b"*0\r\n").unwrap(), Some(Parsed::Empty { len: 4 })));
    assert!(matches!(parse_one(b"*-1\r\n").unwrap(), Some(Parsed::Empty { len: 5 })));
}

#[test]
fn limits_are_enforced_from_the_headers_alone() {
    assert_eq!(parse_one(b"*9\r\n").unwrap_err(), FrameError::TooManyArgs { count: 9, limit: 8 });
    assert_eq!(
        parse_one(b"*1\r\n$999999999999\r\n").unwrap_err(),
        FrameError::BulkTooLarge { len: 999_999_999_999, limit: 1024 }
    );
    assert_eq!(parse_one(b"*2\r\n$600\r\n").map(|p| p.is_none()), Ok(true));
    let mut two_big = b"*2\r\n$600\r\n".to_vec();
    two_big.extend(std::iter::repeat_n(b'x', 600));
    two_big.extend_from_slice(b"\r\n$600\r\n");
    assert_eq!(parse_one(&two_big).unwrap_err(), FrameError::RequestTooLarge { limit: 1024 });
}

#[test]
fn malformed_frames_are_named() {
    assert_eq!(parse_one(b"*x\r\n").unwrap_err(), FrameError::InvalidMultibulkLength);
    assert_eq!(parse_one(b"*1\r\n:1\r\n").unwrap_err(), FrameError::ExpectedBulk(b':'));
    assert_eq!(parse_one(b"*1\r\n$-1\r\n").unwrap_err(), FrameError::InvalidBulkLength);
    // Like Redis, the two bytes after a bulk payload are skipped, whatever they are.
    let Ok(Some(Parsed::Command { len: 14, argc: 1 })) = parse_one(b"*1\r\n$4\r\nPINGxx") else {
        panic!("a bulk without its CRLF is taken as Redis takes it")
    };
    // Nested arrays are not a command: rejected at once, never recursed into.
    let nested = b"*1\r\n".repeat(10_000);
    assert_eq!(parse_one(&nested).unwrap_err(), FrameError::ExpectedBulk(b'*'));
    // A header line that never ends.
    assert_eq!(parse_one(&[b'*'; 70_000]).unwrap_err(), FrameError::InvalidMultibulkLength);
    assert_eq!(parse_one(b"*1\r\n$11111111111111111111111111111111111").unwrap_err(), FrameError::InvalidBulkLength);
}

#[test]
fn inline_commands_are_split_and_reencoded() {
    let Some(Parsed::Inline { len, argc, encoded }) = parse_one(b"SET k \"a b\\r\\n\\x41\" 'it\\'s'\r\nX").unwrap()
    else {
        panic!()
    };
    assert_eq!((len, argc), (29, 4));
    assert_eq!(args_of(&encoded, argc), vec![b"SET".to_vec(), b"k".to_vec(), b"a b\r\nA".to_vec(), b"it's".to_vec()]);
    assert!(matches!(parse_one(b"PING\n").unwrap(), Some(Parsed::Inline { len: 5, argc: 1, .. })));
    assert!(matches!(parse_one(b"  \r\n").unwrap(), Some(Parsed::Empty { len: 4 })));
    assert!(parse_one(b"PING").unwrap().is_none());
}

#[test]
fn inline_errors() {
    assert_eq!(parse_one(b"SET \"k\r\n").unwrap_err(), FrameError::UnbalancedQuotes);
    assert_eq!(parse_one(b"SET \"k\"x\r\n").unwrap_err(), FrameError::UnbalancedQuotes);
    assert_eq!(parse_one(&[b'a'; 70_000]).unwrap_err(), FrameError::InlineTooLarge);
    assert_eq!(parse_one(b"a b c d e f g h i\r\n").unwrap_err(), FrameError::TooManyArgs { count: 9, limit: 8 });
}

#[test]
fn parse_int_matches_redis() {
    assert_eq!(parse_int(b"0"), Some(0));
    assert_eq!(parse_int(b"-12"), Some(-12));
    assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
    assert_eq!(parse_int(b"9223372036854775808"), None);
    assert_eq!(parse_int(b"+1"), None);
    assert_eq!(parse_int(b""), None);
    assert_eq!(parse_int(b"1 "), None);
}
