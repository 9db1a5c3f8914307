//! pgoutput's change messages (logical replication protocol version 1, text
//! values), decoded from the payload of a stream's `XLogData`.
//!
//! Only what the capturer needs: `Relation` (a table's id, name and
//! columns, sent before the first change of a table and after each change of
//! its definition), `Insert`, `Update` and `Delete` with their tuples. Begin
//! and Commit come already decoded from the replication client; `Type`,
//! `Origin`, `Truncate` and logical messages are recognised and ignored.
//! Malformed input is an error, never a panic.

/// A table as the stream describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relation {
    pub id: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<String>,
    /// Each column's type oid.
    pub types: Vec<u32>,
}

/// One column's value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    /// An unchanged TOASTed value: not sent (take it from the old row).
    Unchanged,
    /// The value in the type's text form.
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Value>,
    },
    /// `old` is the whole old row with `REPLICA IDENTITY FULL`, its key with
    /// a key change, absent otherwise.
    Update {
        relation: u32,
        old: Option<Vec<Value>>,
        new: Vec<Value>,
    },
    Delete {
        relation: u32,
        old: Vec<Value>,
    },
    /// Begin, Commit, Type, Origin, Truncate, logical messages.
    Ignored(u8),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum DecodeError {
    #[error("pgoutput message ends early")]
    Short,
    #[error("pgoutput message of unknown kind {0:#04x}")]
    UnknownKind(u8),
    #[error("pgoutput tuple value of unknown kind {0:#04x}")]
    UnknownValue(u8),
    #[error("pgoutput {0} without its tuple")]
    NoTuple(&'static str),
    #[error("pgoutput string is not UTF-8 or not terminated")]
    BadString,
}

/// Decodes one message.
pub(crate) fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { buf };
    let kind = r.u8()?;
    match kind {
        b'R' => {
            let id = r.u32()?;
            let schema = r.cstr()?;
            let name = r.cstr()?;
            let _replica_identity = r.u8()?;
            let n = r.u16()?;
            let mut columns = Vec::with_capacity(usize::from(n).min(r.buf.len()));
            let mut types = Vec::with_capacity(usize::from(n).min(r.buf.len()));
            for _ in 0..n {
                let _flags = r.u8()?;
                columns.push(r.cstr()?);
                types.push(r.u32()?);
                let _typmod = r.u32()?;
            }
            Ok(Message::Relation(Relation {
                id,
                schema,
                name,
                columns,
                types,
            }))
        }
        b'I' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'N' => Ok(Message::Insert {
                    relation,
                    new: r.tuple()?,
                }),
                _ => Err(DecodeError::NoTuple("insert")),
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut old = None;
            let mut tag = r.u8()?;
            if tag == b'K' || tag == b'O' {
                old = Some(r.tuple()?);
                tag = r.u8()?;
            }
            if tag != b'N' {
                return Err(DecodeError::NoTuple("update"));
            }
            Ok(Message::Update {
                relation,
                old,
                new: r.tuple()?,
            })
        }
        b'D' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'K' | b'O' => Ok(Message::Delete {
                    relation,
                    old: r.tuple()?,
                }),
                _ => Err(DecodeError::NoTuple("delete")),
            }
        }
        b'B' | b'C' | b'Y' | b'O' | b'T' | b'M' => Ok(Message::Ignored(kind)),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Short);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn cstr(&mut self) -> Result<String, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::BadString)?;
        let s = std::str::from_utf8(self.take(end)?).map_err(|_| DecodeError::BadString)?;
        self.take(1)?;
        Ok(s.to_string())
    }

    fn tuple(&mut self) -> Result<Vec<Value>, DecodeError> {
        let n = self.u16()?;
        let mut values = Vec::with_capacity(usize::from(n).min(self.buf.len()));
        for _ in 0..n {
            values.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    let bytes = self.take(len)?;
                    Value::Text(
                        std::str::from_utf8(bytes)
                            .map_err(|_| DecodeError::BadString)?
                            .to_string(),
                    )
                }
                other => return Err(DecodeError::UnknownValue(other)),
            });
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn tuple(out: &mut Vec<u8>, values: &[Option<&str>]) {
        out.extend_from_slice(&(values.len() as u16).to_be_bytes());
        for v in values {
            match v {
                None => out.push(b'n'),
                Some(s) => {
                    out.push(b't');
                    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
    }

    #[test]
    fn a_relation_names_its_columns() {
        let mut m = vec![b'R'];
        m.extend_from_slice(&16384u32.to_be_bytes());
        cstr(&mut m, "market");
        cstr(&mut m, "products");
        m.push(b'f');
        m.extend_from_slice(&2u16.to_be_bytes());
        for (name, oid) in [("id", 20u32), ("quantity", 1700)] {
            m.push(1);
            cstr(&mut m, name);
            m.extend_from_slice(&oid.to_be_bytes());
            m.extend_from_slice(&(-1i32).to_be_bytes());
        }
        assert_eq!(
            decode(&m),
            Ok(Message::Relation(Relation {
                id: 16384,
                schema: "market".into(),
                name: "products".into(),
                columns: vec!["id".into(), "quantity".into()],
                types: vec![20, 1700],
            }))
        );
    }

    #[test]
    fn an_update_with_its_old_row_and_a_delete() {
        let mut m = vec![b'U'];
        m.extend_from_slice(&7u32.to_be_bytes());
        m.push(b'O');
        tuple(&mut m, &[Some("1"), Some("10")]);
        m.push(b'N');
        tuple(&mut m, &[Some("1"), None]);
        assert_eq!(
            decode(&m),
            Ok(Message::Update {
                relation: 7,
                old: Some(vec![Value::Text("1".into()), Value::Text("10".into())]),
                new: vec![Value::Text("1".into()), Value::Null],
            })
        );
        let mut d = vec![b'D'];
        d.extend_from_slice(&7u32.to_be_bytes());
        d.push(b'O');
        tuple(&mut d, &[Some("é")]);
        assert_eq!(
            decode(&d),
            Ok(Message::Delete {
                relation: 7,
                old: vec![Value::Text("é".into())],
            })
        );
    }

    #[test]
    fn an_unchanged_toasted_value_is_told_apart() {
        let mut m = vec![b'U'];
        m.extend_from_slice(&7u32.to_be_bytes());
        m.push(b'N');
        m.extend_from_slice(&2u16.to_be_bytes());
        m.push(b'u');
        m.push(b'n');
        assert_eq!(
            decode(&m),
            Ok(Message::Update {
                relation: 7,
                old: None,
                new: vec![Value::Unchanged, Value::Null],
            })
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert_eq!(decode(&[]), Err(DecodeError::Short));
        assert_eq!(decode(b"Z"), Err(DecodeError::UnknownKind(b'Z')));
        assert_eq!(decode(b"I\0\0\0\x07X"), Err(DecodeError::NoTuple("insert")));
        // a length past the end, a value kind that does not exist, no NUL
        assert_eq!(
            decode(b"I\0\0\0\x07N\0\x01t\0\0\0\x09ab"),
            Err(DecodeError::Short)
        );
        assert_eq!(
            decode(b"I\0\0\0\x07N\0\x01q"),
            Err(DecodeError::UnknownValue(b'q'))
        );
        assert_eq!(decode(b"R\0\0\0\x01mark"), Err(DecodeError::BadString));
        // a huge column count with nothing behind it
        assert_eq!(decode(b"I\0\0\0\x07N\xff\xff"), Err(DecodeError::Short));
        for kind in [b'B', b'C', b'Y', b'O', b'T', b'M'] {
            assert_eq!(decode(&[kind]), Ok(Message::Ignored(kind)));
        }
    }
}
