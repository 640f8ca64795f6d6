//! A pull reader for the subset of CPython's `marshal` format (version 4, CPython 3.4–3.13) that
//! span batches use: None, bools, ints, floats, str, bytes, tuples, lists, dicts and
//! back-references. `marshal.dumps` is 4–5× cheaper than `json.dumps` inside the traced process,
//! where every microsecond is paid by someone else's request. Anything else (code objects, sets,
//! complex) is an error: peers are outside input.
//!
//! The reader hands out one object header at a time, borrowing strings from the input, so a
//! decoder can build its own types in one pass with no intermediate tree. A back-reference is
//! followed by re-reading the referenced object where it was first written: that costs no memory,
//! and a budget bounds how much a hostile frame can make us re-read (refs to refs to lists...).

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
    #[error("back-references expand to more than {} MiB", MAX_EXPANSION >> 20)]
    Expansion,
}

const FLAG_REF: u8 = 0x80;
const MAX_DEPTH: usize = 32;
/// What a frame may add by back-references to what it costs read straight through; CPython itself
/// shares one object, we copy it each time.
const MAX_EXPANSION: usize = 64 << 20;
/// Budget charged per object header, so empty containers and small ints are not free.
const OBJECT_COST: usize = 16;
/// A reference slot whose container is still being read: a ref to it would be a cycle.
const PENDING: u32 = u32::MAX;

/// One object as the reader meets it. Containers are open: their items follow, and the `Open`
/// must go back to [`Reader::close`] once they are read.
#[derive(Debug, PartialEq)]
pub enum Head<'a> {
    None,
    Bool(bool),
    Int(i128),
    /// A non-negative int above `i128::MAX` (W3C trace ids use all 128 bits).
    UInt(u128),
    Float(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
    /// A tuple or list of this many items.
    Seq(usize, Open),
    /// Key, value pairs while [`Reader::dict_next`] says so.
    Dict(Open),
}

/// An open container's bookkeeping; must be given back to [`Reader::close`].
#[derive(Debug, PartialEq)]
#[must_use]
pub struct Open {
    /// The reference slot to complete, with the container's offset.
    slot: Option<(u32, u32)>,
    /// Where to continue once a container read through a back-reference is done.
    resume: Option<u32>,
}

pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of every object written with FLAG_REF, in the order marshal numbers them.
    refs: Vec<u32>,
    /// Non-zero while re-reading through a back-reference: those objects already have slots.
    replaying: u32,
    budget: usize,
}

impl<'a> Reader<'a> {
    /// Offsets are kept in 32 bits, as a frame's length prefix is: anything past 4 GiB reads as
    /// truncated.
    pub fn new(data: &'a [u8]) -> Self {
        let data = &data[..data.len().min(u32::MAX as usize)];
        Self {
            data,
            pos: 0,
            refs: Vec::new(),
            replaying: 0,
            budget: data
                .len()
                .saturating_mul(OBJECT_COST + 1)
                .saturating_add(MAX_EXPANSION),
        }
    }

