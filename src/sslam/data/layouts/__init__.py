"""Real datasets in their published layouts: one module per layout, named as ``datasets.<name>.format``
names it, as lhotse keeps one recipe per corpus. Adding a layout is adding one module here that defines

    LAYOUT = Layout(list_clips, options=MyOptions, kind="multi_label", protocol="train_eval")

``list_clips(root, **options)`` reads the dataset's own metadata and returns a :class:`Listing`: the
kind, protocol, splits and classes, and one :class:`~sslam.data.listing.FolderItem` per listed clip
(relative path, split or fold, labels); conversion and the checks on each file are the folder source's.
``options`` (a :class:`~sslam.config.base.Section`) holds the keys the format adds to its
``datasets.<name>`` entry, each passed to ``list_clips`` by name (SPASS: ``environment``).

The layouts are found by their file names (``pkgutil``), and a module is imported only when its format is
asked for. This registry imports nothing heavy, so the params check (``DatasetConfig``) may ask it which
formats exist; modules whose names start with ``_`` are helpers, not layouts.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sslam.data.listing import DatasetLayoutError, Listing

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["DatasetLayoutError", "Layout", "Listing", "UnknownLayoutError", "get_layout", "layout_names"]


class UnknownLayoutError(ValueError):
    """A format no module of ``sslam/data/layouts`` provides."""


@dataclass(frozen=True)
class Layout:
    """One registered layout: how to list it, the keys it adds to its params entry, and the kind and
    protocol of its task (the metric follows the kind: ``config.downstream.metric_of``)."""

    list_clips: Callable[..., Listing]  # (root, **options) -> Listing
    options: type[BaseModel] | None = None  # a Section; None: the format takes no extra keys
    kind: str | None = None  # None: the dataset's own metadata decides (HEAR)
    protocol: str | None = None

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(self.options.model_fields) if self.options is not None else ()

    def read(self, root: Path, options: BaseModel | None = None) -> Listing:
        """The clips of the dataset at ``root``; ``options``: an instance of :attr:`options`."""
        listing = self.list_clips(root, **(dict(options) if options is not None else {}))
        for key in ("kind", "protocol"):
            declared = getattr(self, key)
            if declared is not None and getattr(listing, key) != declared:  # the module contradicts itself
                raise DatasetLayoutError(
                    f"{self.list_clips.__module__}: listed {key} {getattr(listing, key)!r}, declared {declared!r}"
                )
        return listing


DISCOVERS = "sslam.data.layouts"  # the layout modules are found by name at run time (sslam.provenance)


def layout_names() -> tuple[str, ...]:
    """Every registered format: the layout modules' names, sorted."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def get_layout(name: str) -> Layout:
    """The layout of format ``name``, or an :class:`UnknownLayoutError` listing the registered ones."""
    names = layout_names()
    if name not in names:
        raise UnknownLayoutError(
            f"format {name!r} is not a registered layout; registered: {list(names)} "
            f"(one module each in src/sslam/data/layouts/)"
        )
    module = importlib.import_module(f"{__name__}.{name}")
    layout = getattr(module, "LAYOUT", None)
    if not isinstance(layout, Layout):
        raise TypeError(f"{module.__file__}: a layout module defines LAYOUT = Layout(...)")
    params = inspect.signature(layout.list_clips).parameters
    missing = [k for k in layout.option_names if k not in params]
    if missing:
        raise TypeError(f"{module.__file__}: options {missing} are not parameters of {layout.list_clips.__name__}")
    return layout
