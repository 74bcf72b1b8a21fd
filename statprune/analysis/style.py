"""How methods and metrics look in every table and figure: names, order, colours, markers, units.

One place, so a method has the same colour and the same name in every figure of the paper. Colours
are the Okabe–Ito palette (distinguishable with every common colour-vision deficiency); a method
this file does not know gets a colour picked from its name (stable across figures and runs), never
one that depends on which other methods happen to be in a plot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# Okabe & Ito (2008), "Color Universal Design"
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}
DENSE_COLOR = OKABE_ITO["black"]


@dataclass(frozen=True)
class MethodStyle:
    display: str  # name in tables and legends
    color: str
    marker: str
    rank: int  # table/legend order: baselines first, ours (STAT) last


METHOD_STYLES: dict[str, MethodStyle] = {
    "magnitude": MethodStyle("Magnitude", OKABE_ITO["orange"], "v", 10),
    "random": MethodStyle("Random", "#999999", "x", 5),
    "kwon": MethodStyle("Kwon et al.", OKABE_ITO["blue"], "s", 20),
    "slicegpt": MethodStyle("SliceGPT", OKABE_ITO["bluish_green"], "D", 30),
    "wanda-sp": MethodStyle("Wanda-sp", OKABE_ITO["reddish_purple"], "^", 35),
    "flap": MethodStyle("FLAP", OKABE_ITO["sky_blue"], "P", 40),
    "stat": MethodStyle("STAT", OKABE_ITO["vermillion"], "o", 100),
}
# colours/markers left for methods added later; yellow is last resort (weak on white)
_SPARE_COLORS = ("#7F7F7F", OKABE_ITO["yellow"])
_SPARE_MARKERS = ("X", "*", "<", ">")
# variants of one method (different options) share its colour and differ by line style
VARIANT_LINESTYLES = ("-", "--", ":", "-.")


def method_style(method: str) -> MethodStyle:
    """The style of a base method name; unknown names get a colour derived from the name itself."""
    if method in METHOD_STYLES:
        return METHOD_STYLES[method]
    h = int(hashlib.sha1(method.encode()).hexdigest(), 16)
    return MethodStyle(
        method, _SPARE_COLORS[h % len(_SPARE_COLORS)], _SPARE_MARKERS[h % len(_SPARE_MARKERS)], 50
    )


def method_display(label: str, method: str | None = None) -> str:
    """Display name of a method label: ``stat`` → ``STAT``, ``stat[k=v]`` → ``STAT [k=v]``; a label
    the sweep spec chose (``stat-nocorr``) is shown as written."""
    method = method or label.partition("[")[0]
    if label == method:
        return method_style(method).display
    if label.startswith(method + "["):
        return f"{method_style(method).display} {label[len(method) :]}"
    return label


def method_sort_key(label: str, method: str | None = None) -> tuple[int, str]:
    """Baselines first, then methods this file does not know, STAT last; by label within a method."""
    return (method_style(method or label.partition("[")[0]).rank, label)


@dataclass(frozen=True)
class MetricInfo:
    display: str
    scale: float  # multiply raw values by this for display (fractions → percent)
    unit: str  # shown in axis labels and captions, after scaling
    higher_is_better: bool
    log_scale: bool = False  # plot on a log axis (perplexity spans orders of magnitude)

    def label(self) -> str:
        return f"{self.display} ({self.unit})" if self.unit else self.display


METRICS: dict[str, MetricInfo] = {
    "accuracy": MetricInfo("Accuracy", 100.0, "%", True),
    "f1": MetricInfo("F1", 100.0, "%", True),
    "matthews_correlation": MetricInfo("Matthews corr.", 100.0, "×100", True),
    "mcc": MetricInfo("Matthews corr.", 100.0, "×100", True),
    "pearson": MetricInfo("Pearson r", 100.0, "×100", True),
    "spearman": MetricInfo("Spearman ρ", 100.0, "×100", True),
    "exact_match": MetricInfo("Exact match", 100.0, "%", True),
    "mse": MetricInfo("MSE", 1.0, "", False),
    "perplexity": MetricInfo("Perplexity", 1.0, "", False, log_scale=True),
    "loss": MetricInfo("Loss", 1.0, "nats/token", False),
    "nll": MetricInfo("NLL", 1.0, "nats/token", False),
}
# the metric a table/figure shows when none is named: first of these the records have
PRIMARY_METRICS = ("accuracy", "pearson", "perplexity", "matthews_correlation", "f1", "exact_match")


def metric_info(name: str) -> MetricInfo:
    if name in METRICS:
        return METRICS[name]
    lower_better = any(w in name.lower() for w in ("loss", "perplexity", "ppl", "error", "nll", "mse"))
    return MetricInfo(name, 1.0, "", not lower_better)
