"""The networks: one file per network (``yunet.py`` detector, ``sface.py`` embedder).

Converted weights ship in ``weights/`` next to these modules, with their licence notices.
"""
