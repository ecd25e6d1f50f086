"""Search your own photos: a gallery index on disk (``tbps index``) and queries against it (``tbps search``).

The index is a folder (``gallery.index/``) written only through atomic renames; nothing in it is
a pickle. ``index.json`` is written last and names the files of the finished index, so a folder
without it (or one whose ``index.json`` names missing files) is never taken for a finished
index. See :mod:`tbps.gallery.layout` for the files and their columns, :mod:`tbps.gallery.build`
for incremental re-indexing and resuming, :mod:`tbps.gallery.ranking` for the exact top-K.
"""
