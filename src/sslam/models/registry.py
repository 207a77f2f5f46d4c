"""The encoders ``model.encoder`` can name. Each registers itself where it is written, a module of
``sslam.models``, with :func:`register_encoder`: its name, the schema of its own params section
``model.<name>`` (if it has sizes of its own) and what ``model.masked_tokens: auto`` means for it.
``sslam.config.model`` builds the ``model`` section from what is registered.

Adding an encoder is one new module in ``src/sslam/models/``: the first lookup imports every module of the
package (:func:`_load_encoders`), so the new one registers itself. The built-in encoders are imported by
name in ``sslam/models/__init__.py`` as well, so that the code DVC tracks for a stage that builds an encoder
(``sslam.provenance.import_closure``, which reads import statements) holds them; a new encoder that a
pipeline stage should track is named there too (``docs/models.md``, "Adding an encoder").
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from sslam.config.base import Section
from sslam.models.contract import MASKED_TOKENS, ModelSettings, PatchEncoder


@dataclass(frozen=True)
class EncoderEntry:
    """One registered encoder: ``model.encoder: <name>`` builds ``cls``; ``options`` is the schema of the
    section ``model.<name>`` (None: no section); ``masked_tokens`` is what ``masked_tokens: auto`` resolves to
    under an objective that predicts from the visible tokens, as masked latent bootstrapping does (``drop``:
    the clone batch of visible tokens; ``mask_token``: the whole sequence in order, what a recurrent encoder
    needs)."""

    name: str
    cls: type[PatchEncoder]
    options: type[Section] | None
    masked_tokens: str

    def options_of(self, cfg: ModelSettings) -> Section | None:
        return getattr(cfg, self.name) if self.options is not None else None

    def check(self, cfg: ModelSettings) -> None:
        """The encoder's checks across ``model``'s keys (ValueError naming them)."""
        self.cls.check_config(cfg, self.options_of(cfg))

    def build(self, cfg: ModelSettings, frames: int, mel: int, masked_tokens: str) -> PatchEncoder:
        return self.cls.from_config(cfg, self.options_of(cfg), frames, mel, masked_tokens)


_REGISTERED: dict[str, EncoderEntry] = {}
DISCOVERS = "sslam.models"  # every module of the package is imported on first lookup (sslam.provenance)
_loaded = False


def register_encoder(
    name: str, options: type[Section] | None = None, masked_tokens: str = "mask_token"
) -> Callable[[type[PatchEncoder]], type[PatchEncoder]]:
    """Class decorator: ``model.encoder: <name>`` builds the class (``PatchEncoder.from_config``), sized by
    ``model`` and, when ``options`` is given, by the section ``model.<name>`` validated by it (values in
    params.yaml only: the schema has no defaults). ``masked_tokens``: what ``auto`` means for it under an
    objective that predicts from the visible tokens (one that predicts at the masked positions always takes
    ``mask_token``)."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"encoder name {name!r}: a params key, lower case letters, digits and _")
    if masked_tokens not in MASKED_TOKENS:
        raise ValueError(f"encoder {name!r}: masked_tokens must be one of {MASKED_TOKENS}, got {masked_tokens!r}")
    if options is not None and not issubclass(options, Section):
        raise TypeError(f"encoder {name!r}: options must be a sslam.config.base.Section, got {options!r}")

    def add(cls: type[PatchEncoder]) -> type[PatchEncoder]:
        if not issubclass(cls, PatchEncoder):
            raise TypeError(f"encoder {name!r}: {cls.__qualname__} does not implement the PatchEncoder contract")
        old = _REGISTERED.get(name)
        if old is not None and _qualified(old.cls) != _qualified(cls):  # the same class again: a module reload
            raise ValueError(f"two encoders named {name!r}: {_qualified(old.cls)} and {_qualified(cls)}")
        _REGISTERED[name] = EncoderEntry(name, cls, options, masked_tokens)
        return cls

    return add


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _load_encoders() -> None:
    """Import every module of ``sslam.models`` once, so each registers its encoders (a new encoder is one
    new file); the package's ``__init__`` imports the built-ins first."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # before the imports: a module that looks up the registry while loading sees it as is
    try:
        package = importlib.import_module(__package__)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{__package__}.{module.name}")
    except BaseException:
        _loaded = False
        raise


class _Encoders(Mapping[str, EncoderEntry]):
    """Name -> entry, in name order (so the ``model`` section and its dump are the same whatever imported
    first); every lookup loads the encoders first."""

    def __getitem__(self, name: str) -> EncoderEntry:
        _load_encoders()
        return _REGISTERED[name]

    def __iter__(self) -> Iterator[str]:
        _load_encoders()
        return iter(sorted(_REGISTERED))

    def __len__(self) -> int:
        _load_encoders()
        return len(_REGISTERED)

    def __repr__(self) -> str:
        return f"ENCODERS({', '.join(self)})"


ENCODERS: Mapping[str, EncoderEntry] = _Encoders()


def encoder_entry(name: str) -> EncoderEntry:
    """The entry ``model.encoder: <name>`` means, or a ValueError listing the registered names."""
    if name not in ENCODERS:
        raise ValueError(f"model.encoder must be one of {', '.join(ENCODERS)}, got {name!r}")
    return ENCODERS[name]


def resolved_masked_tokens(cfg: ModelSettings, *, predicts_masked: bool = False) -> str:
    """``model.masked_tokens``; ``auto``: what the encoder registered, under an objective that predicts from
    the visible tokens (masked latent bootstrapping: ``drop`` for the Transformer, the clone batch of EAT /
    SSLAM; ``mask_token`` for the recurrent encoders, SSAMBA and the overview), and ``mask_token`` for every
    encoder under one that ``predicts_masked`` (the raw-patch objectives: they predict from the encoder's
    outputs at the masked positions; ``sslam.pretrain.objectives`` says which objective does)."""
    if cfg.masked_tokens != "auto":
        return cfg.masked_tokens
    return "mask_token" if predicts_masked else encoder_entry(cfg.encoder).masked_tokens


def build_encoder(cfg: ModelSettings, frames: int, mel: int, *, predicts_masked: bool = False) -> PatchEncoder:
    """The encoder ``model.encoder`` names, sized by ``model`` (``predicts_masked``: the objective predicts at
    the masked positions, which decides ``masked_tokens: auto``)."""
    return encoder_entry(cfg.encoder).build(
        cfg, frames, mel, resolved_masked_tokens(cfg, predicts_masked=predicts_masked)
    )
