//! Hand-written SVG charts (no plotting dependency): line charts (linear or log x axis) and
//! grouped bar charts. Good enough to read a trend; exact figures are in the report tables.

use std::fmt::Write as _;

const W: f64 = 760.0;
const H: f64 = 440.0;
const L: f64 = 80.0; // left margin
const R: f64 = 190.0; // right margin (legend)
const T: f64 = 40.0;
const B: f64 = 60.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f",
];

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let e = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * e >= v {
            return m * e;
        }
    }
    10.0 * e
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}").trim_end_matches(".0").to_string()
    } else {
        format!("{v:.2}")
    }
}

fn frame(title: &str, xlabel: &str, ylabel: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>
<line x1="{L}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{L}" y1="{T}" x2="{L}" y2="{}" stroke="black"/>
"#,
        (L + W - R) / 2.0,
        esc(title),
        (L + W - R) / 2.0,
        H - 15.0,
        esc(xlabel),
        (T + H - B) / 2.0,
        (T + H - B) / 2.0,
        esc(ylabel),
        H - B,
        W - R,
        H - B,
        H - B,
    );
    s
}

fn legend(s: &mut String, names: &[String]) {
    for (i, n) in names.iter().enumerate() {
        let y = T + 10.0 + i as f64 * 20.0;
        let c = COLORS[i % COLORS.len()];
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="14" height="10" fill="{c}"/><text x="{}" y="{}">{}</text>"#,
            W - R + 15.0,
            y - 9.0,
            W - R + 35.0,
            y,
            esc(n)
        );
    }
}

/// y axis from 0 (or `y_min`) to a rounded maximum, with 5 grid lines.
fn y_axis(s: &mut String, ymax: f64) -> f64 {
    let top = nice_max(ymax);
    for i in 0..=5 {
        let v = top * i as f64 / 5.0;
        let y = H - B - (H - B - T) * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            W - R,
            L - 6.0,
            y + 4.0,
            fmt_tick(v)
        );
    }
    top
}

/// Line chart. `xlog`: log10 x axis (ticks at powers of 10 and 2×, 5×).
pub fn line_chart(title: &str, xlabel: &str, ylabel: &str, series: &[Series], xlog: bool) -> String {
    let mut s = frame(title, xlabel, ylabel);
    let pts = series.iter().flat_map(|se| se.points.iter());
    let (mut xmin, mut xmax, mut ymax) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for &(x, y) in pts {
        if xlog && x <= 0.0 {
            continue;
        }
        xmin = xmin.min(x);
        xmax = xmax.max(x);
        ymax = ymax.max(y);
    }
    if !xmin.is_finite() {
        s.push_str("</svg>\n");
        return s;
    }
    let tx = |x: f64| if xlog { x.max(1e-12).log10() } else { x };
    let (mut a, mut b) = (tx(xmin), tx(xmax));
    if xlog {
        a = a.floor();
        b = b.ceil();
    }
    if (b - a).abs() < 1e-12 {
        b = a + 1.0;
    }
    let top = y_axis(&mut s, ymax);
    let px = |x: f64| L + (tx(x) - a) / (b - a) * (W - R - L);
    let py = |y: f64| H - B - y / top * (H - B - T);
    // x ticks
    let mut ticks = Vec::new();
    if xlog {
        let mut e = a;
        while e <= b + 1e-9 {
            for m in [1.0, 2.0, 5.0] {
                let v = m * 10f64.powf(e);
                if tx(v) <= b + 1e-9 {
                    ticks.push(v);
                }
            }
            e += 1.0;
        }
    } else {
        let mut xs: Vec<f64> = series
            .iter()
            .flat_map(|se| se.points.iter().map(|p| p.0))
            .collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        ticks = xs;
    }
    for v in ticks {
        let x = px(v);
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{T}" stroke="#eee"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
            H - B,
            H - B + 16.0,
            fmt_tick(v)
        );
    }
    for (i, se) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let mut d = String::new();
        for &(x, y) in se.points.iter().filter(|p| !xlog || p.0 > 0.0) {
            let _ = write!(d, "{},{} ", px(x), py(y));
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{d}"/>"#
        );
        if se.points.len() <= 12 {
            for &(x, y) in &se.points {
                let _ = writeln!(s, r#"<circle cx="{}" cy="{}" r="3" fill="{c}"/>"#, px(x), py(y));
            }
        }
    }
    legend(&mut s, &series.iter().map(|x| x.name.clone()).collect::<Vec<_>>());
    s.push_str("</svg>\n");
    s
}

/// Grouped bars: `values[g][k]` = bar of series `k` in group `g`.
pub fn bar_chart(
    title: &str,
    ylabel: &str,
    groups: &[String],
    names: &[String],
    values: &[Vec<Option<f64>>],
) -> String {
    let mut s = frame(title, "", ylabel);
    let ymax = values.iter().flatten().flatten().fold(0.0f64, |m, v| m.max(*v));
    let top = y_axis(&mut s, ymax);
    let gw = (W - R - L) / groups.len().max(1) as f64;
    let bw = (gw * 0.8) / names.len().max(1) as f64;
    for (g, gname) in groups.iter().enumerate() {
        let x0 = L + g as f64 * gw + gw * 0.1;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="11">{}</text>"#,
            x0 + gw * 0.4,
            H - B + 16.0,
            esc(gname)
        );
        for (k, v) in values.get(g).into_iter().flatten().enumerate() {
            let Some(v) = v else { continue };
            let h = v / top * (H - B - T);
            let c = COLORS[k % COLORS.len()];
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{c}"><title>{}: {}</title></rect>"#,
                x0 + k as f64 * bw,
                H - B - h,
                (bw - 2.0).max(1.0),
                h,
                esc(names.get(k).map(String::as_str).unwrap_or("")),
                fmt_tick(*v)
            );
        }
    }
    legend(&mut s, names);
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed() {
        let s = line_chart(
            "t",
            "x",
            "y",
            &[Series {
                name: "a<b".into(),
                points: vec![(1.0, 2.0), (4.0, 3.0)],
            }],
            true,
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n") && s.contains("a&lt;b"));
        let b = bar_chart("t", "y", &["g".into()], &["s".into()], &[vec![Some(1.5)]]);
        assert!(b.contains("<rect x="));
    }
}
