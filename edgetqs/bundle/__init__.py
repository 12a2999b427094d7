"""Build: the whole pipeline into one bundle folder (`build`), its manifest, report, tables and plots."""
