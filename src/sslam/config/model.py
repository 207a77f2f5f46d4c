"""The ``model`` section: the encoder and the student's decoder.

``model.encoder`` names an encoder of the registry (``sslam.models.registry``), and every registered
encoder with sizes of its own has its section ``model.<name>``, typed by the schema it registered
(``model.mamba``: ``MambaConfig`` in ``models/mamba.py``; ``model.xlstm``: ``XlstmConfig`` in
``models/xlstm.py``). The section is built from what is registered, so an encoder added as a new module
needs no edit here; the checks across keys that only one encoder has are that encoder's (``check_config``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, create_model, model_validator

from sslam.config.base import NonNegative, Positive, Section
from sslam.models.contract import as_patch
from sslam.models.registry import ENCODERS

EncoderName = Literal[tuple(ENCODERS)]  # the error for an unknown name lists the registered ones

__all__ = ["ModelConfig", "ModelConfigBase"]


class ModelConfigBase(Section):
    """The keys of ``model`` every encoder shares; :data:`ModelConfig` adds ``model.<name>`` per encoder."""

    encoder: EncoderName  # a registered encoder: transformer | mamba | xlstm built in
    masked_tokens: Literal["auto", "drop", "mask_token"]  # auto: what the encoder registered (drop: transformer)
    embed_dim: Positive
    depth: Positive
    num_heads: Positive  # transformer
    mlp_ratio: Annotated[float, Field(gt=0.0)]  # transformer
    patch_size: Positive | Annotated[list[Positive], Field(min_length=2, max_length=2)]  # n or [time, freq]
    decoder_layers: NonNegative
    decoder_kernel: Positive
    decoder_groups: Positive
    # masked slots: N(0, 0.01^2) noise (reference) or a learned token
    decoder_fill: Literal["noise", "learned"]
    patch_init: Literal["xavier", "pytorch"]  # patch conv: PyTorch's Conv2d default | xavier_uniform_ (EAT)

    @property
    def patch(self) -> tuple[int, int]:
        """``patch_size`` as (time, frequency) frames x mel bins."""
        return as_patch(self.patch_size)

    @model_validator(mode="after")
    def _check(self) -> ModelConfigBase:
        ENCODERS[self.encoder].check(self)
        if self.embed_dim % self.decoder_groups:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be divisible by decoder_groups ({self.decoder_groups})"
            )
        return self


def _encoder_sections() -> dict[str, Any]:
    """``model.<name>``: the options schema of every registered encoder that has one (required: params.yaml
    holds every value), in name order after the shared keys."""
    clash = [n for n, e in ENCODERS.items() if e.options is not None and n in ModelConfigBase.model_fields]
    if clash:
        raise ValueError(f"encoders {clash}: a section model.<name> would shadow a shared key of model")
    return {n: (e.options, ...) for n, e in ENCODERS.items() if e.options is not None}


ModelConfig = create_model(
    "ModelConfig",
    __base__=ModelConfigBase,
    __module__=__name__,
    __doc__="The ``model`` section: the shared keys and one section ``model.<name>`` per registered encoder.",
    **_encoder_sections(),
)
