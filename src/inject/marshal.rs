//! Reading the helpers' replies, which come in CPython's `marshal` format (version 2).
//!
//! Why marshal and not JSON: `marshal` is built into every interpreter, so the reply costs the
//! target no import. Importing `json` (a handful of files) in a target whose other threads hold the
//! GIL took up to 1.9 s on this machine, because every file operation of an import gives the GIL
//! away and waits to get it back. Only what the helpers send is read: None, booleans, ints, floats,
//! strings, bytes, tuples, lists, sets and dicts.

use serde_json::{Map, Number, Value};

/// Why a reply could not be read.
#[derive(Debug, PartialEq, Eq)]
pub struct MarshalError(pub String);

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
    /// Interned strings, for Python 2's back references ('R').
    interned: Vec<String>,
    depth: usize,
}

/// Nesting deeper than this is refused (a reply is a few levels deep).
const MAX_DEPTH: usize = 64;

impl<'a> Reader<'a> {
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

    fn i32(&mut self) -> Result<i32, MarshalError> {
        Ok(i32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn length(&mut self) -> Result<usize, MarshalError> {
        let n = self.i32()?;
        let n = usize::try_from(n).map_err(|_| MarshalError(format!("negative length {n}")))?;
        if n > self.data.len() - self.at {
            return Err(MarshalError(format!("a length of {n} runs past the end")));
        }
        Ok(n)
    }

    fn text(&mut self) -> Result<String, MarshalError> {
        let n = self.length()?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    fn items(&mut self, n: usize) -> Result<Value, MarshalError> {
        let mut items = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            items.push(self.value()?);
        }
        Ok(Value::Array(items))
    }

    fn value(&mut self) -> Result<Value, MarshalError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(MarshalError("nested too deeply".into()));
        }
        let code = self.take(1)?[0] & 0x7f; // 0x80 marks objects that later ones may reference
        let value = match code {
            b'N' => Value::Null,
            b'T' => Value::Bool(true),
            b'F' => Value::Bool(false),
            b'i' => Value::from(self.i32()?),
            b'l' => self.long()?,
            b'g' => {
                let bits = f64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"));
                Number::from_f64(bits).map_or(Value::Null, Value::Number)
            }
            b'u' | b's' => Value::String(self.text()?),
            b't' => {
                let text = self.text()?;
                self.interned.push(text.clone());
                Value::String(text)
            }
            b'R' => {
                let index = self.i32()?;
                let text = usize::try_from(index)
                    .ok()
                    .and_then(|i| self.interned.get(i))
                    .ok_or_else(|| MarshalError(format!("no interned string {index}")))?;
                Value::String(text.clone())
            }
            b'(' | b'[' | b'<' | b'>' => {
                let n = self.length()?;
                self.items(n)?
            }
            b'{' => {
                let mut map = Map::new();
                loop {
                    if self.data.get(self.at) == Some(&b'0') {
                        self.at += 1;
                        break;
                    }
                    let key = match self.value()? {
                        Value::String(key) => key,
                        other => other.to_string(),
                    };
                    let value = self.value()?;
                    map.insert(key, value);
                }
                Value::Object(map)
            }
            other => {
                return Err(MarshalError(format!(
                    "type code {:?} at byte {} is not one a helper sends",
                    other as char,
                    self.at - 1
                )))
            }
        };
        self.depth -= 1;
        Ok(value)
    }

    /// A long: a signed count of 15-bit digits, least significant first.
    fn long(&mut self) -> Result<Value, MarshalError> {
        let n = self.i32()?;
        let digits = n.unsigned_abs() as usize;
        if digits > self.data.len() {
            return Err(MarshalError(format!(
                "a long of {digits} digits runs past the end"
            )));
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
        Ok(match (exact, n < 0) {
            (Some(v), false) => Value::from(v),
            (Some(v), true) if v <= i64::MAX as u64 => Value::from(-(v as i64)),
            _ => {
                let signed = if n < 0 { -magnitude } else { magnitude };
                Number::from_f64(signed).map_or(Value::Null, Value::Number)
            }
        })
    }
}

/// Reads one marshalled value (the whole input must be that value).
pub fn parse(data: &[u8]) -> Result<Value, MarshalError> {
    let mut reader = Reader {
        data,
        at: 0,
        interned: Vec::new(),
        depth: 0,
    };
    let value = reader.value()?;
    if reader.at != data.len() {
        return Err(MarshalError(format!(
            "{} bytes after the value",
            data.len() - reader.at
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `marshal.dumps(value, 2)` from the interpreters on this machine, compared with the JSON the
    /// same value gives.
    #[test]
    fn reads_what_every_python_here_writes() {
        let script = "import marshal, sys\n\
                      v = {'ok': {'a': [1, -2, 2**40, -2**70, 1.5, None, True, False, 'é', (3, 4)], \
                      'b': 'x' * 3, 'c': {'k': 'x'}}}\n\
                      sys.stdout.write(marshal.dumps(v, 2).hex() if hasattr(bytes, 'hex') else marshal.dumps(v, 2).encode('hex'))\n";
        let mut checked = 0;
        for python in [
            "/root/.pyenv/versions/3.12.1/bin/python",
            "/root/.pyenv/versions/3.8.18/bin/python",
            "/usr/bin/python3.11",
        ] {
            let Ok(out) = std::process::Command::new(python)
                .args(["-c", script])
                .output()
            else {
                continue;
            };
            let hex = String::from_utf8(out.stdout).unwrap();
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            let value = parse(&bytes).unwrap_or_else(|e| panic!("{python}: {e:?}"));
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
            checked += 1;
        }
        assert!(checked > 0, "no interpreter to produce marshal data");
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
