//! Reading the helpers' replies, which come in CPython's `marshal` format (version 4 from Python
//! 3.4 on, version 2 from 2.7).
//!
//! Why marshal and not JSON: `marshal` is built into every interpreter, so the reply costs the
//! target no import. Importing `json` (a handful of files) in a target whose other threads hold the
//! GIL took up to 1.9 s on this machine, because every file operation of an import gives the GIL
//! away and waits to get it back. And `marshal.dumps` of tracemalloc's raw traces is one C call:
//! version 3+ writes each shared object (a traceback, a file name) once and refers back to it, so
//! a million traces take about 22 bytes each. Only what the helpers send is read: None, booleans,
//! ints, floats, strings, bytes, tuples, lists, sets, dicts and back references.
//!
//! [`Reader`] is a pull reader: a large list (the traces) can be visited item by item and
//! aggregated without building it whole; [`parse`] reads a whole reply into JSON.

use std::rc::Rc;

use serde_json::{Map, Number, Value};

/// Why a reply could not be read.
#[derive(Debug, PartialEq, Eq)]
pub struct MarshalError(pub String);

/// One value read. Clones are cheap: what a back reference shares is shared here too.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    None,
    Bool(bool),
    Int(i64),
    /// A float, or an int too large for i64 (approximated).
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    /// A tuple, list, set or frozenset.
    Seq(Rc<[Object]>),
    Dict(Rc<[(Object, Object)]>),
}

