//! A JSON object written field by field, for the command line's `--format=json` (`client`,
//! `inspect`): no parser and no dependency, since the binary only ever writes JSON.

/// A JSON object being written; `finish` closes it.
pub struct Json {
    text: String,
}

impl Default for Json {
    fn default() -> Json {
        Json::new()
    }
}

impl Json {
    pub fn new() -> Json {
        Json { text: String::from("{") }
    }

    fn key(&mut self, key: &str) -> &mut Json {
        if self.text.len() > 1 {
            self.text.push(',');
        }
        string_push(&mut self.text, key);
        self.text.push(':');
        self
    }

    pub fn number(&mut self, key: &str, value: u64) -> &mut Json {
        self.key(key).text.push_str(&value.to_string());
        self
    }

    pub fn boolean(&mut self, key: &str, value: bool) -> &mut Json {
        self.key(key).text.push_str(if value { "true" } else { "false" });
        self
    }

    pub fn text(&mut self, key: &str, value: &str) -> &mut Json {
        string_push(&mut self.key(key).text, value);
        self
    }

    /// `value` as a string if it is UTF-8, else as hex under `KEY_hex`.
    pub fn bytes(&mut self, key: &str, value: &[u8]) -> &mut Json {
        match std::str::from_utf8(value) {
            Ok(text) => self.text(key, text),
            Err(_) => {
                let hex: String = value.iter().map(|byte| format!("{byte:02x}")).collect();
                self.text(&format!("{key}_hex"), &hex)
            }
        }
    }

    /// A nested object.
    pub fn object(&mut self, key: &str, value: Json) -> &mut Json {
        let value = value.finish();
        self.key(key).text.push_str(&value);
        self
    }

    /// An array of objects.
    pub fn objects(&mut self, key: &str, values: Vec<Json>) -> &mut Json {
        let values: Vec<String> = values.into_iter().map(Json::finish).collect();
        let array = format!("[{}]", values.join(","));
        self.key(key).text.push_str(&array);
        self
    }

    /// An array of strings.
    pub fn texts(&mut self, key: &str, values: &[String]) -> &mut Json {
        let mut array = String::from("[");
        for (index, value) in values.iter().enumerate() {
            array.push_str(if index == 0 { "" } else { "," });
            string_push(&mut array, value);
        }
        array.push(']');
        self.key(key).text.push_str(&array);
        self
    }

    pub fn finish(mut self) -> String {
        self.text.push('}');
        self.text
    }
}

/// Appends `text` as a JSON string: quoted, with quotes, backslashes and control characters
/// escaped.
fn string_push(out: &mut String, text: &str) {
    out.push('"');
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            character if character.is_control() => {
                out.push_str(&format!("\\u{:04x}", u32::from(character)));
            }
            character => out.push(character),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_escape_what_json_needs_and_nest() {
        // Goal: keys and strings are escaped (quote, backslash, control characters), bytes
        // that are not UTF-8 go out as hex under `KEY_hex`, and nested values are separated.
        let mut inner = Json::new();
        inner.number("n", 3).boolean("ok", true);
        let mut json = Json::new();
        json.text("a\"b", "x\\y\n").bytes("data", &[0xff, 0x00]).object("inner", inner);
        json.texts("list", &["p".to_string(), "q".to_string()]);
        json.objects("items", vec![Json::new(), Json::new()]);
        let expected = concat!(
            r#"{"a\"b":"x\\y\u000a","data_hex":"ff00","inner":{"n":3,"ok":true},"#,
            r#""list":["p","q"],"items":[{},{}]}"#
        );
        assert_eq!(json.finish(), expected);
    }
}
