"""`archer view`: a terminal app for exploring per-token entropy and influence traces.

Layout (harlequin-style): `data` reads traces (no Textual), `decode` turns token ids into cell
text, `colors` and `layout` are the pure parts of the heatmap, `messages` are the dataclass
messages workers post, `widgets/` hold the screens' pieces and `app` wires them together.
Nothing here is imported by `archer --help`.
"""
