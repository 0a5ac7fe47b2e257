"""The feature browser's live view: ipywidgets controls (feature id, search, steering slider) around a plotly
FigureWidget scatter (click a point to pick its feature) and the current feature's card, ablation and steering
as HTML. ipywidgets and plotly are imported when a view is built, where `widgets_available()`.

Each part of the page carries a CSS class (`saelab-browser-*`) that tests and users can find it by.
"""
from __future__ import annotations

import html
import importlib.util

from saelab.utils import visible_token

#: The steering slider: alpha in units of the feature's top activation on the held-out rows.
ALPHA_MAX, ALPHA_STEP = 4.0, 0.5
#: What the live view needs besides plotly (a saelab dependency); `pip install 'saelab[notebooks]'` has them.
WIDGET_PACKAGES = ("ipywidgets", "anywidget")
_POINT, _CHOSEN = "rgba(63, 81, 181, 0.55)", "#b71c1c"


def widgets_available() -> bool:
    """Whether the live view can be built (ipywidgets, and anywidget, which plotly's FigureWidget needs)."""
    return all(importlib.util.find_spec(name) is not None for name in WIDGET_PACKAGES)


def _scatter(browser):
    """Every alive feature as a point (density, log x; mean activation when active, y); a ring marks the
    current feature."""
    import plotly.graph_objects as go

    table = browser.table
    hover = [f"feature {f}<br>density {d:.2%}, mean {m:.3g}<br>{html.escape(t[:60])}"
             for f, d, m, t in zip(table.feature, table.density, table.mean_active, table.top_tokens)]
    points = go.Scattergl if len(table) > 5000 else go.Scatter
    figure = go.FigureWidget(
        data=[points(x=table.density, y=table.mean_active, customdata=table.feature, mode="markers",
                     hovertext=hover, hoverinfo="text", marker=dict(size=7, color=_POINT)),
              go.Scatter(x=[], y=[], mode="markers", hoverinfo="skip",
                         marker=dict(size=16, color="rgba(0,0,0,0)", line=dict(color=_CHOSEN, width=2.5)))],
        layout=go.Layout(height=340, margin=dict(l=60, r=20, t=36, b=50), showlegend=False,
                         title=dict(text="Every feature: click a point to see it", font=dict(size=14)),
                         xaxis=dict(type="log", title="density (fraction of held-out tokens where it fires)"),
                         yaxis=dict(title="mean activation when active")))
    return figure


class BrowserView:
    """The widgets of one `FeatureBrowser`; `root` is what the notebook displays, `show(feature)` updates it."""

    def __init__(self, browser):
        import ipywidgets as widgets

        self.browser, self.shown = browser, None
        d_sae = browser.sae.d_sae
        self.feature_box = widgets.BoundedIntText(value=browser.feature, min=0, max=d_sae - 1,
                                                  description="feature id", layout=widgets.Layout(width="180px"))
        self.search_box = widgets.Text(placeholder="a token, e.g. def", description="search",
                                       continuous_update=False, layout=widgets.Layout(width="260px"))
        self.matches = widgets.Dropdown(options=[], description="matches", layout=widgets.Layout(width="420px"))
        self.slider = widgets.FloatSlider(value=browser.alpha, min=0, max=ALPHA_MAX, step=ALPHA_STEP,
                                          description="steer: alpha", continuous_update=False, readout_format=".1f",
                                          style={"description_width": "initial"})
        self.status = widgets.HTML()
        self.card, self.ablation, self.steering = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.errors = widgets.Output()
        self.scatter = _scatter(browser)
        self._wire()
        for name in ("feature_box", "search_box", "matches", "slider", "status", "card", "ablation", "steering"):
            getattr(self, name).add_class(f"saelab-browser-{name.replace('_', '-')}")
        heading = "<h3 style='margin:12px 0 4px'>{}</h3>".format
        self.root = widgets.VBox([
            widgets.HBox([self.feature_box, self.search_box, self.matches]), self.status, self.scatter, self.card,
            widgets.HTML(heading("Switched off: what removing the feature costs (ablation)")), self.ablation,
            widgets.HTML(heading("Switched on: what the model writes with the feature added (steering)")),
            self.slider, self.steering, self.errors])
        self.root.add_class("saelab-browser")
        self.show(browser.feature)

    def _wire(self):
        """Connect each control to what it changes; a callback's error shows in `errors`, not only in a log."""
        capture = self.errors.capture()
        self.feature_box.observe(capture(lambda change: self.browser.select(change["new"])), names="value")
        self.search_box.observe(capture(lambda change: self.search(change["new"])), names="value")
        self.matches.observe(capture(lambda change: change["new"] is not None and self.browser.select(change["new"])),
                             names="value")
        self.slider.observe(capture(lambda change: self.steer(change["new"])), names="value")
        self.scatter.data[0].on_click(capture(
            lambda trace, points, state: points.point_inds and self.browser.select(
                int(trace.customdata[points.point_inds[0]]))))

    def show(self, feature: int):
        """Show `feature`: the id box, the ring on the scatter, its card, ablation and steering."""
        if feature == self.shown:
            return
        self.shown = feature
        self.feature_box.value = feature
        self.status.value = f"<i>computing feature {feature} ...</i>"
        overview = self.browser.overview
        with self.scatter.batch_update():
            ring = self.scatter.data[1]
            ring.x, ring.y = ([float(overview.density[feature])], [float(overview.mean_active[feature])]) \
                if overview.density[feature] > 0 else ([], [])
        self.card.value = self.browser.section_html("card", feature)
        self.ablation.value = self.browser.section_html("ablation", feature)
        self.steering.value = self.browser.section_html("steering", feature)
        tokens = " ".join(visible_token(t) for t in overview.top_tokens[feature][:8])
        self.status.value = f"feature {feature}: top tokens {html.escape(tokens) or '(never fires here)'}"

    def search(self, query: str):
        """List the features whose top tokens contain `query` under matches and show the best one."""
        found = self.browser.search(query)
        tokens = self.browser.overview.top_tokens
        self.matches.options = [(f"{f}: {' '.join(visible_token(t) for t in tokens[f][:6])}", f) for f in found]
        if found:   # the best match is shown at once; the others are under matches
            self.matches.value = found[0]
        self.status.value = (f"{len(found)} feature{'s' if len(found) != 1 else ''} with {html.escape(repr(query))} "
                             "among their top tokens" + (f"; showing feature {found[0]}, the others under matches"
                                                         if found else ""))

    def steer(self, alpha: float):
        self.browser.alpha = float(alpha)
        self.steering.value = self.browser.section_html("steering", self.shown)
