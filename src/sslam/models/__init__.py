"""The encoders (one contract, ``contract.py``; registered by name, ``registry.py``, which finds every module
of this package) and what pretraining puts around them."""
