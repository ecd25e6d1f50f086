"""The paper's model-compression probe (§3.5, App. A.4, B.2): module importance (C¹, C²), the
choice of text layers to freeze or drop, and the compression table.

- :mod:`tbps.probe.modules`: addressing a module of a trained model, removing it, interpolating it;
- :mod:`tbps.probe.importance`: C¹ and C² of every module, with cached tower embeddings;
- :mod:`tbps.probe.layer_choice`: the x text layers with the smallest whole-layer C¹ + C²;
- :mod:`tbps.probe.compression`: frozen-vs-dropped runs in one table;
- :mod:`tbps.probe.figures`: importance heat maps and the R@1-vs-x figure.
"""
