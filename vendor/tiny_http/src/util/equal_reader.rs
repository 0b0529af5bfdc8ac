use std::io::Read;
use std::io::Result as IoResult;

/// A `Reader` that reads exactly the number of bytes from a sub-reader.
///
/// If the limit is reached, it returns EOF. If the limit is not reached
/// when the destructor is called, the remaining bytes will be read and
/// thrown away.
pub struct EqualReader<R>
where
    R: Read,
{
    reader: R,
    size: usize,
    // [wxauth patch] No `last_read_signal` channel: nothing received from it, and creating it
    // cost an allocation aligned to 128 bytes in every request with a body.
}

impl<R> EqualReader<R>
where
    R: Read,
{
    pub fn new(reader: R, size: usize) -> EqualReader<R> {
        EqualReader { reader, size }
    }
}

impl<R> Read for EqualReader<R>
where
    R: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if self.size == 0 {
            return Ok(0);
        }

        let buf = if buf.len() < self.size {
            buf
        } else {
            &mut buf[..self.size]
        };

        match self.reader.read(buf) {
            Ok(len) => {
                self.size -= len;
                Ok(len)
            }
            err @ Err(_) => err,
        }
    }
}

impl<R> Drop for EqualReader<R>
where
    R: Read,
{
    fn drop(&mut self) {
        let mut remaining_to_read = self.size;

        // [wxauth patch] A bounded buffer: `size` is the client's Content-Length, and upstream
        // allocated all of it at once (a huge Content-Length aborted the process).
        let mut buf = vec![0; remaining_to_read.min(8 * 1024)];
        // [wxauth patch] A bounded drain: this runs on the application's thread after it has
        // answered, so a client announcing a huge body and sending it slowly could hold that
        // thread for as long as it likes. Past these bounds the rest is left unread; it is then
        // read as the next request head, which fails to parse and closes the connection.
        let drain_deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut drain_budget: usize = 1024 * 1024;

        while remaining_to_read > 0 {
            if drain_budget == 0 || std::time::Instant::now() > drain_deadline {
                break;
            }
            let len = remaining_to_read.min(buf.len());

            match self.reader.read(&mut buf[..len]) {
                Err(_) | Ok(0) => break,
                Ok(other) => {
                    remaining_to_read -= other;
                    drain_budget = drain_budget.saturating_sub(other);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EqualReader;
    use std::io::Read;

    #[test]
    fn test_limit() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let mut equal_reader = EqualReader::new(org_reader.by_ref(), 5);

            let mut string = String::new();
            equal_reader.read_to_string(&mut string).unwrap();
            assert_eq!(string, "hello");
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }

    #[test]
    fn test_not_enough() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let mut equal_reader = EqualReader::new(org_reader.by_ref(), 5);

            let mut vec = [0];
            equal_reader.read_exact(&mut vec).unwrap();
            assert_eq!(vec[0], b'h');
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }
}
