//! CSV for spreadsheets: records written by the `csv` crate (quoting, embedded quotes and
//! line breaks), with text cells neutralised so that a cell from a user or a model cannot
//! become a formula when the file is opened in a spreadsheet.

/// One cell of a record.
#[derive(Debug, Clone, Copy)]
pub enum Cell<'a> {
    /// Text from anywhere: neutralised when it could start a formula.
    Text(&'a str),
    /// A number we produced: written as it is (a negative amount stays a number).
    Int(i64),
}

/// Text beginning with `=`, `+`, `-`, `@`, a tab or a carriage return is read as a formula
/// (or, for the last two, hides one) by spreadsheet programs; such text gets a leading
/// apostrophe, which they show as text and do not evaluate.
pub fn neutralise(text: &str) -> std::borrow::Cow<'_, str> {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}").into()
    } else {
        text.into()
    }
}

/// One record with its line end (`\n`), ready to append to a file or a stream.
pub fn record(cells: &[Cell<'_>]) -> Vec<u8> {
    let mut w = ::csv::WriterBuilder::new()
        .terminator(::csv::Terminator::Any(b'\n'))
        .from_writer(Vec::with_capacity(64));
    let fields: Vec<std::borrow::Cow<'_, str>> = cells
        .iter()
        .map(|c| match c {
            Cell::Text(t) => neutralise(t),
            Cell::Int(n) => n.to_string().into(),
        })
        .collect();
    // Writing to memory cannot fail; the fields are all strings.
    w.write_record(fields.iter().map(|f| f.as_bytes()))
        .expect("a CSV record in memory");
    w.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Vec<Vec<String>> {
        ::csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(bytes)
            .records()
            .map(|r| r.expect("record").iter().map(str::to_owned).collect())
            .collect()
    }

    #[test]
    fn hostile_cells_are_text_and_survive_a_round_trip() {
        let hostile = [
            "=HYPERLINK(\"http://x\",\"y\")",
            "+1+1",
            "-2+3",
            "@SUM(A1:A2)",
            "\t=1",
            "\r=1",
            "a,b",
            "line\nbreak \"quoted\"",
            "plain",
            "",
        ];
        let mut bytes = Vec::new();
        for h in hostile {
            bytes.extend(record(&[Cell::Text(h), Cell::Int(-5)]));
        }
        let rows = read(&bytes);
        assert_eq!(rows.len(), hostile.len());
        for (row, h) in rows.iter().zip(hostile) {
            assert_eq!(row[1], "-5", "numbers stay numbers");
            let cell = &row[0];
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "{cell:?} could run as a formula"
            );
            assert_eq!(cell.trim_start_matches('\''), h, "the text itself is kept");
        }
    }
}
