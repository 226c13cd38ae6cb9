"""Where data sets come from: pinned registry artifacts (pip / apt), HTTP downloads, and the readers that
decode each data set's original files without running foreign code (a .deb/ar reader, a restricted
unpickler, a Zarr reader, IDX and CSV-like parsers).

Nothing here knows the registry: each reader returns `Arrays` (spec.py), and builtin.py wires the readers to
data set names.
"""
