//! `--plot FILE`: an SVG of each workload's operation latency over the run, on a log scale, with
//! every fault's window shaded and labelled (hand-written SVG, one `rect.fault` per fault).

use std::fmt::Write as _;

use crate::history::{Op, Outcome};
use crate::nemesis::FaultRecord;
use crate::workload::block::FINAL_READER;
use crate::workload::fs::Ack;

const WIDTH: f64 = 1200.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
/// The lowest latency drawn (ms): faster operations sit on the axis.
const FLOOR_MS: f64 = 0.1;

/// One workload's points: (seconds into the run, latency in ms, completed).
struct Series {
    name: &'static str,
    colour: &'static str,
    points: Vec<(f64, f64, bool)>,
}

/// The SVG text: a point per operation (block: each completed read or write, unknown outcomes
/// as crosses on the top edge; fs: each acknowledged write with its sync), bucketed per pixel
/// column as a min–max bar with a dot at the max, and one shaded `rect class="fault"` per fault.
pub fn svg(history: &[Op], fs_acks: &[Ack], faults: &[FaultRecord], title: &str) -> String {
    let windows: Vec<Window> = faults
        .iter()
        .map(|f| Window {
            label: format!("{} {:?}", f.kind.name(), f.nodes),
            start: f.start,
            end: f.end,
        })
        .collect();
    svg_windows(history, fs_acks, &windows, title)
}

/// A shaded fault window: its label and its start and end on the run's clock (ns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub label: String,
    pub start: u64,
    pub end: u64,
}

/// `svg` with the fault windows given as labels and times (faults of other nemeses, such as
/// the harness's whole-node faults).
pub fn svg_windows(history: &[Op], fs_acks: &[Ack], faults: &[Window], title: &str) -> String {
    let s = |ns: u64| ns as f64 / 1e9;
    let block = Series {
        name: "block",
        colour: "#1f77b4",
        points: history
            .iter()
            .filter(|op| op.client != FINAL_READER)
            .map(|op| match (op.outcome, op.complete) {
                (Outcome::Unknown, _) | (_, None) => (s(op.invoke), f64::INFINITY, false),
                (_, Some(c)) => (s(op.invoke), c.saturating_sub(op.invoke) as f64 / 1e6, true),
            })
            .collect(),
    };
    let fs = Series {
        name: "fs",
        colour: "#2ca02c",
        points: fs_acks
            .iter()
            .map(|a| (s(a.at), a.latency_ns as f64 / 1e6, true))
            .collect(),
    };
    let series: Vec<Series> = [block, fs]
        .into_iter()
        .filter(|s| !s.points.is_empty())
        .collect();
    let end_s = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .chain(faults.iter().map(|f| s(f.end)))
        .fold(1.0_f64, f64::max);
    let max_ms = series
        .iter()
        .flat_map(|s| s.points.iter().filter(|p| p.2).map(|p| p.1))
        .fold(1000.0_f64, f64::max);
    let (lo, hi) = (FLOOR_MS.log10(), max_ms.log10().ceil());
    let (w, h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x = |t: f64| LEFT + (t / end_s).clamp(0.0, 1.0) * w;
    let y = |ms: f64| match ms.is_finite() {
        true => TOP + h - ((ms.max(FLOOR_MS).log10() - lo) / (hi - lo)).clamp(0.0, 1.0) * h,
        false => TOP,
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">
<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>
<text x="{LEFT}" y="18" font-size="14">{}</text>"#,
        escape(title)
    );
    for f in faults {
        let (x0, x1) = (x(s(f.start)), x(s(f.end)));
        let label = &f.label;
        let _ = writeln!(
            out,
            r##"<rect class="fault" x="{x0:.1}" y="{TOP}" width="{:.1}" height="{h}" fill="#d62728" fill-opacity="0.12"><title>{} {:.2}–{:.2} s</title></rect>
<text x="{:.1}" y="{:.1}" font-size="9" fill="#a00" transform="rotate(90 {:.1} {:.1})">{}</text>"##,
            (x1 - x0).max(1.0),
            escape(label),
            s(f.start),
            s(f.end),
            x0 + 2.0,
            TOP + 4.0,
            x0 + 2.0,
            TOP + 4.0,
            escape(label)
        );
    }
    // Axes: decades of latency, and about ten time ticks.
    let _ = writeln!(
        out,
        r##"<g stroke="#444"><line x1="{LEFT}" y1="{}" x2="{}" y2="{}"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}"/></g>"##,
        TOP + h,
        LEFT + w,
        TOP + h,
        TOP + h
    );
    let mut decade = lo;
    while decade <= hi {
        let ms = 10f64.powf(decade);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#ddd"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            y(ms),
            LEFT + w,
            LEFT - 6.0,
            y(ms) + 4.0,
            format_ms(ms)
        );
        decade += 1.0;
    }
    let step = nice_step(end_s / 10.0);
    let mut t = 0.0;
    while t <= end_s + 1e-9 {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{t:.0}</text>"#,
            x(t),
            TOP + h + 16.0
        );
        t += step;
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds into the run</text>
<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">latency (ms, log)</text>"#,
        LEFT + w / 2.0,
        HEIGHT - 10.0,
        TOP + h / 2.0,
        TOP + h / 2.0
    );
    for (i, series) in series.iter().enumerate() {
        let columns = w as usize + 1;
        let mut buckets: Vec<Option<(f64, f64)>> = vec![None; columns];
        let mut unknown = vec![false; columns];
        for &(t, ms, completed) in &series.points {
            let col = ((x(t) - LEFT) as usize).min(columns - 1);
            if !completed {
                unknown[col] = true;
                continue;
            }
            let b = buckets[col].get_or_insert((ms, ms));
            b.0 = b.0.min(ms);
            b.1 = b.1.max(ms);
        }
        let _ = writeln!(
            out,
            r#"<g class="series" data-name="{}" stroke="{}" fill="{}">"#,
            series.name, series.colour, series.colour
        );
        for (col, b) in buckets.iter().enumerate() {
            let cx = LEFT + col as f64;
            if let Some((min, max)) = b {
                let _ = writeln!(
                    out,
                    r#"<line x1="{cx}" y1="{:.1}" x2="{cx}" y2="{:.1}" stroke-opacity="0.4"/><circle cx="{cx}" cy="{:.1}" r="1.3"/>"#,
                    y(*min),
                    y(*max),
                    y(*max)
                );
            }
            if unknown[col] {
                let _ = writeln!(
                    out,
                    r#"<text x="{cx}" y="{:.1}" text-anchor="middle" font-size="8">×</text>"#,
                    TOP - 2.0
                );
            }
        }
        let _ = writeln!(
            out,
            r#"</g>
<rect x="{}" y="22" width="10" height="10" fill="{}"/><text x="{}" y="31">{} ({} ops)</text>"#,
            LEFT + 300.0 + 170.0 * i as f64,
            series.colour,
            LEFT + 314.0 + 170.0 * i as f64,
            series.name,
            series.points.len()
        );
    }
    out.push_str("</svg>\n");
    out
}