    /// The next object's header, following back-references. `depth` is the container nesting.
    pub fn open(&mut self, depth: usize) -> Result<Head<'a>, MarshalError> {
        if depth > MAX_DEPTH {
            return Err(MarshalError::TooDeep);
        }
        self.charge(OBJECT_COST)?;
        let at = self.pos as u32;
        let code = self.byte()?;
        if code & !FLAG_REF == b'r' {
            return self.follow(depth);
        }
        // As CPython's reader: None and the bools take no slot even when flagged.
        let refable = !matches!(code & !FLAG_REF, b'N' | b'T' | b'F');
        let slot = (code & FLAG_REF != 0 && refable && self.replaying == 0).then(|| {
            self.refs.push(PENDING);
            (self.refs.len() as u32 - 1, at)
        });
        let head = self.body(code & !FLAG_REF, slot)?;
        if let (Some((i, at)), false) = (slot, matches!(head, Head::Seq(..) | Head::Dict(_))) {
            self.refs[i as usize] = at;
        }
        Ok(head)
    }

    /// Ends a container: its slot becomes referable, and a re-read one returns to where it was.
    pub fn close(&mut self, open: Open) {
        if let Some((i, at)) = open.slot {
            self.refs[i as usize] = at;
        }
        if let Some(resume) = open.resume {
            self.pos = resume as usize;
            self.replaying -= 1;
        }
    }

    /// Whether another key, value pair follows in the open dict (its end marker is consumed).
    pub fn dict_next(&mut self) -> Result<bool, MarshalError> {
        match self.data.get(self.pos) {
            Some(b'0') => {
                self.pos += 1;
                Ok(false)
            }
            Some(_) => Ok(true),
            None => Err(MarshalError::Truncated),
        }
    }

    /// Reads past one whole object.
    pub fn skip(&mut self, depth: usize) -> Result<(), MarshalError> {
        let head = self.open(depth)?;
        self.discard(head, depth)
    }

    /// Reads past what is left of an object whose header was just opened at `depth`.
    pub fn discard(&mut self, head: Head<'a>, depth: usize) -> Result<(), MarshalError> {
        match head {
            Head::Seq(n, open) => {
                for _ in 0..n {
                    self.skip(depth + 1)?;
                }
                self.close(open);
            }
            Head::Dict(open) => {
                while self.dict_next()? {
                    self.skip(depth + 1)?;
                    self.skip(depth + 1)?;
                }
                self.close(open);
            }
            _ => {}
        }
        Ok(())
    }

    fn follow(&mut self, depth: usize) -> Result<Head<'a>, MarshalError> {
        let i = self.u32()?;
        let at = match self.refs.get(i as usize) {
            Some(&at) if at != PENDING => at,
            _ => return Err(MarshalError::BadRef(i)),
        };
        let resume = self.pos;
        self.pos = at as usize;
        self.replaying += 1;
        // A slot never holds a reference, so this does not recurse further here.
        let mut head = self.open(depth)?;
        match &mut head {
            Head::Seq(_, open) | Head::Dict(open) => open.resume = Some(resume as u32),
            _ => {
                self.pos = resume;
                self.replaying -= 1;
            }
        }
        Ok(head)
    }

    fn body(&mut self, code: u8, slot: Option<(u32, u32)>) -> Result<Head<'a>, MarshalError> {
        let open = Open { slot, resume: None };
        Ok(match code {
            b'N' => Head::None,
            b'T' => Head::Bool(true),
            b'F' => Head::Bool(false),
            b'i' => Head::Int(i128::from(self.u32()? as i32)),
            b'l' => self.long()?,
            b'g' => Head::Float(f64::from_le_bytes(self.array()?)),
            b'z' | b'Z' => {
                let n = usize::from(self.byte()?);
                Head::Str(self.str(n)?)
            }
            b'a' | b'A' | b'u' | b't' => {
                let n = self.len32()?;
                Head::Str(self.str(n)?)
            }
            b's' => {
                let n = self.len32()?;
                Head::Bytes(self.take(n)?)
            }
            b')' => Head::Seq(usize::from(self.byte()?), open),
            b'(' | b'[' => Head::Seq(self.len32()?, open),
            b'{' => Head::Dict(open),
            other => return Err(MarshalError::Unsupported(other)),
        })
    }

    fn charge(&mut self, cost: usize) -> Result<(), MarshalError> {
        self.budget = self
            .budget
            .checked_sub(cost)
            .ok_or(MarshalError::Expansion)?;
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], MarshalError> {
        let end = self.pos.checked_add(n).ok_or(MarshalError::Truncated)?;
        let s = self
            .data
            .get(self.pos..end)
            .ok_or(MarshalError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MarshalError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn byte(&mut self) -> Result<u8, MarshalError> {
        let [b] = self.array()?;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, MarshalError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn len32(&mut self) -> Result<usize, MarshalError> {
        let n = self.u32()? as usize;
        // Every item or byte takes at least one byte of input: refuse before anyone allocates.
        if n > self.data.len() - self.pos {
            return Err(MarshalError::Truncated);
        }
        Ok(n)
    }

    fn str(&mut self, n: usize) -> Result<&'a str, MarshalError> {
        self.charge(n)?;
        std::str::from_utf8(self.take(n)?).map_err(|_| MarshalError::Utf8)
    }

    /// Sign-and-count, then 15-bit little-endian digits.
    fn long(&mut self) -> Result<Head<'a>, MarshalError> {
        let n = self.u32()? as i32;
        let count = n.unsigned_abs() as usize;
        if count > 9 {
            return Err(MarshalError::IntRange);
        }
        let mut acc: u128 = 0;
        for (i, d) in self.take(2 * count)?.chunks_exact(2).enumerate() {
            let d = u128::from(u16::from_le_bytes([d[0], d[1]]) & 0x7fff);
            let shift = 15 * i as u32;
            // Only a ninth digit can carry past 128 bits.
            if shift + 15 > 128 && d >> (128 - shift) != 0 {
                return Err(MarshalError::IntRange);
            }
            acc |= d << shift;
        }
        if n >= 0 && acc > i128::MAX as u128 {
            return Ok(Head::UInt(acc));
        }
        let v = i128::try_from(acc).map_err(|_| MarshalError::IntRange)?;
        Ok(Head::Int(if n < 0 { -v } else { v }))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The reader's view as a tree, for tests only.
    #[derive(Debug, Clone, PartialEq)]
    enum V {
        N,
        B(bool),
        I(i128),
        U(u128),
        F(f64),
        S(String),
        Y(Vec<u8>),
        L(Vec<V>),
        D(Vec<(V, V)>),
    }

    fn tree(r: &mut Reader<'_>, depth: usize) -> Result<V, MarshalError> {
        Ok(match r.open(depth)? {
            Head::None => V::N,
            Head::Bool(b) => V::B(b),
            Head::Int(i) => V::I(i),
            Head::UInt(u) => V::U(u),
            Head::Float(f) => V::F(f),
            Head::Str(s) => V::S(s.into()),
            Head::Bytes(b) => V::Y(b.into()),
            Head::Seq(n, open) => {
                let items = (0..n)
                    .map(|_| tree(r, depth + 1))
                    .collect::<Result<_, _>>()?;
                r.close(open);
                V::L(items)
            }
            Head::Dict(open) => {
                let mut pairs = Vec::new();
                while r.dict_next()? {
                    pairs.push((tree(r, depth + 1)?, tree(r, depth + 1)?));
                }
                r.close(open);
                V::D(pairs)
            }
        })
    }

    fn loads(data: &[u8]) -> Result<V, MarshalError> {
        tree(&mut Reader::new(data), 0)
    }

    /// Hand-written marshal for hostile and corner cases Python would not produce.
    pub(crate) struct W(pub Vec<u8>);

    impl W {
        pub fn new() -> Self {
            W(Vec::new())
        }
        pub fn code(&mut self, c: u8, flag: bool) -> &mut Self {
            self.0.push(if flag { c | FLAG_REF } else { c });
            self
        }
        pub fn u32(&mut self, n: u32) -> &mut Self {
            self.0.extend_from_slice(&n.to_le_bytes());
            self
        }
        pub fn seq(&mut self, n: u32, flag: bool) -> &mut Self {
            self.code(b'[', flag).u32(n)
        }
        pub fn int(&mut self, i: i32, flag: bool) -> &mut Self {
            self.code(b'i', flag).u32(i as u32)
        }
        pub fn str(&mut self, s: &str, flag: bool) -> &mut Self {
            self.code(b'u', flag).u32(s.len() as u32);
            self.0.extend_from_slice(s.as_bytes());
            self
        }
        pub fn r(&mut self, i: u32) -> &mut Self {
            self.code(b'r', false).u32(i)
        }
    }

    #[test]
    fn reads_what_python_writes() {
        // marshal.dumps([None, True, 7, -3, 2**64 + 5, 1.5, "hé", b"x", {"k": "v"}, "k", (1,)], 4)
        // from CPython 3.12 (the repeated "k" is a back-reference).
        let data: &[u8] = b"[\x0b\x00\x00\x00NT\xe9\x07\x00\x00\x00\xe9\xfd\xff\xff\xff\xec\x05\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00\x10\x00\xe7\x00\x00\x00\x00\x00\x00\xf8?\xf5\x03\x00\x00\x00h\xc3\xa9\xf3\x01\x00\x00\x00x{\xda\x01k\xda\x01v0r\x06\x00\x00\x00\xa9\x01\xe9\x01\x00\x00\x00";
        let V::L(items) = loads(data).expect("decodes") else {
            panic!("not a list")
        };
        assert_eq!(items[0], V::N);
        assert_eq!(items[1], V::B(true));
        assert_eq!(items[2], V::I(7));
        assert_eq!(items[3], V::I(-3));
        assert_eq!(items[4], V::I((1i128 << 64) + 5));
        assert_eq!(items[5], V::F(1.5));
        assert_eq!(items[6], V::S("hé".into()));
        assert_eq!(items[7], V::Y(b"x".to_vec()));
        assert_eq!(items[8], V::D(vec![(V::S("k".into()), V::S("v".into()))]));
        assert_eq!(items[9], V::S("k".into()));
        assert_eq!(items[10], V::L(vec![V::I(1)]));
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(loads(b""), Err(MarshalError::Truncated));
        assert_eq!(loads(b"c"), Err(MarshalError::Unsupported(b'c')));
        assert_eq!(loads(b"[\xff\xff\xff\x7f"), Err(MarshalError::Truncated));
        assert_eq!(loads(b"r\x05\x00\x00\x00"), Err(MarshalError::BadRef(5)));
        assert_eq!(loads(b"u\x02\x00\x00\x00\xff\xfe"), Err(MarshalError::Utf8));
        assert_eq!(loads(b"l\x0a\x00\x00\x00"), Err(MarshalError::IntRange));
        assert_eq!(loads(b"{"), Err(MarshalError::Truncated));
        let deep = [b')', 1].repeat(100);
        assert_eq!(loads(&deep), Err(MarshalError::TooDeep));
    }

    #[test]
    fn reads_128_bit_ints() {
        // marshal.dumps(2**128 - 1), marshal.dumps(-(2**127 - 1)), and 2**128 (out of range).
        let mut max = b"l\x09\x00\x00\x00".to_vec();
        max.extend([0xff, 0x7f].repeat(8));
        max.extend([0xff, 0x00]);
        assert_eq!(loads(&max), Ok(V::U(u128::MAX)));
        let mut neg = b"l\xf7\xff\xff\xff".to_vec();
        neg.extend([0xff, 0x7f].repeat(8));
        neg.extend([0x7f, 0x00]);
        assert_eq!(loads(&neg), Ok(V::I(-i128::MAX)));
        let mut over = b"l\x09\x00\x00\x00".to_vec();
        over.extend([0, 0].repeat(8));
        over.extend([0x00, 0x01]);
        assert_eq!(loads(&over), Err(MarshalError::IntRange));
    }

    #[test]
    fn follows_references_to_scalars_and_containers() {
        // [s0="key", l1=[s0, 5], r1, r0] : a ref to a finished list is read again in full.
        let mut w = W::new();
        w.seq(4, false)
            .str("key", true)
            .seq(2, true)
            .r(0)
            .int(5, false);
        w.r(1).r(0);
        let l = V::L(vec![V::S("key".into()), V::I(5)]);
        assert_eq!(
            loads(&w.0),
            Ok(V::L(vec![
                V::S("key".into()),
                l.clone(),
                l,
                V::S("key".into())
            ]))
        );
    }

    #[test]
    fn refs_inside_a_replayed_container_keep_their_numbers() {
        // [l0=[s1="a", s2="b"], r0, r2, s3="c", r3]: re-reading l0 must not number "a" and "b" again.
        let mut w = W::new();
        w.seq(5, false).seq(2, true).str("a", true).str("b", true);
        w.r(0).r(2).str("c", true).r(3);
        let ab = || V::L(vec![V::S("a".into()), V::S("b".into())]);
        assert_eq!(
            loads(&w.0),
            Ok(V::L(vec![
                ab(),
                ab(),
                V::S("b".into()),
                V::S("c".into()),
                V::S("c".into())
            ]))
        );
    }

    #[test]
    fn a_container_cannot_refer_to_itself() {
        let mut w = W::new();
        w.seq(1, true).r(0);
        assert_eq!(loads(&w.0), Err(MarshalError::BadRef(0)));
        // A dict that holds itself as a value.
        let mut w = W::new();
        w.code(b'{', true).str("k", false).r(0).code(b'0', false);
        assert_eq!(loads(&w.0), Err(MarshalError::BadRef(0)));
    }

    #[test]
    fn exponential_references_hit_the_budget() {
        // l0 = [big string]; l(k+1) = [r(k), r(k)] ...: each level doubles what a ref re-reads.
        let mut w = W::new();
        w.seq(31, false).seq(1, true).str(&"x".repeat(1000), false);
        for k in 0..30 {
            w.seq(2, true).r(k).r(k);
        }
        assert_eq!(loads(&w.0), Err(MarshalError::Expansion));
        // Depth is bounded through references too: [l0=[...]] nested by refs never exceeds it.
        let mut w = W::new();
        w.seq(40, false).seq(0, true);
        for k in 0..39 {
            w.seq(1, true).r(k);
        }
        assert_eq!(loads(&w.0), Err(MarshalError::TooDeep));
    }
}
