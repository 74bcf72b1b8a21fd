"""Analysis: sweep records → tidy frame → paper tables and figures (see analysis/README.md).

* :mod:`.records` — load ``results/<study>/*.json`` into one frame, seed aggregates, dense reference
* :mod:`.tables` — method × sparsity, prune-time and calibration tables (Markdown and LaTeX)
* :mod:`.plots` — metric vs FLOPs kept, vs calibration size, prune time vs size, layer heat map
* :mod:`.figures` — ``paper_figures/manifest.toml`` → every paper output; :mod:`.report` — one study
* :mod:`.style` — one name, colour and marker per method across every figure

Importing this package is cheap: pandas/matplotlib load with the submodules that need them.
"""