impl Object {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Object::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&Rc<str>> {
        match self {
            Object::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Object]> {
        match self {
            Object::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// The same value as JSON (dict keys that are not strings are written as JSON text; bytes
    /// are decoded as UTF-8, lossily).
    pub fn to_json(&self) -> Value {
        match self {
            Object::None => Value::Null,
            Object::Bool(b) => Value::Bool(*b),
            Object::Int(n) => Value::from(*n),
            Object::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Object::Str(s) => Value::String(s.to_string()),
            Object::Bytes(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
            Object::Seq(items) => Value::Array(items.iter().map(Object::to_json).collect()),
            Object::Dict(entries) => {
                let mut map = Map::new();
                for (key, value) in entries.iter() {
                    let key = match key.to_json() {
                        Value::String(key) => key,
                        other => other.to_string(),
                    };
                    map.insert(key, value.to_json());
                }
                Value::Object(map)
            }
        }
    }
}

/// Marks an object that later ones may refer back to (version 3+).
const FLAG_REF: u8 = 0x80;

/// Nesting deeper than this is refused (a reply is a few levels deep).
const MAX_DEPTH: usize = 64;

/// A pull reader over one marshalled value.
pub struct Reader<'a> {
    data: &'a [u8],
    at: usize,
    /// Objects flagged for back references, in the order their type codes appear (None while a
    /// container is still being read: a reference to it then is refused).
    refs: Vec<Option<Object>>,
    /// Interned strings, for Python 2's back references ('R').
    interned: Vec<Rc<str>>,
    depth: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader {
            data,
            at: 0,
            refs: Vec::new(),
            interned: Vec::new(),
            depth: 0,
        }
    }

    fn error<T>(&self, what: impl std::fmt::Display) -> Result<T, MarshalError> {
        Err(MarshalError(format!("{what} at byte {}", self.at)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], MarshalError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| MarshalError(format!("cut short at byte {}", self.at)))?;
        let slice = &self.data[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn byte(&mut self) -> Result<u8, MarshalError> {
        Ok(self.take(1)?[0])
    }

    fn i32(&mut self) -> Result<i32, MarshalError> {
        Ok(i32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    /// A count of items or bytes that must fit in what is left (each item takes a byte at least).
    fn checked_length(&self, n: usize) -> Result<usize, MarshalError> {
        if n > self.data.len() - self.at {
            return self.error(format!("a length of {n} runs past the end"));
        }
        Ok(n)
    }

    fn length(&mut self) -> Result<usize, MarshalError> {
        let n = self.i32()?;
        let n = usize::try_from(n).map_err(|_| MarshalError(format!("negative length {n}")))?;
        self.checked_length(n)
    }

    fn short_length(&mut self) -> Result<usize, MarshalError> {
        let n = self.byte()? as usize;
        self.checked_length(n)
    }

    fn text(&mut self, n: usize) -> Result<Rc<str>, MarshalError> {
        Ok(Rc::from(String::from_utf8_lossy(self.take(n)?).as_ref()))
    }

    /// The next type code, and a reference slot reserved for it if it is flagged.
    fn type_code(&mut self) -> Result<(u8, Option<usize>), MarshalError> {
        let byte = self.byte()?;
        let code = byte & !FLAG_REF;
        let slot = (byte & FLAG_REF != 0 && code != b'r').then(|| {
            self.refs.push(None);
            self.refs.len() - 1
        });
        Ok((code, slot))
    }

    fn enter(&mut self) -> Result<(), MarshalError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.error("nested too deeply");
        }
        Ok(())
    }

    /// Reads the next value whole.
    pub fn object(&mut self) -> Result<Object, MarshalError> {
        self.enter()?;
        let (code, slot) = self.type_code()?;
        let object = match code {
            b'N' => Object::None,
            b'T' => Object::Bool(true),
            b'F' => Object::Bool(false),
            b'i' => Object::Int(self.i32()?.into()),
            b'l' => self.long()?,
            b'g' => Object::Float(f64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            b's' => {
                let n = self.length()?;
                Object::Bytes(Rc::from(self.take(n)?))
            }
            b'u' | b'a' | b'A' | b't' => {
                let n = self.length()?;
                let text = self.text(n)?;
                if code == b't' {
                    self.interned.push(text.clone());
                }
                Object::Str(text)
            }
            b'z' | b'Z' => {
                let n = self.short_length()?;
                Object::Str(self.text(n)?)
            }
            b'R' => {
                let index = self.i32()?;
                match usize::try_from(index)
                    .ok()
                    .and_then(|i| self.interned.get(i))
                {
                    Some(text) => Object::Str(text.clone()),
                    None => return self.error(format!("no interned string {index}")),
                }
            }
            b'r' => {
                let index = self.i32()?;
                match usize::try_from(index).ok().and_then(|i| self.refs.get(i)) {
                    Some(Some(object)) => object.clone(),
                    Some(None) => return self.error(format!("reference {index} to itself")),
                    None => return self.error(format!("no object {index} to refer to")),
                }
            }
            b'(' | b'[' | b'<' | b'>' | b')' => {
                let n = if code == b')' {
                    self.short_length()?
                } else {
                    self.length()?
                };
                let mut items = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    items.push(self.object()?);
                }
                Object::Seq(items.into())
            }
            b'{' => {
                let mut entries = Vec::new();
                while !self.at_dict_end() {
                    let key = self.object()?;
                    entries.push((key, self.object()?));
                }
                Object::Dict(entries.into())
            }
            other => {
                self.at -= 1;
                return self.error(format!(
                    "type code {:?} is not one a helper sends",
                    other as char
                ));
            }
        };
        if let Some(slot) = slot {
            self.refs[slot] = Some(object.clone());
        }
        self.depth -= 1;
        Ok(object)
    }

    /// True (and the end marker taken) at the end of a dict.
    fn at_dict_end(&mut self) -> bool {
        if self.data.get(self.at) == Some(&b'0') {
            self.at += 1;
            return true;
        }
        false
    }

    /// Visits a tuple, list or set item by item without keeping it: `each` must read one value.
    /// Returns the number of items.
    pub fn sequence(
        &mut self,
        mut each: impl FnMut(&mut Self) -> Result<(), MarshalError>,
    ) -> Result<usize, MarshalError> {
        self.enter()?;
        let (code, slot) = self.type_code()?;
        let n = match code {
            b'(' | b'[' | b'<' | b'>' => self.length()?,
            b')' => self.short_length()?,
            other => {
                return self.error(format!(
                    "expected a list, found type code {:?}",
                    other as char
                ))
            }
        };
        for _ in 0..n {
            each(self)?;
        }
        // Nothing refers back to a visited container; the slot keeps the numbering right.
        if let Some(slot) = slot {
            self.refs[slot] = Some(Object::None);
        }
        self.depth -= 1;
        Ok(n)
    }

    /// Visits a dict entry by entry: `each` gets the key and must read the value.
    pub fn dict(
        &mut self,
        mut each: impl FnMut(&mut Self, Object) -> Result<(), MarshalError>,
    ) -> Result<(), MarshalError> {
        self.enter()?;
        let (code, slot) = self.type_code()?;
        if code != b'{' {
            return self.error(format!(
                "expected a dict, found type code {:?}",
                code as char
            ));
        }
        while !self.at_dict_end() {
            let key = self.object()?;
            each(self, key)?;
        }
        if let Some(slot) = slot {
            self.refs[slot] = Some(Object::None);
        }
        self.depth -= 1;
        Ok(())
    }

    /// Fails unless the whole input was read.
    pub fn finish(&self) -> Result<(), MarshalError> {
        if self.at != self.data.len() {
            return Err(MarshalError(format!(
                "{} bytes after the value",
                self.data.len() - self.at
            )));
        }
        Ok(())
    }

    /// A long: a signed count of 15-bit digits, least significant first.
    fn long(&mut self) -> Result<Object, MarshalError> {
        let n = self.i32()?;
        let digits = n.unsigned_abs() as usize;
        if digits > self.data.len() {
            return self.error(format!("a long of {digits} digits runs past the end"));
        }
        let mut magnitude: f64 = 0.0;
        let mut exact: Option<u64> = Some(0);
        for i in 0..digits {
            let digit = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")) as u64;
            magnitude += digit as f64 * 2f64.powi(15 * i as i32);
            exact = exact.and_then(|acc| {
                let shifted = digit
                    .checked_shl(15 * i as u32)
                    .filter(|s| s >> (15 * i) == digit)?;
                acc.checked_add(shifted)
            });
        }
        let exact = exact.and_then(|v| i64::try_from(v).ok());
        Ok(match (exact, n < 0) {
            (Some(v), false) => Object::Int(v),
            (Some(v), true) => Object::Int(-v),
            (None, negative) => Object::Float(if negative { -magnitude } else { magnitude }),
        })
    }
}

/// Reads one marshalled value (the whole input must be that value) as JSON.
pub fn parse(data: &[u8]) -> Result<Value, MarshalError> {
    let mut reader = Reader::new(data);
    let value = reader.object()?;
    reader.finish()?;
    Ok(value.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `marshal.dumps(value, 2)` and `marshal.dumps(value, 4)` (back references to shared objects)
    /// from the interpreters on this machine, compared with the JSON the same value gives.
    #[test]
    fn reads_what_every_python_here_writes() {
        let script = "import marshal, sys\n\
                      shared = ('shared', 12345, 'x' * 300)\n\
                      v = {'ok': {'a': [1, -2, 2**40, -2**70, 1.5, None, True, False, 'é', (3, 4)], \
                      'b': 'x' * 3, 'c': {'k': 'x'}, 'd': [shared, shared, b'by'], 'e': ()}}\n\
                      sys.stdout.write(marshal.dumps(v, int(sys.argv[1])).hex())\n";
        let mut checked = 0;
        for python in [
            "/root/.pyenv/versions/3.12.1/bin/python",
            "/root/.pyenv/versions/3.8.18/bin/python",
            "/usr/bin/python3.11",
        ] {
            for version in ["2", "4"] {
                let Ok(out) = std::process::Command::new(python)
                    .args(["-c", script, version])
                    .output()
                else {
                    continue;
                };
                let hex = String::from_utf8(out.stdout).unwrap();
                let bytes: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                if version == "4" {
                    assert!(bytes.contains(&b'r'), "{python}: no back reference written");
                }
                let value = parse(&bytes).unwrap_or_else(|e| panic!("{python} v{version}: {e:?}"));
                let a = &value["ok"]["a"];
                assert_eq!(a[0], 1);
                assert_eq!(a[1], -2);
                assert_eq!(a[2], 1u64 << 40);
                assert!((a[3].as_f64().unwrap() + 2f64.powi(70)).abs() < 1e6);
                assert_eq!(a[4], 1.5);
                assert_eq!(a[5], Value::Null);
                assert_eq!(
                    (a[6].clone(), a[7].clone()),
                    (Value::Bool(true), Value::Bool(false))
                );
                assert_eq!(a[8], "é");
                assert_eq!(a[9], serde_json::json!([3, 4]));
                assert_eq!(value["ok"]["b"], "xxx");
                assert_eq!(value["ok"]["c"]["k"], "x");
                let shared = serde_json::json!(["shared", 12345, "x".repeat(300)]);
                assert_eq!(value["ok"]["d"], serde_json::json!([shared, shared, "by"]));
                assert_eq!(value["ok"]["e"], serde_json::json!([]));
                checked += 1;
            }
        }
        assert!(checked >= 2, "no interpreter to produce marshal data");
    }

    /// A large list visited item by item, its shared items read through back references.
    #[test]
    fn a_list_can_be_visited_item_by_item() {
        // [('f', 1), r0-of-the-tuple, 7] with the tuple flagged: 0x80|')' then a ref 'r' to it.
        let mut data = vec![b'[', 3, 0, 0, 0];
        data.extend_from_slice(&[b')' | 0x80, 2, b'z', 1, b'f', b'i', 1, 0, 0, 0]);
        data.extend_from_slice(&[b'r', 0, 0, 0, 0]);
        data.extend_from_slice(&[b'i', 7, 0, 0, 0]);
        let mut reader = Reader::new(&data);
        let mut seen = Vec::new();
        let n = reader
            .sequence(|r| {
                seen.push(r.object()?);
                Ok(())
            })
            .unwrap();
        reader.finish().unwrap();
        assert_eq!(n, 3);
        assert_eq!(seen[0], seen[1]);
        assert_eq!(seen[2], Object::Int(7));
        assert_eq!(seen[0].as_seq().unwrap()[0].as_str().unwrap().as_ref(), "f");
        // A reference to a container still being read, and one to nothing, are refused.
        assert!(parse(&[b'(' | 0x80, 1, 0, 0, 0, b'r', 0, 0, 0, 0]).is_err());
        assert!(parse(&[b'r', 5, 0, 0, 0]).is_err());
    }

    #[test]
    fn refuses_what_is_not_a_reply() {
        assert!(parse(b"").is_err());
        assert!(parse(b"i\x01\x00").is_err());
        assert!(parse(b"u\xff\xff\xff\x7fabc").is_err());
        assert!(parse(b"c").is_err());
        assert!(parse(&[b'['; 1000]).is_err());
        assert!(parse(b"NN").is_err());
        assert_eq!(parse(b"N").unwrap(), Value::Null);
    }
}
