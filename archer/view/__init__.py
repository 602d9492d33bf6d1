"""`archer view`: a terminal app for exploring per-token entropy and influence traces.

Layout (harlequin-style): `model/` reads traces (no Textual), `cells` turns token text into cell
text, `colors` and `layout` are the pure parts of the heatmap, `messages` are the dataclass
messages workers and tabs post, `widgets/` hold the screens' pieces, `tabs/` the tabs (each owns
its state and handlers) and `app` keeps the selection, runs the workers and routes between them.
Decoding and export records come from `archer.core.trace` (shared with `archer trace export`).
Nothing here is imported by `archer --help`.
"""
