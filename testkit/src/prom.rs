//! Reading Prometheus text (a worker's `/metrics` page): samples, labels and
//! histograms with their quantiles.

/// The samples of metric `name` on a /metrics page: (labels, value) for
/// each `name{labels} value` line, and ("", value) for an unlabelled
/// `name value` line.
pub fn samples<'a>(page: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    page.lines().filter_map(move |line| {
        let rest = line.strip_prefix(name)?;
        let (labels, value) = match rest.strip_prefix('{') {
            Some(labelled) => labelled.rsplit_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        Some((labels, value.parse().ok()?))
    })
}

/// The value of label `key` in `a="x",b="y"` (values here hold no commas).
pub fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.trim_matches('"'))
    })
}

/// The sum of the samples of `name` whose labels include every (key, value)
/// of `wanted` (0 when there is none).
pub fn sum(page: &str, name: &str, wanted: &[(&str, &str)]) -> f64 {
    samples(page, name)
        .filter(|(labels, _)| wanted.iter().all(|(k, v)| label(labels, k) == Some(*v)))
        .map(|(_, value)| value)
        .sum()
}

/// A Prometheus histogram of one series: (upper bound, cumulative count),
/// ascending, ending with +Inf.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// The `name` histogram of `topic` from a /metrics page.
    pub fn parse(page: &str, name: &str, topic: &str) -> Histogram {
        Self::parse_series(page, name, Some(topic))
    }

    /// The `name` histogram of a metric without a topic label.
    pub fn parse_unlabelled(page: &str, name: &str) -> Histogram {
        Self::parse_series(page, name, None)
    }

    fn parse_series(page: &str, name: &str, topic: Option<&str>) -> Histogram {
        let mut buckets: Vec<(f64, u64)> = samples(page, &format!("{name}_bucket"))
            .filter(|(labels, _)| label(labels, "topic") == topic)
            .filter_map(|(labels, count)| {
                let le = match label(labels, "le")? {
                    "+Inf" => f64::INFINITY,
                    le => le.parse().ok()?,
                };
                Some((le, count as u64))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Histogram { buckets }
    }

    /// The two series added up (several workers' histograms of one metric).
    pub fn plus(&self, other: &Histogram) -> Histogram {
        if self.buckets.is_empty() {
            return other.clone();
        }
        self.zip_with(other, |c, o| c + o)
    }

    /// What was observed since `earlier`.
    pub fn minus(&self, earlier: &Histogram) -> Histogram {
        self.zip_with(earlier, u64::saturating_sub)
    }

    /// Each bucket of `self` combined with the same bucket of `other` (0
    /// where `other` lacks it).
    fn zip_with(&self, other: &Histogram, f: impl Fn(u64, u64) -> u64) -> Histogram {
        let count = |le: f64| {
            other
                .buckets
                .iter()
                .find(|(l, _)| *l == le)
                .map_or(0, |(_, c)| *c)
        };
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, c)| (*le, f(*c, count(*le))))
                .collect(),
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |(_, c)| *c)
    }

    /// The q-quantile, interpolated linearly within its bucket (as
    /// Prometheus's histogram_quantile does); q = 1 gives the upper bound of
    /// the highest non-empty bucket.
    pub fn quantile(&self, q: f64) -> f64 {
        let rank = q * self.count() as f64;
        let (mut low, mut below) = (0.0, 0u64);
        for &(le, cumulative) in &self.buckets {
            if cumulative > 0 && cumulative as f64 >= rank {
                if le.is_infinite() {
                    return low;
                }
                let within = (cumulative - below) as f64;
                return low + (le - low) * ((rank - below as f64) / within).clamp(0.0, 1.0);
            }
            (low, below) = (le, cumulative);
        }
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_labels_are_read_off_metric_lines() {
        let page = "# HELP orderflow_messages_total x\n\
            orderflow_messages_total{outcome=\"applied\",topic=\"checkouts\"} 18\n\
            orderflow_messages_total_other{topic=\"x\"} 1\n\
            orderflow_messages_total{outcome=\"duplicate\",topic=\"checkouts\"} 4\n";
        let got: Vec<(Option<&str>, Option<&str>, f64)> = samples(page, "orderflow_messages_total")
            .map(|(l, v)| (label(l, "topic"), label(l, "outcome"), v))
            .collect();
        assert_eq!(
            got,
            [
                (Some("checkouts"), Some("applied"), 18.0),
                (Some("checkouts"), Some("duplicate"), 4.0)
            ]
        );
        assert_eq!(
            sum(page, "orderflow_messages_total", &[("topic", "checkouts")]),
            22.0
        );
        assert_eq!(
            sum(page, "orderflow_messages_total", &[("outcome", "applied")]),
            18.0
        );
        assert_eq!(
            sum(page, "orderflow_messages_total", &[("topic", "nope")]),
            0.0
        );
        // Unlabelled gauges too (the outbox backlog read as 0 before),
        // without matching a longer name that starts the same.
        let page = "orderflow_outbox_backlog 7
orderflow_outbox_backlog_x 1
";
        assert_eq!(sum(page, "orderflow_outbox_backlog", &[]), 7.0);
    }

    const PAGE: &str = r#"orderflow_end_to_end_latency_seconds_bucket{topic="c",le="0.01"} 10
orderflow_end_to_end_latency_seconds_bucket{topic="c",le="0.02"} 90
orderflow_end_to_end_latency_seconds_bucket{topic="c",le="0.05"} 100
orderflow_end_to_end_latency_seconds_bucket{topic="c",le="+Inf"} 100
orderflow_end_to_end_latency_seconds_bucket{topic="p",le="0.01"} 7
"#;

    #[test]
    fn histogram_quantiles_interpolate_within_buckets() {
        let h = Histogram::parse(PAGE, "orderflow_end_to_end_latency_seconds", "c");
        assert_eq!(h.count(), 100);
        assert!(
            (h.quantile(0.5) - 0.015).abs() < 1e-9,
            "{}",
            h.quantile(0.5)
        );
        assert!(
            (h.quantile(0.95) - 0.035).abs() < 1e-9,
            "{}",
            h.quantile(0.95)
        );
        assert!((h.quantile(1.0) - 0.05).abs() < 1e-9);
        // Earlier, the ten fastest had been observed.
        let earlier = Histogram::parse(
            &PAGE.replace("} 90", "} 10").replace("} 100", "} 10"),
            "orderflow_end_to_end_latency_seconds",
            "c",
        );
        let since = h.minus(&earlier);
        assert_eq!(since.count(), 90);
        assert!(
            (since.quantile(0.5) - 0.015625).abs() < 1e-9,
            "{}",
            since.quantile(0.5)
        );
        assert_eq!(Histogram::default().quantile(0.99), 0.0);
    }
}