fn format_ms(ms: f64) -> String {
    match ms {
        m if m >= 1000.0 => format!("{} s", m / 1000.0),
        m if m >= 1.0 => format!("{m} ms"),
        m => format!("{m:.1} ms"),
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.max(1e-3).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Key, OpKind, Value};
    use crate::nemesis::{FaultKind, Target};
    use crate::workload::fs::Written;

    const S: u64 = 1_000_000_000;

    #[test]
    fn the_plot_is_xml_with_one_shaded_rect_per_fault_and_both_series() {
        let op = |invoke: u64, complete: Option<u64>, outcome| Op {
            client: 1,
            key: Key {
                volume: "v<&>".into(),
                block: 0,
            },
            kind: OpKind::Write { value: Value(1) },
            invoke,
            complete,
            outcome,
        };
        let history = vec![
            op(0, Some(S / 1000), Outcome::Ok),
            op(2 * S, Some(5 * S), Outcome::Ok),
            op(3 * S, None, Outcome::Unknown),
        ];
        let acks = [Ack {
            what: Written::Record(0),
            at: S,
            latency_ns: 40_000_000,
        }];
        let faults: Vec<FaultRecord> = [(FaultKind::Kill, 1, 2), (FaultKind::Pause, 2, 4)]
            .into_iter()
            .map(|(kind, a, b)| FaultRecord {
                end: b * S,
                ..FaultRecord::new(kind, Target::Node { id: 2 }, vec![2], a * S)
            })
            .collect();
        let text = svg(&history, &acks, &faults, "seed <7>");
        let doc = roxmltree::Document::parse(&text).expect("well-formed XML");
        let rects: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("rect") && n.attribute("class") == Some("fault"))
            .collect();
        assert_eq!(rects.len(), 2);
        let series: Vec<&str> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("series"))
            .filter_map(|n| n.attribute("data-name"))
            .collect();
        assert_eq!(series, ["block", "fs"]);
        assert!(text.contains("×"), "the unknown outcome is marked");
        assert!(text.contains("seed &lt;7&gt;"));
        assert_eq!(nice_step(7.3), 10.0);
        assert_eq!(nice_step(1.5), 2.0);
    }
}
