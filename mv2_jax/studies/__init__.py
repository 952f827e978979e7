"""Human side-by-side studies (MagicVideo-V2 §4): arms made by `sample.py batch`, paired by
(prompt, seed) into a study (`store.py`), rated blind in a browser or by an automated judge
through one JSON API (`server.py`, `auto_rate.py`), exported as one row per vote and scored as
the paper does, (G+S)/(B+S) with intervals (`report.py`). Commands: `cli.py`."""
