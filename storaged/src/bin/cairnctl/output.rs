//! How cairnctl prints: the `--output` format (a table for people, JSON for scripts)
//! and byte sizes in binary units.

use clap::ValueEnum;

/// The `--output`/`-o` format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

impl Output {
    /// Prints a command's outcome: `json` with `-o json`, else the `table` line.
    pub fn print(self, json: serde_json::Value, table: impl std::fmt::Display) {
        match self {
            Output::Json => println!("{json}"),
            Output::Table => println!("{table}"),
        }
    }
}

/// Prints a JSON array of `items`, each rendered by `to_json`.
pub fn print_json_array<T>(items: &[T], to_json: impl Fn(&T) -> serde_json::Value) {
    println!(
        "{}",
        serde_json::Value::Array(items.iter().map(to_json).collect())
    );
}

/// `b` bytes in binary units with one decimal (`1.5GiB`), or plain bytes below 1 KiB.
pub fn human(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", U[i])
    }
}
