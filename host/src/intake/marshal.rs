//! A reader for the subset of CPython's `marshal` format (version 4, CPython 3.4–3.13) that span
//! batches use: None, bools, ints, floats, str, bytes, tuples, lists, dicts and back-references.
//! `marshal.dumps` is 4–5× cheaper than `json.dumps` inside the traced process, where every
//! microsecond is paid by someone else's request. Anything else (code objects, sets, complex) is an
//! error: peers are outside input.

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i128),
    /// A non-negative int above `i128::MAX`.
    UInt(u128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MarshalError {
    #[error("truncated marshal data")]
    Truncated,
    #[error("unsupported marshal type {0:#04x}")]
    Unsupported(u8),
    #[error("bad back-reference {0}")]
    BadRef(u32),
    #[error("integer out of range")]
    IntRange,
    #[error("invalid utf-8 in a string")]
    Utf8,
    #[error("nested too deeply")]
    TooDeep,
}

const FLAG_REF: u8 = 0x80;
const MAX_DEPTH: usize = 32;

pub fn loads(data: &[u8]) -> Result<Value, MarshalError> {
    let mut r = Reader {
        data,
        pos: 0,
        refs: Vec::new(),
    };
    r.value(0)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    /// `None` while a container that reserved its slot is still being read.
    refs: Vec<Option<Value>>,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], MarshalError> {
        let end = self.pos.checked_add(n).ok_or(MarshalError::Truncated)?;
        let s = self
            .data
            .get(self.pos..end)
            .ok_or(MarshalError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, MarshalError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, MarshalError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn len32(&mut self) -> Result<usize, MarshalError> {
        let n = self.u32()? as usize;
        // A length can never exceed what is left: refuse before allocating.
        if n > self.data.len() - self.pos {
            return Err(MarshalError::Truncated);
        }
        Ok(n)
    }

    fn string(&mut self, n: usize) -> Result<String, MarshalError> {
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| MarshalError::Utf8)
    }

    fn value(&mut self, depth: usize) -> Result<Value, MarshalError> {
        if depth > MAX_DEPTH {
            return Err(MarshalError::TooDeep);
        }
        let code = self.byte()?;
        let flag = code & FLAG_REF != 0;
        let slot = if flag {
            self.refs.push(None);
            Some(self.refs.len() - 1)
        } else {
            None
        };
        let v = match code & !FLAG_REF {
            b'N' => Value::None,
            b'T' => Value::Bool(true),
            b'F' => Value::Bool(false),
            b'i' => Value::Int(i128::from(self.u32()? as i32)),
            b'l' => self.long()?,
            b'g' => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Value::Float(f64::from_le_bytes(a))
            }
            b'z' | b'Z' => {
                let n = self.byte()? as usize;
                Value::Str(self.string(n)?)
            }
            b'a' | b'A' | b'u' | b't' => {
                let n = self.len32()?;
                Value::Str(self.string(n)?)
            }
            b's' => {
                let n = self.len32()?;
                Value::Bytes(self.take(n)?.to_vec())
            }
            b')' => {
                let n = self.byte()? as usize;
                self.items(n, depth)?
            }
            b'(' | b'[' => {
                let n = self.len32()?;
                self.items(n, depth)?
            }
            b'{' => {
                let mut pairs = Vec::new();
                loop {
                    if self.data.get(self.pos) == Some(&b'0') {
                        self.pos += 1;
                        break;
                    }
                    let k = self.value(depth + 1)?;
                    let v = self.value(depth + 1)?;
                    pairs.push((k, v));
                }
                Value::Dict(pairs)
            }
            b'r' => {
                let i = self.u32()?;
                self.refs
                    .get(i as usize)
                    .cloned()
                    .flatten()
                    .ok_or(MarshalError::BadRef(i))?
            }
            other => return Err(MarshalError::Unsupported(other)),
        };
        if let Some(i) = slot {
            self.refs[i] = Some(v.clone());
        }
        Ok(v)
    }

    fn items(&mut self, n: usize, depth: usize) -> Result<Value, MarshalError> {
        let mut v = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            v.push(self.value(depth + 1)?);
        }
        Ok(Value::List(v))
    }

    /// Sign-and-count, then 15-bit little-endian digits.
    fn long(&mut self) -> Result<Value, MarshalError> {
        let n = self.u32()? as i32;
        let count = n.unsigned_abs() as usize;
        if count > 9 {
            return Err(MarshalError::IntRange);
        }
        let mut acc: u128 = 0;
        for i in 0..count {
            let b = self.take(2)?;
            let d = u128::from(u16::from_le_bytes([b[0], b[1]]) & 0x7fff);
            let shift = 15 * i as u32;
            if shift + 15 > 128 && d >> (128 - shift) != 0 {
                return Err(MarshalError::IntRange);
            }
            acc |= d << shift;
        }
        if n >= 0 && acc > i128::MAX as u128 {
            // W3C trace ids use all 128 bits.
            return Ok(Value::UInt(acc));
        }
        let v = i128::try_from(acc).map_err(|_| MarshalError::IntRange)?;
        Ok(Value::Int(if n < 0 { -v } else { v }))
    }
}

impl Value {
    pub fn as_u128(&self) -> Option<u128> {
        match self {
            Value::Int(i) => u128::try_from(*i).ok(),
            Value::UInt(u) => Some(*u),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_python_writes() {
        // marshal.dumps([None, True, 7, -3, 2**64 + 5, 1.5, "hé", b"x", {"k": "v"}, "k", (1,)], 4)
        // from CPython 3.12 (the repeated "k" is a back-reference).
        let data: &[u8] = b"[\x0b\x00\x00\x00NT\xe9\x07\x00\x00\x00\xe9\xfd\xff\xff\xff\xec\x05\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00\x10\x00\xe7\x00\x00\x00\x00\x00\x00\xf8?\xf5\x03\x00\x00\x00h\xc3\xa9\xf3\x01\x00\x00\x00x{\xda\x01k\xda\x01v0r\x06\x00\x00\x00\xa9\x01\xe9\x01\x00\x00\x00";
        let v = loads(data).expect("decodes");
        let Value::List(items) = v else {
            panic!("not a list")
        };
        assert_eq!(items[0], Value::None);
        assert_eq!(items[1], Value::Bool(true));
        assert_eq!(items[2], Value::Int(7));
        assert_eq!(items[3], Value::Int(-3));
        assert_eq!(items[4], Value::Int((1i128 << 64) + 5));
        assert_eq!(items[5], Value::Float(1.5));
        assert_eq!(items[6], Value::Str("hé".into()));
        assert_eq!(items[7], Value::Bytes(b"x".to_vec()));
        assert_eq!(
            items[8],
            Value::Dict(vec![(Value::Str("k".into()), Value::Str("v".into()))])
        );
        assert_eq!(items[9], Value::Str("k".into()));
        assert_eq!(items[10], Value::List(vec![Value::Int(1)]));
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(loads(b""), Err(MarshalError::Truncated));
        assert_eq!(loads(b"c"), Err(MarshalError::Unsupported(b'c')));
        assert_eq!(loads(b"[\xff\xff\xff\x7f"), Err(MarshalError::Truncated));
        assert_eq!(loads(b"r\x05\x00\x00\x00"), Err(MarshalError::BadRef(5)));
        let deep = [b')', 1].repeat(100);
        assert_eq!(loads(&deep), Err(MarshalError::TooDeep));
    }
}
