"""cxr_fast: fast multilabel chest X-ray classifiers with learned sparse label couplings."""

__version__ = "0.1.0"
