"""Presentation of stored trees: the terminal tree (``seedq show``) and the self-contained
HTML report (``seedq report``). The data comes from :mod:`seedq.store.trees` and
:mod:`seedq.store.analytics`; nothing here runs SQL."""
