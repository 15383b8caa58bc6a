"""One formatter for the terminal, the Markdown and the HTML: numbers by kind, never raw floats."""

import pytest

from edgexfer.evaluate import formatting as fmt


@pytest.mark.parametrize(
    "key, value, shown",
    [
        ("test_accuracy", 0.978, "97.80 %"),
        ("agreement", 1.0, "100.00 %"),
        ("model_bytes", 27_340, "27.3 kB"),
        ("size_bytes", 14_912_345, "14.9 MB"),
        ("peak_rss_mb", 1331.6, "1.33 GB"),
        ("p50_ms", 0.0412, "41.2 µs"),
        ("p50_ms", 23.456, "23.5 ms"),
        ("p50_ms", 2345.0, "2.35 s"),
        ("total_seconds", 245.3, "4 min 05 s"),
        ("total_seconds", 3.25, "3.25 s"),
        ("params", 4_652_008, "4,652,008"),
        ("batch_size", 64, "64"),
        ("img_size", 96, "96"),
        ("macs", 25_100_000, "25.1 M"),
        ("alpha", 0.0, "0"),
        ("val_accuracy", 98.6, "98.6"),  # not a fraction: shown plainly rather than as 9,860 %
        ("anything", None, "—"),
    ],
)
def test_metric_formats_by_the_kind_its_name_says(key, value, shown):
    assert fmt.metric(key, value) == shown


def test_differences_ratios_and_missing_values():
    assert fmt.points(-0.004) == "−0.40 pts" and fmt.points(0.1234) == "+12.34 pts"
    assert fmt.ratio(34.6) == "35×" and fmt.ratio(1.42) == "1.4×"
    assert fmt.size(512) == "512 B" and fmt.count(1797) == "1,797"
    assert fmt.percent(float("nan")) == fmt.MISSING and fmt.milliseconds(None) == fmt.MISSING
