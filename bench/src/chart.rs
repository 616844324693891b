//! The PNG chart of a throughput run: median messages per second, CPU per
//! message and peak memory, a group of bars per prefetch value, a bar per
//! contender.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// The font text is drawn with (Debian's fonts-dejavu-core).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One bar: a contender's medians at one prefetch.
pub struct Bar {
    pub prefetch: u16,
    pub contender: &'static str,
    pub messages_per_second: f64,
    pub cpu_seconds_per_thousand: f64,
    pub peak_rss_mib: f64,
}

pub fn draw(path: &Path, bars: &[Bar]) -> Result<(), String> {
    let font = std::fs::read(FONT)
        .map_err(|error| format!("{FONT}: {error} (install fonts-dejavu-core)"))?;
    // plotters keeps the font for the life of the process.
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into()))
        .map_err(|_| format!("{FONT} is not a font plotters can read"))?;
    let root = BitMapBackend::new(path, (1800, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|error| error.to_string())?;
    let panels = root.split_evenly((1, 3));
    let all: Vec<&Bar> = bars.iter().collect();
    panel(
        &panels[0],
        "median messages/s (higher is better)",
        &all,
        0,
        |bar| bar.messages_per_second,
    )?;
    // Python's CPU per message is fifty times the others': beside it,
    // their bars would not show. Its figure is in the table.
    let compiled: Vec<&Bar> = bars
        .iter()
        .filter(|bar| !bar.contender.starts_with("python"))
        .collect();
    panel(
        &panels[1],
        "CPU s per 1,000 messages (lower is better; Python: see the table)",
        &compiled,
        3,
        |bar| bar.cpu_seconds_per_thousand,
    )?;
    panel(
        &panels[2],
        "peak RSS, MiB (lower is better)",
        &all,
        0,
        |bar| bar.peak_rss_mib,
    )?;
    root.present().map_err(|error| error.to_string())
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    bars: &[&Bar],
    decimals: usize,
    value: impl Fn(&Bar) -> f64,
) -> Result<(), String> {
    let mut groups: Vec<u16> = bars.iter().map(|bar| bar.prefetch).collect();
    groups.dedup();
    let mut contenders: Vec<&str> = Vec::new();
    for bar in bars {
        if !contenders.contains(&bar.contender) {
            contenders.push(bar.contender);
        }
    }
    // Head room for the legend.
    let highest = bars.iter().map(|bar| value(bar)).fold(0.0, f64::max);
    let top = if highest > 0.0 { highest * 1.4 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..groups.len() as f64, 0.0..top)
        .map_err(|error| error.to_string())?;
    let labels: Vec<String> = groups.iter().map(|p| format!("prefetch {p}")).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len() * 2 + 1)
        .x_label_formatter(&|x| {
            // Label only the middle of each group.
            let index = (*x - 0.5).round();
            if (x - 0.5 - index).abs() < 1e-6 && index >= 0.0 {
                labels.get(index as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|error| error.to_string())?;
    let width = 0.8 / contenders.len() as f64;
    for (index, contender) in contenders.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        let mine: Vec<(f64, f64)> = bars
            .iter()
            .filter(|bar| bar.contender == *contender)
            .filter_map(|bar| {
                let group = groups.iter().position(|p| *p == bar.prefetch)?;
                Some((group as f64 + 0.1 + index as f64 * width, value(bar)))
            })
            .collect();
        chart
            .draw_series(
                mine.iter().map(|(x, y)| {
                    Rectangle::new([(*x, 0.0), (x + width * 0.9, *y)], color.filled())
                }),
            )
            .map_err(|error| error.to_string())?
            .label(*contender)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        chart
            .draw_series(mine.iter().map(|(x, y)| {
                Text::new(
                    format!("{y:.decimals$}"),
                    (*x, *y + top * 0.01),
                    ("sans-serif", 13),
                )
            }))
            .map_err(|error| error.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|error| error.to_string())
}
