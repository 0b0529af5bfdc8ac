//! [wxauth patch] A copy of `chunked_transfer` 1.5.0's `Decoder` (MIT OR Apache-2.0, like this
//! crate), trimmed to what tiny_http uses (no accessors, no deprecated `description`) and
//! changed to bound the chunk-size line.
//!
//! Upstream collects the chunk-size digits into a `Vec` until it sees `\r`, and skips chunk
//! extensions until `\r`, with no limit: a client sending an endless chunk-size line grew the
//! `Vec` without bound, and kept a single `read` call busy for as long as it kept sending.
//! Here a chunk-size line (digits and extensions) longer than `MAX_CHUNK_SIZE_LINE` is an
//! `InvalidInput` error, like any other malformed chunk.

use std::error::Error;
use std::fmt;
use std::io::Error as IoError;
use std::io::ErrorKind;
use std::io::Read;
use std::io::Result as IoResult;

/// Longest chunk-size line accepted, without its CRLF: 16 hex digits for a `usize` leave
/// ample room for extensions, which nobody sends to this server anyway.
const MAX_CHUNK_SIZE_LINE: usize = 4096;

/// Reads HTTP chunks and sends back real data.
pub struct ChunkedDecoder<R> {
    // where the chunks come from
    source: R,

    // remaining size of the chunk being read
    // none if we are not in a chunk
    remaining_chunks_size: Option<usize>,
}

impl<R> ChunkedDecoder<R>
where
    R: Read,
{
    pub fn new(source: R) -> ChunkedDecoder<R> {
        ChunkedDecoder {
            source,
            remaining_chunks_size: None,
        }
    }

    fn read_chunk_size(&mut self) -> IoResult<usize> {
        let mut chunk_size_bytes = Vec::new();
        let mut has_ext = false;
        // [wxauth patch] bytes of this chunk-size line seen so far
        let mut line_length = 0;

        loop {
            let byte = match self.source.by_ref().bytes().next() {
                Some(b) => b?,
                None => return Err(IoError::new(ErrorKind::InvalidInput, DecoderError)),
            };

            if byte == b'\r' {
                break;
            }

            if byte == b';' {
                has_ext = true;
                break;
            }

            // [wxauth patch]
            line_length += 1;
            if line_length > MAX_CHUNK_SIZE_LINE {
                return Err(IoError::new(ErrorKind::InvalidInput, DecoderError));
            }

            chunk_size_bytes.push(byte);
        }

        // Ignore extensions for now
        if has_ext {
            loop {
                let byte = match self.source.by_ref().bytes().next() {
                    Some(b) => b?,
                    None => return Err(IoError::new(ErrorKind::InvalidInput, DecoderError)),
                };
                if byte == b'\r' {
                    break;
                }
                // [wxauth patch] Only visible text, spaces and tabs (RFC 9112 §7.1.1): a bare
                // LF here ends the line for a parser that accepts one, and the two would then
                // disagree on where the body ends.
                if (byte < b' ' && byte != b'\t') || byte >= 0x7f {
                    return Err(IoError::new(ErrorKind::InvalidInput, DecoderError));
                }

                // [wxauth patch]
                line_length += 1;
                if line_length > MAX_CHUNK_SIZE_LINE {
                    return Err(IoError::new(ErrorKind::InvalidInput, DecoderError));
                }
            }
        }

        self.read_line_feed()?;

        // [wxauth patch] 1*HEXDIG, then optional spaces (before extensions): `from_str_radix`
        // alone also takes a sign, and upstream trimmed leading spaces too, sizes another parser
        // may read differently.
        let chunk_size = String::from_utf8(chunk_size_bytes)
            .ok()
            .map(|c| c.trim_end_matches([' ', '\t']).to_owned())
            .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|c| usize::from_str_radix(&c, 16).ok())
            .ok_or_else(|| IoError::new(ErrorKind::InvalidInput, DecoderError))?;

        Ok(chunk_size)
    }

    fn read_carriage_return(&mut self) -> IoResult<()> {
        self.read_byte(b'\r')
    }

    fn read_line_feed(&mut self) -> IoResult<()> {
        self.read_byte(b'\n')
    }

    /// [wxauth patch] A failed read is passed on as it is (a timeout stays a timeout); only a
    /// wrong byte or the end of the input is a decoding error.
    fn read_byte(&mut self, expected: u8) -> IoResult<()> {
        match self.source.by_ref().bytes().next() {
            Some(Ok(byte)) if byte == expected => Ok(()),
            Some(Err(error)) => Err(error),
            _ => Err(IoError::new(ErrorKind::InvalidInput, DecoderError)),
        }
    }
}

impl<R> Read for ChunkedDecoder<R>
where
    R: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        let remaining_chunks_size = match self.remaining_chunks_size {
            Some(c) => c,
            None => {
                // first possibility: we are not in a chunk, so we'll attempt to determine
                // the chunks size
                let chunk_size = self.read_chunk_size()?;

                // if the chunk size is 0, we are at EOF
                if chunk_size == 0 {
                    self.read_carriage_return()?;
                    self.read_line_feed()?;
                    return Ok(0);
                }

                chunk_size
            }
        };

        // second possibility: we continue reading from a chunk
        if buf.len() < remaining_chunks_size {
            let read = self.source.read(buf)?;
            self.remaining_chunks_size = Some(remaining_chunks_size - read);
            return Ok(read);
        }

        // third possibility: the read request goes further than the current chunk
        // we simply read until the end of the chunk and return
        assert!(buf.len() >= remaining_chunks_size);

        let buf = &mut buf[..remaining_chunks_size];
        let read = self.source.read(buf)?;

        self.remaining_chunks_size = if read == remaining_chunks_size {
            self.read_carriage_return()?;
            self.read_line_feed()?;
            None
        } else {
            Some(remaining_chunks_size - read)
        };

        Ok(read)
    }
}

