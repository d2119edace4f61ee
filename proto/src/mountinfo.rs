//! Decoding of `/proc/self/mountinfo` fields, shared by the CSI node plugin (what is staged
//! where) and storaged's FUSE frontend (what it left mounted).

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`): a backslash and
/// three octal digits of at most `\377` become that byte; anything else is kept as it is.
pub fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b.get(i..i + 4) {
            Some([b'\\', d0 @ b'0'..=b'3', d1 @ b'0'..=b'7', d2 @ b'0'..=b'7']) => {
                out.push((d0 - b'0') * 64 + (d1 - b'0') * 8 + (d2 - b'0'));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn octal_escapes_are_decoded() {
        assert_eq!(unescape(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape(r"/t\011ab\012nl\134bs"), "/t\tab\nnl\\bs");
        assert_eq!(unescape(r"/end\040"), "/end ");
        assert_eq!(unescape(r"/plain"), "/plain");
    }

    #[test]
    fn what_is_not_an_escape_is_kept() {
        assert_eq!(unescape(r"/x\\"), r"/x\\");
        assert_eq!(unescape(r"/short\04"), r"/short\04");
        assert_eq!(unescape(r"/not\08x"), r"/not\08x");
        // Above \377 is not a byte: kept as text, not wrapped around.
        assert_eq!(unescape(r"/big\777"), r"/big\777");
        assert_eq!(unescape("/é\\040"), "/é ");
    }
}