#[derive(Debug, Copy, Clone)]
struct DecoderError;

impl fmt::Display for DecoderError {
    fn fmt(&self, fmt: &mut fmt::Formatter<'_>) -> Result<(), fmt::Error> {
        write!(fmt, "Error while decoding chunks")
    }
}

impl Error for DecoderError {}

#[cfg(test)]
mod test {
    use super::ChunkedDecoder as Decoder;
    use std::io;
    use std::io::Read;

    /// This unit test is taken from from Hyper
    /// https://github.com/hyperium/hyper
    /// Copyright (c) 2014 Sean McArthur
    #[test]
    fn test_read_chunk_size() {
        fn read(s: &str, expected: usize) {
            let mut decoded = Decoder::new(s.as_bytes());
            let actual = decoded.read_chunk_size().unwrap();
            assert_eq!(expected, actual);
        }

        fn read_err(s: &str) {
            let mut decoded = Decoder::new(s.as_bytes());
            let err_kind = decoded.read_chunk_size().unwrap_err().kind();
            assert_eq!(err_kind, io::ErrorKind::InvalidInput);
        }

        read("1\r\n", 1);
        read("01\r\n", 1);
        read("0\r\n", 0);
        read("00\r\n", 0);
        read("A\r\n", 10);
        read("a\r\n", 10);
        read("Ff\r\n", 255);
        read("Ff   \r\n", 255);
        // Missing LF or CRLF
        read_err("F\rF");
        read_err("F");
        // Invalid hex digit
        read_err("X\r\n");
        read_err("1X\r\n");
        read_err("-\r\n");
        read_err("-1\r\n");
        // [wxauth patch] a sign or leading whitespace
        read_err("+1\r\n");
        read_err(" 1\r\n");
        read_err("\r\n");
        // Acceptable (if not fully valid) extensions do not influence the size
        read("1;extension\r\n", 1);
        read("a;ext name=value\r\n", 10);
        read("1;extension;extension2\r\n", 1);
        read("1;;;  ;\r\n", 1);
        read("2; extension...\r\n", 2);
        read("3   ; extension=123\r\n", 3);
        read("3   ;\r\n", 3);
        read("3   ;   \r\n", 3);
        // Invalid extensions cause an error
        read_err("1 invalid extension\r\n");
        // [wxauth patch] control characters and bytes outside ASCII in an extension
        read_err("2;a\nxx\r\n");
        read_err("2;a\x00\r\n");
        read_err("2;caf\u{e9}\r\n");
        read_err("1 A\r\n");
        read_err("1;no CRLF");
    }

    /// [wxauth patch] An endless chunk-size line is refused after `MAX_CHUNK_SIZE_LINE`
    /// bytes, whether the excess is in the digits or in the extensions.
    #[test]
    fn chunk_size_line_is_bounded() {
        fn consumed(line: Vec<u8>) -> (io::ErrorKind, u64) {
            let mut source = io::Cursor::new(line);
            let error = Decoder::new(&mut source).read_chunk_size().unwrap_err();
            (error.kind(), source.position())
        }

        let digits = vec![b'0'; 1 << 20];
        let (kind, read) = consumed(digits);
        assert_eq!(kind, io::ErrorKind::InvalidInput);
        assert_eq!(read, super::MAX_CHUNK_SIZE_LINE as u64 + 1);

        let mut extension = b"1;".to_vec();
        extension.resize(1 << 20, b'x');
        let (kind, read) = consumed(extension);
        assert_eq!(kind, io::ErrorKind::InvalidInput);
        assert_eq!(read, super::MAX_CHUNK_SIZE_LINE as u64 + 2);

        let mut longest = vec![b'0'; super::MAX_CHUNK_SIZE_LINE - 1];
        longest.extend_from_slice(b"1\r\n");
        assert_eq!(Decoder::new(&longest[..]).read_chunk_size().unwrap(), 1);
    }

    #[test]
    fn test_valid_chunk_decode() {
        let source = io::Cursor::new(
            "3\r\nhel\r\nb\r\nlo world!!!\r\n0\r\n\r\n"
                .to_string()
                .into_bytes(),
        );
        let mut decoded = Decoder::new(source);

        let mut string = String::new();
        decoded.read_to_string(&mut string).unwrap();

        assert_eq!(string, "hello world!!!");
    }

    #[test]
    fn test_decode_zero_length() {
        let mut decoder = Decoder::new(b"0\r\n\r\n" as &[u8]);

        let mut decoded = String::new();
        decoder.read_to_string(&mut decoded).unwrap();

        assert_eq!(decoded, "");
    }

    #[test]
    fn test_decode_invalid_chunk_length() {
        let mut decoder = Decoder::new(b"m\r\n\r\n" as &[u8]);

        let mut decoded = String::new();
        assert!(decoder.read_to_string(&mut decoded).is_err());
    }

    #[test]
    fn invalid_input1() {
        let source = io::Cursor::new(
            "2\r\nhel\r\nb\r\nlo world!!!\r\n0\r\n"
                .to_string()
                .into_bytes(),
        );
        let mut decoded = Decoder::new(source);

        let mut string = String::new();
        assert!(decoded.read_to_string(&mut string).is_err());
    }

    #[test]
    fn invalid_input2() {
        let source = io::Cursor::new(
            "3\rhel\r\nb\r\nlo world!!!\r\n0\r\n"
                .to_string()
                .into_bytes(),
        );
        let mut decoded = Decoder::new(source);

        let mut string = String::new();
        assert!(decoded.read_to_string(&mut string).is_err());
    }
}
